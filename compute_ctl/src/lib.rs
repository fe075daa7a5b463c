//! compute_ctl wraps one stock PostgreSQL compute node: given a spec it will
//! sync the safekeepers, fetch a base backup, start postgres and apply roles
//! and databases, and it serves an HTTP API about the compute.
//!
//! This is the process skeleton: without a spec it serves its HTTP API
//! (`/v1/status` says `"status": "empty"`, `/metrics`). Starting a compute
//! from a spec is not implemented yet and fails.

use std::path::PathBuf;

use axum::Router;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::info;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("compute_ctl");

/// `compute_ctl.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeCtlConf {
    /// PostgreSQL data directory of the compute.
    pub pgdata: Option<PathBuf>,
    /// Compute spec (JSON) to start the compute from.
    pub spec_path: Option<PathBuf>,
    /// The `postgres` executable.
    pub pgbin: PathBuf,
    /// HTTP API address.
    pub listen_http_addr: String,
}

impl Default for ComputeCtlConf {
    fn default() -> Self {
        Self {
            pgdata: None,
            spec_path: None,
            pgbin: PathBuf::from("postgres"),
            listen_http_addr: "127.0.0.1:3080".into(),
        }
    }
}

/// Runs compute_ctl until `cancel` fires.
pub async fn run(conf: ComputeCtlConf, cancel: CancellationToken) -> anyhow::Result<()> {
    if let Some(spec) = &conf.spec_path {
        anyhow::bail!(
            "cannot start the compute described by {}: starting computes is not implemented yet",
            spec.display()
        );
    }
    let http = HttpServer::new(SERVICE)?
        .with_status(|| Map::from_iter([("status".to_owned(), Value::from("empty"))]));
    let listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    info!("no compute spec given: waiting with an empty compute");
    http.serve(listener, Router::new(), cancel).await
}
