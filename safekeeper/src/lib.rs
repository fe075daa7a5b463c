//! The safekeeper is one acceptor of the quorum-replicated WAL service: it
//! stores WAL pushed by the walproposer and serves it to pageservers.
//!
//! * [`acceptor`]: the consensus acceptor, a state machine over storage;
//! * [`state_file`], [`wal_storage`]: that storage on disk;
//! * [`timeline`]: the timelines of this safekeeper;
//! * [`wal_service`]: the libpq WAL service ([`receive_wal`] from walproposers,
//!   [`send_wal`] to pageservers and standbys);
//! * [`http`]: the management API;
//! * [`broker`]: publishing timeline state to the storage broker;
//! * [`wal_backup`]: offloading full WAL segments to remote storage and
//!   removing local segments that are no longer needed.

pub mod acceptor;
pub mod broker;
pub mod http;
pub mod metrics;
pub mod receive_wal;
pub mod send_wal;
pub mod state_file;
pub mod timeline;
pub mod wal_backup;
pub mod wal_service;
pub mod wal_storage;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use remote_storage::{GenericRemoteStorage, RemoteStorageConfig};
use serde::{Deserialize, Serialize};
use tracing::info;
use utils::NodeId;

use crate::timeline::GlobalTimelines;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("safekeeper");

/// `safekeeper.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafeKeeperConf {
    pub id: NodeId,
    /// Data directory (WAL and control files); created if missing.
    pub datadir: PathBuf,
    /// libpq WAL service address.
    pub listen_pg_addr: String,
    /// HTTP management API address.
    pub listen_http_addr: String,
    /// WAL service sessions at most; more are refused with an error.
    pub max_connections: usize,
    /// WAL service connections still starting up (startup packet and
    /// authentication) at most; beyond, the oldest is closed. They do not
    /// count in `max_connections`, so sockets that never start up cannot
    /// keep clients out.
    pub max_unauthenticated_connections: usize,
    /// Seconds a connection has, from its accept, to send its startup packet
    /// and authenticate before it is closed.
    pub startup_timeout_seconds: f64,
    /// Seconds a session may stay silent between queries before it is
    /// closed (0: never). Streams (`START_WAL_PUSH`, `START_REPLICATION`)
    /// are not timed; TCP keepalives notice a peer that vanished.
    pub idle_timeout_seconds: f64,
    /// Bytes of WAL one walproposer connection may have received and not
    /// yet written: reading from it pauses at this.
    pub wal_push_queue_bytes: usize,
    /// Storage broker to publish active timelines to (`host:port` or
    /// `http://host:port`); none: timelines are not published.
    pub broker_endpoint: Option<String>,
    /// libpq address pageservers should use for the WAL service, as
    /// published to the broker [default: `listen_pg_addr`].
    pub advertise_pg_addr: Option<String>,
    /// HTTP address published to the broker [default: `listen_http_addr`].
    pub advertise_http_addr: Option<String>,
    /// Where full WAL segments are offloaded (`{ local_path = "..." }` or
    /// `{ bucket_name, bucket_region, prefix_in_bucket, endpoint }`); none:
    /// WAL is kept only locally and never removed.
    pub remote_storage: Option<RemoteStorageConfig>,
    /// For tests only: acknowledge WAL no faster than this many bytes a
    /// second, as a slow disk would [default: none, full speed].
    pub testing_wal_write_bytes_per_second: Option<u64>,
    /// Public key(s) that verify callers' tokens (PEM): the HTTP API and the
    /// WAL service then need tokens (see `wal_service`). Without it, nobody
    /// is asked. The safekeeper's own token, presented to the broker, comes
    /// from `NEON_AUTH_TOKEN`.
    pub auth_public_key: Option<PathBuf>,
}

impl Default for SafeKeeperConf {
    fn default() -> Self {
        Self {
            id: NodeId(1),
            datadir: PathBuf::from("."),
            listen_pg_addr: "127.0.0.1:5454".into(),
            listen_http_addr: "127.0.0.1:7676".into(),
            max_connections: 1000,
            max_unauthenticated_connections:
                pq_proto::query_server::DEFAULT_MAX_PENDING_CONNECTIONS,
            startup_timeout_seconds: pq_proto::query_server::DEFAULT_STARTUP_TIMEOUT.as_secs_f64(),
            idle_timeout_seconds: pq_proto::query_server::DEFAULT_IDLE_TIMEOUT.as_secs_f64(),
            wal_push_queue_bytes: receive_wal::DEFAULT_QUEUE_BYTES,
            broker_endpoint: None,
            advertise_pg_addr: None,
            advertise_http_addr: None,
            remote_storage: None,
            testing_wal_write_bytes_per_second: None,
            auth_public_key: None,
        }
    }
}

