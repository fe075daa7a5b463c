//! compute_ctl wraps one stock PostgreSQL compute node: given a spec it
//! syncs the safekeepers, fetches a base backup, starts postgres, runs the
//! walproposer and applies roles and databases, and it serves an HTTP API
//! about the compute (`/status`, `/configure`, `/terminate`, `/metrics`).
//!
//! * [`compute`]: the compute's life (start sequence, supervision);
//! * [`basebackup`]: safekeeper sync, the pageserver, the base backup;
//! * [`child`]: the child processes it supervises;
//! * [`config`]: the files written into PGDATA;
//! * [`control_plane`]: the spec from the control plane, the trace context;
//! * [`pg`]: finding, starting and stopping postgres as its OS user;
//! * [`spec_apply`]: roles and databases;
//! * [`monitor`]: client activity;
//! * [`http`]: the routes;
//! * [`lazy_fs`]: `compute_fs`, the lazy data directory (FUSE);
//! * [`lazy_mount`]: choosing, starting and stopping it.

pub mod basebackup;
pub mod child;
pub mod commit_progress;
pub mod compute;
pub mod config;
pub mod control_plane;
pub mod http;
pub mod lazy_fs;
pub mod lazy_mount;
pub mod monitor;
pub mod pg;
pub mod spec_apply;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use auth::{Access, Scope};
use compute_api::ComputeSpec;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::info;

use compute::ComputeNode;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("compute_ctl");

/// `compute_ctl.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeCtlConf {
    /// PostgreSQL data directory of the compute; emptied on every start.
    pub pgdata: PathBuf,
    /// Compute spec (JSON) to start the compute from at launch.
    pub spec_path: Option<PathBuf>,
    /// Without `spec_path`: the control plane to fetch the spec from at
    /// launch (`GET <uri>/v1/computes/<compute_id>/spec`).
    pub control_plane_uri: Option<String>,
    /// This compute's id at the control plane.
    pub compute_id: Option<String>,
    /// The `postgres` executable; a bare name is looked up in
    /// /usr/lib/postgresql/15/bin, `pg_config --bindir` and `PATH`.
    pub pgbin: PathBuf,
    /// HTTP API address.
    pub listen_http_addr: String,
    /// The OS user postgres runs as when compute_ctl runs as root.
    pub pg_os_user: Option<String>,
    /// How often the monitor polls postgres for client activity.
    pub monitor_interval_ms: u64,
    /// How long postgres may take to accept connections.
    pub start_timeout_secs: u64,
    /// The `compute_fs` executable (lazy data directories); a bare name
    /// is looked up beside compute_ctl's own executable.
    pub compute_fs: PathBuf,
    /// The FUSE device; when it cannot be opened, computes start from a
    /// full base backup unless their spec requires a lazy one.
    pub fuse_device: PathBuf,
    /// Public key(s) that verify callers' tokens (PEM): the HTTP API then
    /// needs a `compute` (or admin) token. Without it, nobody is asked. The
    /// token compute_ctl presents to the control plane comes from
    /// `NEON_AUTH_TOKEN`; the storage's from the spec.
    pub auth_public_key: Option<PathBuf>,
}

impl Default for ComputeCtlConf {
    fn default() -> Self {
        Self {
            pgdata: PathBuf::from("pgdata"),
            spec_path: None,
            control_plane_uri: None,
            compute_id: None,
            pgbin: PathBuf::from("postgres"),
            listen_http_addr: "127.0.0.1:3080".into(),
            pg_os_user: None,
            monitor_interval_ms: 500,
            start_timeout_secs: 60,
            auth_public_key: None,
            compute_fs: PathBuf::from("compute_fs"),
            fuse_device: PathBuf::from("/dev/fuse"),
        }
    }
}

/// Reads and validates a spec file.
pub fn load_spec(path: &std::path::Path) -> anyhow::Result<ComputeSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the compute spec {}", path.display()))?;
    ComputeSpec::from_json(&text).with_context(|| format!("in {}", path.display()))
}

/// Runs compute_ctl until `cancel` fires (SIGTERM) or `/terminate`; stops
/// postgres before returning.
pub async fn run(mut conf: ComputeCtlConf, cancel: CancellationToken) -> anyhow::Result<()> {
    let trace = control_plane::TraceParent::from_env();
    if let Some(trace) = &trace {
        info!(trace_id = %trace.trace_id, "starting within trace {}", trace.trace_id);
    }
    let spec = match (&conf.spec_path, &conf.control_plane_uri) {
        (Some(path), _) => Some(load_spec(path)?),
        (None, Some(uri)) => {
            let id = conf
                .compute_id
                .as_deref()
                .context("--control-plane-uri needs --compute-id")?;
            Some(control_plane::fetch_spec(uri, id, trace.as_ref(), &cancel).await?)
        }
        (None, None) => None,
    };
    conf.pgdata = std::path::absolute(&conf.pgdata)
        .with_context(|| format!("resolving {}", conf.pgdata.display()))?;
    let auth = daemon_utils::load_verifier(conf.auth_public_key.as_deref())?;
    let mut http = HttpServer::new(SERVICE)?;
    if let Some(verifier) = auth {
        let policy: daemon_utils::AuthPolicy =
            Arc::new(|_: &daemon_utils::RouteRequest| Access::Scopes(&[Scope::Compute]));
        http = http.with_auth(verifier, policy);
    }
    let node = ComputeNode::new(conf.clone(), http.registry())?;
    node.set_trace(trace);
    let status_node = node.clone();
    let http = http.with_status(move || {
        Map::from_iter([(
            "status".to_owned(),
            Value::from(status_node.status().as_str()),
        )])
    });
    let listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    match spec {
        Some(spec) => {
            info!(
                "starting the compute for tenant {} timeline {}",
                spec.tenant_id, spec.timeline_id
            );
            node.start(spec)?;
        }
        None => info!("no compute spec given: waiting for POST /configure"),
    }
    let routes = http::routes(node.clone(), cancel.clone());
    let served = http.serve(listener, routes, cancel).await;
    let state = node.terminate().await;
    info!("compute {}", state.status);
    served
}
