//! The proxy is the single PostgreSQL-protocol entry point: it finds the
//! endpoint a client asks for ([`routing`]), asks the control plane to
//! wake its compute ([`control_plane_client`]), and relays the connection
//! ([`connection`]). Authentication passes through to the compute; the
//! superuser is never let through. The [`serverless`] listener serves the
//! same computes over HTTP (`POST /sql`) and WebSocket.

pub mod compute;
pub mod connection;
pub mod control_plane_client;
pub mod metrics;
pub mod routing;
pub mod serverless;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, ServiceInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{info, info_span, warn, Instrument};

use crate::connection::{CancelMap, Shared};
use crate::control_plane_client::ControlPlane;
use crate::metrics::Metrics;
use crate::serverless::{Serverless, ServerlessConf};

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("proxy");

/// `proxy.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConf {
    /// PostgreSQL protocol address for clients.
    pub listen_pg_addr: String,
    /// HTTP management API address.
    pub listen_http_addr: String,
    /// The control plane's API (wake_compute), e.g. neon_local's.
    pub control_plane_api: String,
    /// TLS certificate chain (PEM); with `tls_key_path`, clients may use TLS
    /// and the first label of their SNI name picks the endpoint.
    pub tls_cert_path: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key_path: Option<PathBuf>,
    /// Refuse clients that do not start with TLS (needs the certificate
    /// and key).
    pub require_tls: bool,
    /// Client sessions at most (counted from the startup packet on); more
    /// are refused with `53300`.
    pub max_connections: usize,
    /// Client connections still starting up (TLS handshake, startup packet)
    /// at most; beyond, the oldest is closed. They do not count in
    /// `max_connections`, so sockets that never start up cannot keep
    /// clients out. Authentication is the compute's, after the startup
    /// packet: its `authentication_timeout` bounds it.
    pub max_unauthenticated_connections: usize,
    /// Seconds a client has, from its accept, to finish TLS and send its
    /// startup packet.
    pub startup_timeout_seconds: f64,
    /// Seconds to wait for a compute to wake (a cold start included).
    pub wake_timeout_seconds: f64,
    /// Seconds to wait for a TCP connection to a compute.
    pub connect_timeout_seconds: f64,
    /// Public key(s) that verify tokens (PEM): the management API's
    /// `/metrics` then needs an admin token. Without it, nobody is asked.
    pub auth_public_key: Option<PathBuf>,
    /// SQL over HTTP and WebSocket (`[serverless]`).
    pub serverless: ServerlessConf,
}

impl Default for ProxyConf {
    fn default() -> Self {
        Self {
            listen_pg_addr: "127.0.0.1:5432".into(),
            listen_http_addr: "127.0.0.1:7001".into(),
            control_plane_api: "http://127.0.0.1:1234".into(),
            tls_cert_path: None,
            tls_key_path: None,
            require_tls: false,
            max_connections: 1000,
            max_unauthenticated_connections: 100,
            startup_timeout_seconds: 10.0,
            wake_timeout_seconds: 120.0,
            connect_timeout_seconds: 10.0,
            auth_public_key: None,
            serverless: ServerlessConf::default(),
        }
    }
}

