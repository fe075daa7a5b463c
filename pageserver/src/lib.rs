//! The pageserver keeps every version of every page of its tenants' timelines
//! and answers "page P as of LSN L" and base backups at any LSN.
//!
//! * [`tenant_manager`], [`tenant`], [`timeline`]: tenants and timelines on
//!   disk; [`pgdatadir`] the PostgreSQL data directory view over a timeline;
//! * [`key`], [`value`], [`layer`], [`layer::inmemory`], [`layer::map`]: storage;
//! * [`walreceiver`], [`walingest`]: WAL from the safekeepers into timelines;
//! * [`import_datadir`], [`basebackup`]: bootstrap from initdb, base backups;
//! * [`page_service`] (libpq: `pagestream`, `basebackup`) and [`http`].

pub mod background;
pub mod basebackup;
pub mod http;
pub mod import_datadir;
pub mod key;
pub mod metrics;
pub mod page_service;
pub mod pgdatadir;
pub mod remote_timeline;
pub mod tenant;
pub mod tenant_manager;
pub mod value;
pub mod walingest;
pub mod walreceiver;

use std::path::PathBuf;

use anyhow::Context;
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
    /// libpq page service address.
    pub listen_pg_addr: String,
    /// HTTP management API address.
    pub listen_http_addr: String,
    /// Storage broker (`host:port`) to learn which safekeepers to stream
    /// WAL from; without it no WAL is received.
    pub broker_endpoint: Option<String>,
    /// Directory of PostgreSQL 15's binaries (for initdb).
    pub pg_bin_dir: PathBuf,
    /// OS user that runs initdb when the pageserver runs as root.
    pub pg_os_user: String,
    /// Page service sessions at most; more are refused with an error.
    pub max_connections: usize,
    /// Page service connections still starting up (startup packet and
    /// authentication) at most; beyond, the oldest is closed. They do not
    /// count in `max_connections`, so sockets that never start up cannot
    /// keep clients out.
    pub max_unauthenticated_connections: usize,
    /// Seconds a connection has, from its accept, to send its startup packet
    /// and authenticate before it is closed.
    pub startup_timeout_seconds: f64,
    /// Seconds a session may stay silent between queries before it is
    /// closed (0: never). A `pagestream` is not timed (compute_fs keeps idle
    /// ones in its pool); TCP keepalives notice a peer that vanished.
    pub idle_timeout_seconds: f64,
    /// Size at which the open in-memory layer is written to a layer file.
    pub open_layer_max_bytes: usize,
    /// Bytes of WAL after which the open in-memory layer is written to a
    /// layer file, however small: the most WAL a restart ingests again.
    pub checkpoint_distance: u64,
    /// Keys (pages) per image partition: compaction writes image layers of
    /// one partition at a time, and flushes split delta layers along them.
    pub image_partition_keys: usize,
    /// The most WAL records a page read applies on top of the page's newest
    /// image; ingest stores an image where a chain would grow longer.
    pub max_delta_chain: usize,
    /// Flushing, compaction and GC in the background.
    pub background: background::BackgroundConf,
    /// Object storage for layer files (`{ local_path = "..." }` or an S3
    /// bucket); without it, layers stay on local disk only.
    pub remote_storage: Option<remote_storage::RemoteStorageConfig>,
    /// Public key(s) that verify callers' tokens (PEM): the HTTP API and the
    /// page service then need a token for the tenant (or admin). Without
    /// it, nobody is asked. The pageserver's own token, presented to the
    /// broker and the safekeepers, comes from `NEON_AUTH_TOKEN`.
    pub auth_public_key: Option<PathBuf>,
}

