//! The serverless listener: what edge functions and serverless drivers
//! use when they cannot open a TCP connection. One HTTP/1.1 port takes
//!
//! * `POST /sql` ([`sql_over_http`]): a query (or a transaction of
//!   several) as JSON, answered as JSON, over pooled compute connections
//!   ([`pool`]), in the shape Neon's serverless driver speaks;
//! * a WebSocket upgrade on any path ([`websocket`]): the PostgreSQL wire
//!   protocol in binary frames, one session per socket.
//!
//! Both route, wake and authenticate as the PostgreSQL port does. When the
//! proxy has a TLS certificate, the same port takes HTTPS and WSS (told
//! apart by the first byte); with `require_tls`, plain HTTP is refused.

pub mod connection_string;
pub mod json;
pub mod pool;
pub mod sql_over_http;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::connection::{Shared, Stream};
use crate::serverless::pool::Pool;

/// `[serverless]` in `proxy.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerlessConf {
    /// Address of the HTTP/WebSocket listener; empty for none.
    pub listen_addr: String,
    /// Client connections (HTTP and WebSocket) at most; more are closed
    /// at once.
    pub max_connections: usize,
    /// The largest request body of `POST /sql`.
    pub max_request_bytes: usize,
    /// The largest response of `POST /sql` (rows included).
    pub max_response_bytes: usize,
    /// Seconds a statement of `POST /sql` may run (PostgreSQL's
    /// `statement_timeout` on pooled connections).
    pub statement_timeout_seconds: f64,
    /// Compute connections the pool holds at most, busy or idle, over all
    /// endpoints, roles and databases.
    pub pool_max_connections: usize,
    /// Seconds an idle pooled connection is kept.
    pub pool_idle_timeout_seconds: f64,
    /// Seconds an HTTP client has to send a request's headers (also the
    /// longest a kept-alive connection waits for its next request).
    pub header_timeout_seconds: f64,
}

impl Default for ServerlessConf {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:4444".into(),
            max_connections: 1000,
            max_request_bytes: 10 << 20,
            max_response_bytes: 10 << 20,
            statement_timeout_seconds: 30.0,
            pool_max_connections: 100,
            pool_idle_timeout_seconds: 300.0,
            header_timeout_seconds: 30.0,
        }
    }
}

impl ServerlessConf {
    /// Refuses settings that would break the listener.
    pub fn check(&self) -> anyhow::Result<()> {
        let seconds = [
            ("statement_timeout_seconds", self.statement_timeout_seconds),
            ("pool_idle_timeout_seconds", self.pool_idle_timeout_seconds),
            ("header_timeout_seconds", self.header_timeout_seconds),
        ];
        for (name, value) in seconds {
            anyhow::ensure!(
                value.is_finite() && value > 0.0 && value <= 86_400.0 * 365.0,
                "serverless.{name} must be a positive number of seconds, not {value}"
            );
        }
        let counts = [
            ("max_connections", self.max_connections),
            ("max_request_bytes", self.max_request_bytes),
            ("max_response_bytes", self.max_response_bytes),
            ("pool_max_connections", self.pool_max_connections),
        ];
        for (name, value) in counts {
            anyhow::ensure!(value >= 1, "serverless.{name} must be at least 1");
        }
        Ok(())
    }
}

/// What every request of the serverless listener shares.
pub struct Serverless {
    pub shared: Arc<Shared>,
    pub pool: Pool,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub statement_timeout: Duration,
    /// `POST /sql` requests.
    pub requests: prometheus::IntCounter,
    /// WebSocket sessions.
    pub websockets: prometheus::IntCounter,
    /// Fires on shutdown (WebSocket sessions outlive their HTTP request).
    pub cancel: CancellationToken,
}

/// What a request knows of the connection it came on.
#[derive(Clone, Copy, Debug)]
pub struct ClientConnection {
    pub peer: SocketAddr,
    pub tls: bool,
}

fn router(state: Arc<Serverless>) -> Router {
    Router::new()
        .route(
            "/sql",
            post(sql_over_http::handle).options(sql_over_http::preflight),
        )
        .fallback(websocket::upgrade_or_not_found)
        .with_state(state)
}

/// Serves the serverless listener until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    conf: ServerlessConf,
    state: Arc<Serverless>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let tls = state.shared.tls.is_some();
    info!(
        "serving SQL over HTTP and WebSocket on {addr} ({})",
        if tls { "HTTP and HTTPS" } else { "HTTP" }
    );
    let slots = Arc::new(Semaphore::new(conf.max_connections));
    let header_timeout = Duration::from_secs_f64(conf.header_timeout_seconds);
    let reaper = tokio::spawn(pool::close_idle_connections(state.clone(), cancel.clone()));
    let app = router(state.clone());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!("accepting a serverless connection: {e}");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "closing a serverless connection: too many connections");
            continue;
        };
        pq_proto::listener::configure_socket(&tcp);
        let (state, app, cancel) = (state.clone(), app.clone(), cancel.clone());
        tokio::spawn(
            async move {
                let _slot = slot;
                if let Err(e) =
                    serve_connection(tcp, peer, &state, app, header_timeout, cancel).await
                {
                    debug!("serverless connection ended: {e:#}");
                }
            }
            .instrument(info_span!("serverless", %peer)),
        );
    }
    reaper.abort();
    Ok(())
}

/// One client connection: TLS if it starts with a handshake, then HTTP/1.1
/// with upgrades.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    state: &Serverless,
    app: Router,
    header_timeout: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let shared = &state.shared;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(shared.startup_timeout, tcp.peek(&mut first)).await;
    let starts_with_tls = match peeked {
        Ok(Ok(1)) => first[0] == 0x16,
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => anyhow::bail!("no request within {:?}", shared.startup_timeout),
    };
    let (io, tls): (Box<dyn Stream>, bool) = match (&shared.tls, starts_with_tls) {
        (Some(acceptor), true) => {
            let handshake = acceptor.accept(tcp);
            let tls = tokio::time::timeout(shared.startup_timeout, handshake)
                .await
                .map_err(|_| anyhow::anyhow!("the TLS handshake timed out"))??;
            (Box::new(tls), true)
        }
        (None, true) => anyhow::bail!("a TLS handshake, but the proxy has no certificate"),
        (_, false) if shared.require_tls => {
            refuse_plain_http(tcp).await;
            return Ok(());
        }
        (_, false) => (Box::new(tcp), false),
    };
    let app = app.layer(axum::Extension(ClientConnection { peer, tls }));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result?,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await?;
        }
    }
    Ok(())
}

/// Answers a plain HTTP request on a listener that requires TLS.
async fn refuse_plain_http(mut tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"message":"this proxy requires TLS: use https:// or wss://","code":"28000"}"#;
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\naccess-control-allow-origin: *\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tcp.write_all(response.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}
