//! The pageserver keeps every version of every page of its tenants' timelines
//! and answers "page P as of LSN L" and base backups at any LSN.
//!
//! This is the process skeleton: it creates its working directory and serves
//! the management API (`/v1/status`, `/metrics`). The libpq page service,
//! WAL ingest and storage are not implemented yet, so `listen_pg_addr` is
//! not bound.

pub mod basebackup;
pub mod import_datadir;
pub mod inmemory_layer;
pub mod key;
pub mod layer;
pub mod layer_map;
pub mod page_service;
pub mod pgdatadir;
pub mod tenant;
pub mod timeline;
pub mod value;
pub mod walingest;
pub mod walreceiver;

use std::path::PathBuf;

use anyhow::Context;
use axum::Router;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use serde::{Deserialize, Serialize};
use tracing::info;
use utils::NodeId;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("pageserver");

/// `pageserver.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageServerConf {
    pub id: NodeId,
    /// Working directory (tenants and layer files); created if missing.
    pub workdir: PathBuf,
    /// libpq page service address (not served yet).
    pub listen_pg_addr: String,
    /// HTTP management API address.
    pub listen_http_addr: String,
}

impl Default for PageServerConf {
    fn default() -> Self {
        Self {
            id: NodeId(1),
            workdir: PathBuf::from("."),
            listen_pg_addr: "127.0.0.1:64000".into(),
            listen_http_addr: "127.0.0.1:9898".into(),
        }
    }
}

/// Runs the pageserver until `cancel` fires.
pub async fn run(conf: PageServerConf, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&conf.workdir)
        .with_context(|| format!("creating the working directory {}", conf.workdir.display()))?;
    let http = HttpServer::new(SERVICE)?.with_node_id(conf.id);
    let listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    info!(
        "pageserver {} in {}; libpq page service on {} is not served yet",
        conf.id,
        conf.workdir.display(),
        conf.listen_pg_addr
    );
    http.serve(listener, Router::new(), cancel).await
}