/// Runs the safekeeper until `cancel` fires.
pub async fn run(conf: SafeKeeperConf, cancel: CancellationToken) -> anyhow::Result<()> {
    let server_config = pq_proto::ServerConfig::new("safekeeper", conf.max_connections)
        .with_limits(
            conf.max_unauthenticated_connections,
            conf.startup_timeout_seconds,
            conf.idle_timeout_seconds,
        )?;
    anyhow::ensure!(
        conf.wal_push_queue_bytes >= 1,
        "wal_push_queue_bytes must be at least 1"
    );
    std::fs::create_dir_all(&conf.datadir)
        .with_context(|| format!("creating the data directory {}", conf.datadir.display()))?;
    let remote = match &conf.remote_storage {
        Some(config) => {
            let remote = GenericRemoteStorage::from_config(config)
                .await
                .context("configuring remote storage")?;
            info!("offloading WAL to {remote:?}");
            Some(remote)
        }
        None => {
            info!("no remote_storage: WAL is not offloaded and local segments are kept");
            None
        }
    };
    let timelines = Arc::new(
        tokio::task::block_in_place(|| {
            GlobalTimelines::load(&conf.datadir, conf.id, remote, cancel.clone())
        })
        .context("loading timelines")?,
    );
    timelines.start_offload();
    let auth = daemon_utils::load_verifier(conf.auth_public_key.as_deref())?;
    let broker_client = match &conf.broker_endpoint {
        Some(endpoint) => Some(
            storage_broker::BrokerClient::connect_lazy(endpoint)?
                .with_token(auth::token_from_env().as_deref())?,
        ),
        None => {
            info!("no broker_endpoint: timelines are not published to a storage broker");
            None
        }
    };
    let mut http = HttpServer::new(SERVICE)?.with_node_id(conf.id);
    if let Some(verifier) = &auth {
        http = http.with_auth(verifier.clone(), daemon_utils::tenant_routes_policy());
    }
    metrics::metrics()
        .register(http.registry())
        .context("registering the safekeeper's metrics")?;
    metrics::metrics()
        .timelines
        .set(timelines.list().len() as i64);
    let http_listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    let pg_listener = bind_listener("WAL service", &conf.listen_pg_addr).await?;
    info!(
        "safekeeper {} in {}: WAL service on {}, HTTP on {}",
        conf.id,
        conf.datadir.display(),
        conf.listen_pg_addr,
        conf.listen_http_addr
    );
    let publisher = broker_client.map(|client| {
        let me = broker::Identity {
            node_id: conf.id,
            pg_connstr: broker::advertised_addr(
                "advertise_pg_addr",
                conf.advertise_pg_addr.as_deref(),
                &conf.listen_pg_addr,
                &pg_listener,
            ),
            http_connstr: broker::advertised_addr(
                "advertise_http_addr",
                conf.advertise_http_addr.as_deref(),
                &conf.listen_http_addr,
                &http_listener,
            ),
        };
        tokio::spawn(broker::publish_timelines(
            client,
            timelines.clone(),
            me,
            cancel.clone(),
        ))
    });
    let wal_service = tokio::spawn(wal_service::serve(
        pg_listener,
        timelines.clone(),
        server_config,
        receive_wal::ReceiveConf {
            queue_bytes: conf.wal_push_queue_bytes,
            throttle: conf
                .testing_wal_write_bytes_per_second
                .map(|bytes_per_second| receive_wal::WriteThrottle { bytes_per_second }),
        },
        auth,
        cancel.clone(),
    ));
    let result = http
        .serve(
            http_listener,
            http::routes(timelines.clone()),
            cancel.clone(),
        )
        .await;
    cancel.cancel();
    if let Some(publisher) = publisher {
        publisher.await.context("storage broker publisher task")?;
    }
    wal_service.await.context("WAL service task")??;
    timelines.wait_for_background_tasks().await;
    result
}

/// `--remote-storage`: a [`RemoteStorageConfig`] given as a TOML inline
/// table, such as `{ local_path = "/x" }`.
pub fn parse_remote_storage(text: &str) -> Result<RemoteStorageConfig, String> {
    #[derive(Deserialize)]
    struct Wrapper {
        remote_storage: RemoteStorageConfig,
    }
    toml::from_str::<Wrapper>(&format!("remote_storage = {text}"))
        .map(|w| w.remote_storage)
        .map_err(|e| format!("invalid remote storage {text:?}: {}", e.message().trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_storage_config() {
        let conf: SafeKeeperConf = toml::from_str("id = 3").unwrap();
        assert_eq!(conf.remote_storage, None);
        let inline: SafeKeeperConf =
            toml::from_str(r#"remote_storage = { local_path = "/x" }"#).unwrap();
        let section: SafeKeeperConf = toml::from_str(
            "[remote_storage]\nbucket_name = \"b\"\nbucket_region = \"us-east-1\"\nendpoint = \"http://127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(
            inline.remote_storage,
            Some(RemoteStorageConfig::LocalFs {
                local_path: "/x".into()
            })
        );
        assert!(matches!(
            section.remote_storage,
            Some(RemoteStorageConfig::S3 { ref bucket_name, .. }) if bucket_name == "b"
        ));
        assert_eq!(
            parse_remote_storage(r#"{ local_path = "/x" }"#).unwrap(),
            inline.remote_storage.unwrap()
        );
        assert!(parse_remote_storage(
            r#"{ bucket_name = "b", bucket_region = "r", prefix_in_bucket = "p" }"#
        )
        .is_ok());
        for bad in ["", "{", "{ bucket = 1 }", "\"/x\""] {
            assert!(parse_remote_storage(bad).is_err(), "{bad}");
        }
    }
}
