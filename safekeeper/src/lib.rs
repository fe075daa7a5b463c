//! The safekeeper is one acceptor of the quorum-replicated WAL service: it
//! stores WAL pushed by the walproposer and serves it to pageservers.
//!
//! This is the process skeleton: it creates its data directory and serves
//! the management API (`/v1/status`, `/metrics`). The WAL service (consensus,
//! WAL storage, START_REPLICATION) is not implemented yet, so
//! `listen_pg_addr` is not bound.

use std::path::PathBuf;

use anyhow::Context;
use axum::Router;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use serde::{Deserialize, Serialize};
use tracing::info;
use utils::NodeId;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("safekeeper");

/// `safekeeper.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafeKeeperConf {
    pub id: NodeId,
    /// Data directory (WAL and control files); created if missing.
    pub datadir: PathBuf,
    /// libpq WAL service address (not served yet).
    pub listen_pg_addr: String,
    /// HTTP management API address.
    pub listen_http_addr: String,
}

impl Default for SafeKeeperConf {
    fn default() -> Self {
        Self {
            id: NodeId(1),
            datadir: PathBuf::from("."),
            listen_pg_addr: "127.0.0.1:5454".into(),
            listen_http_addr: "127.0.0.1:7676".into(),
        }
    }
}

/// Runs the safekeeper until `cancel` fires.
pub async fn run(conf: SafeKeeperConf, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&conf.datadir)
        .with_context(|| format!("creating the data directory {}", conf.datadir.display()))?;
    let http = HttpServer::new(SERVICE)?.with_node_id(conf.id);
    let listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    info!(
        "safekeeper {} in {}; WAL service on {} is not served yet",
        conf.id,
        conf.datadir.display(),
        conf.listen_pg_addr
    );
    http.serve(listener, Router::new(), cancel).await
}
