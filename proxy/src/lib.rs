//! The proxy is the single PostgreSQL-protocol entry point: it finds the
//! endpoint a client asks for, wakes its compute if needed and forwards the
//! connection.
//!
//! This is the process skeleton: it serves the management API
//! (`/v1/status`, `/metrics`). The PostgreSQL listener is not implemented
//! yet, so `listen_pg_addr` is not bound.

use axum::Router;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use serde::{Deserialize, Serialize};
use tracing::info;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("proxy");

/// `proxy.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConf {
    /// PostgreSQL protocol address for clients (not served yet).
    pub listen_pg_addr: String,
    /// HTTP management API address.
    pub listen_http_addr: String,
}

impl Default for ProxyConf {
    fn default() -> Self {
        Self {
            listen_pg_addr: "127.0.0.1:5432".into(),
            listen_http_addr: "127.0.0.1:7001".into(),
        }
    }
}

/// Runs the proxy until `cancel` fires.
pub async fn run(conf: ProxyConf, cancel: CancellationToken) -> anyhow::Result<()> {
    let http = HttpServer::new(SERVICE)?;
    let listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    info!(
        "client connections on {} are not served yet",
        conf.listen_pg_addr
    );
    http.serve(listener, Router::new(), cancel).await
}