impl Default for PageServerConf {
    fn default() -> Self {
        Self {
            id: NodeId(1),
            workdir: PathBuf::from("."),
            listen_pg_addr: "127.0.0.1:64000".into(),
            listen_http_addr: "127.0.0.1:9898".into(),
            broker_endpoint: None,
            pg_bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            pg_os_user: "postgres".into(),
            max_connections: 1000,
            max_unauthenticated_connections:
                pq_proto::query_server::DEFAULT_MAX_PENDING_CONNECTIONS,
            startup_timeout_seconds: pq_proto::query_server::DEFAULT_STARTUP_TIMEOUT.as_secs_f64(),
            idle_timeout_seconds: pq_proto::query_server::DEFAULT_IDLE_TIMEOUT.as_secs_f64(),
            open_layer_max_bytes: tenant::timeline::DEFAULT_OPEN_LAYER_MAX_BYTES,
            checkpoint_distance: tenant::timeline::DEFAULT_CHECKPOINT_DISTANCE,
            image_partition_keys: tenant::timeline::DEFAULT_IMAGE_PARTITION_KEYS,
            max_delta_chain: tenant::timeline::DEFAULT_MAX_DELTA_CHAIN,
            background: background::BackgroundConf::default(),
            remote_storage: None,
            auth_public_key: None,
        }
    }
}

/// Runs the pageserver until `cancel` fires.
pub async fn run(conf: PageServerConf, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&conf.workdir)
        .with_context(|| format!("creating the working directory {}", conf.workdir.display()))?;
    conf.background.check()?;
    let page_service_config =
        pq_proto::ServerConfig::new(page_service::SERVICE_NAME, conf.max_connections).with_limits(
            conf.max_unauthenticated_connections,
            conf.startup_timeout_seconds,
            conf.idle_timeout_seconds,
        )?;
    let auth = daemon_utils::load_verifier(conf.auth_public_key.as_deref())?;
    let token = auth::token_from_env();
    let broker = match &conf.broker_endpoint {
        Some(endpoint) => Some(
            storage_broker::BrokerClient::connect_lazy(endpoint)
                .and_then(|client| client.with_token(token.as_deref()))
                .context("configuring the storage broker client")?,
        ),
        None => {
            info!("no broker_endpoint: no WAL will be received from safekeepers");
            None
        }
    };
    let remote = match &conf.remote_storage {
        Some(config) => {
            let storage = remote_storage::GenericRemoteStorage::from_config(config)
                .await
                .context("setting up remote storage")?;
            info!("uploading layers to {storage:?}");
            Some(storage)
        }
        None => None,
    };
    if conf.max_delta_chain == 0 {
        anyhow::bail!("max_delta_chain must be at least 1 (the deltas a page read may apply)");
    }
    let timeline_conf = tenant::timeline::TimelineConf {
        open_layer_max_bytes: conf.open_layer_max_bytes,
        checkpoint_distance: conf.checkpoint_distance,
        image_partition_keys: conf.image_partition_keys,
        max_delta_chain: conf.max_delta_chain,
    };
    let initdb = tenant_manager::InitdbConf {
        pg_bin_dir: conf.pg_bin_dir.clone(),
        pg_os_user: conf.pg_os_user.clone(),
    };
    let manager = tokio::task::block_in_place(|| {
        tenant_manager::TenantManager::load(
            &conf.workdir,
            timeline_conf,
            initdb,
            broker,
            remote,
            cancel.clone(),
        )
    })
    .context("loading tenants")?;
    let mut http = HttpServer::new(SERVICE)?.with_node_id(conf.id);
    if let Some(verifier) = &auth {
        http = http.with_auth(verifier.clone(), daemon_utils::tenant_routes_policy());
    }
    metrics::get()
        .register(http.registry())
        .context("registering the pageserver's metrics")?;
    let http_listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    let pg_listener = bind_listener("page service", &conf.listen_pg_addr).await?;
    info!(
        "pageserver {} in {}: page service on {}, HTTP on {}",
        conf.id,
        conf.workdir.display(),
        conf.listen_pg_addr,
        conf.listen_http_addr
    );
    let page_service = tokio::spawn(page_service::serve_with(
        pg_listener,
        manager.clone(),
        basebackup::basebackup_at,
        page_service_config,
        auth,
        cancel.clone(),
    ));
    let background_task = tokio::spawn(background::run(
        manager.clone(),
        conf.background.clone(),
        cancel.clone(),
    ));
    let result = http
        .serve(http_listener, http::routes(manager.clone()), cancel.clone())
        .await;
    cancel.cancel();
    page_service.await.context("page service task")??;
    background_task.await.context("background task")?;
    tokio::task::block_in_place(|| manager.flush_all());
    result
}
