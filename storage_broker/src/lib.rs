//! The storage broker: a pub/sub through which safekeepers publish the state
//! of each timeline and pageservers learn which safekeeper to follow.
//!
//! This is the process skeleton: it serves the management API
//! (`/v1/status`, `/metrics`) on its listen address. The gRPC service, which
//! will share that port, is not implemented yet.

use axum::Router;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use serde::{Deserialize, Serialize};
use tracing::info;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("storage_broker");

/// `storage_broker.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConf {
    /// Address for HTTP now, and for gRPC on the same port later.
    pub listen_addr: String,
}

impl Default for BrokerConf {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:50051".into(),
        }
    }
}

/// Runs the broker until `cancel` fires.
pub async fn run(conf: BrokerConf, cancel: CancellationToken) -> anyhow::Result<()> {
    let http = HttpServer::new(SERVICE)?;
    let listener = bind_listener("HTTP", &conf.listen_addr).await?;
    info!("gRPC broker service is not served yet");
    http.serve(listener, Router::new(), cancel).await
}