fn tls_acceptor(conf: &ProxyConf) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&conf.tls_cert_path, &conf.tls_key_path) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => anyhow::bail!("TLS needs both tls_cert_path and tls_key_path"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("setting up TLS with the certificate and key")?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Runs the proxy until `cancel` fires.
pub async fn run(conf: ProxyConf, cancel: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        conf.max_unauthenticated_connections >= 1,
        "max_unauthenticated_connections must be at least 1"
    );
    conf.serverless.check()?;
    let seconds = |s: f64| Duration::from_secs_f64(s.max(0.001));
    let shared = Arc::new(Shared {
        control_plane: ControlPlane::new(
            &conf.control_plane_api,
            seconds(conf.wake_timeout_seconds),
        )?,
        tls: tls_acceptor(&conf)?,
        require_tls: conf.require_tls,
        cancel_map: CancelMap::default(),
        metrics: Metrics::new(),
        startup_timeout: seconds(conf.startup_timeout_seconds),
        connect_timeout: seconds(conf.connect_timeout_seconds),
    });
    anyhow::ensure!(
        !conf.require_tls || shared.tls.is_some(),
        "require_tls needs tls_cert_path and tls_key_path"
    );
    let status = shared.clone();
    let tls_on = shared.tls.is_some();
    let mut http = HttpServer::new(SERVICE)?.with_status(move || {
        Map::from_iter([
            (
                "active_sessions".to_owned(),
                Value::from(status.metrics.active.get()),
            ),
            ("tls".to_owned(), Value::from(tls_on)),
        ])
    });
    if let Some(verifier) = daemon_utils::load_verifier(conf.auth_public_key.as_deref())? {
        http = http.with_auth(
            verifier,
            Arc::new(|_: &daemon_utils::RouteRequest| auth::Access::Admin),
        );
    }
    shared.metrics.register(http.registry())?;
    let serverless = Arc::new(Serverless {
        shared: shared.clone(),
        pool: serverless::pool::Pool::new(
            conf.serverless.pool_max_connections,
            seconds(conf.serverless.pool_idle_timeout_seconds),
        ),
        max_request_bytes: conf.serverless.max_request_bytes,
        max_response_bytes: conf.serverless.max_response_bytes,
        statement_timeout: seconds(conf.serverless.statement_timeout_seconds),
        requests: prometheus::IntCounter::new(
            "proxy_serverless_requests_total",
            "POST /sql requests",
        )?,
        websockets: prometheus::IntCounter::new(
            "proxy_serverless_websocket_sessions_total",
            "WebSocket sessions",
        )?,
        cancel: cancel.clone(),
    });
    serverless.pool.metrics.register(http.registry())?;
    http.registry()
        .register(Box::new(serverless.requests.clone()))?;
    http.registry()
        .register(Box::new(serverless.websockets.clone()))?;
    let pg_listener = bind_listener("PostgreSQL", &conf.listen_pg_addr).await?;
    let http_listener = bind_listener("HTTP", &conf.listen_http_addr).await?;
    let serverless_task = if conf.serverless.listen_addr.is_empty() {
        None
    } else {
        let listener = bind_listener("serverless", &conf.serverless.listen_addr).await?;
        Some(tokio::spawn(serverless::serve(
            listener,
            conf.serverless.clone(),
            serverless,
            cancel.clone(),
        )))
    };
    info!(
        "serving clients on {} (TLS {}), waking computes through {}",
        conf.listen_pg_addr,
        if tls_on { "on" } else { "off" },
        conf.control_plane_api
    );
    let http_task = tokio::spawn(http.serve(http_listener, Router::new(), cancel.clone()));
    let pg_listener = pq_proto::Listener::new(
        pg_listener,
        pq_proto::ListenerConfig {
            service: "proxy",
            max_connections: conf.max_connections,
            max_pending: conf.max_unauthenticated_connections,
            startup_timeout: shared.startup_timeout,
        },
    );
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = pg_listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("accepting a connection: {e}");
                    continue;
                }
            },
        };
        shared.metrics.connections.inc();
        let (tcp, peer, pending) = (accepted.stream, accepted.peer, accepted.pending);
        let (shared, cancel) = (shared.clone(), cancel.clone());
        tokio::spawn(
            async move {
                if let Err(e) = connection::handle(tcp, peer, pending, shared, cancel).await {
                    info!("connection ended: {e:#}");
                }
            }
            .instrument(info_span!("client", %peer)),
        );
    }
    http_task.await.context("the HTTP server task")??;
    if let Some(task) = serverless_task {
        task.await.context("the serverless listener task")??;
    }
    Ok(())
}
