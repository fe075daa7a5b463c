//! The HTTP management server every daemon runs.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::NodeId;

use crate::ServiceInfo;

/// Requests served at once; more get `503` at once instead of queueing.
/// Connections themselves are not limited: an idle HTTP/1 connection costs a
/// parked task and a socket, and the management port is not public.
pub const MAX_CONCURRENT_REQUESTS: usize = 128;

/// How long shutdown waits for in-flight requests before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Label for requests that matched no route: keeps the metric's cardinality
/// bounded whatever paths clients try.
const UNMATCHED: &str = "unmatched";

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// Unexpected failures are 500s carrying the whole context chain.
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
    }
}

/// Binds a TCP listener; the error names what it is for and the address.
pub async fn bind_listener(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}"))
}

type StatusFn = dyn Fn() -> Map<String, Value> + Send + Sync;

/// A daemon's management API: its own routes plus `GET /v1/status` and
/// `GET /metrics`, JSON 404/405 errors, request counting and a concurrency
/// limit.
pub struct HttpServer {
    service: ServiceInfo,
    node_id: Option<NodeId>,
    started: Instant,
    registry: Registry,
    requests: IntCounterVec,
    status: Option<Arc<StatusFn>>,
}

impl HttpServer {
    /// Registers `<service>_build_info` and `<service>_http_requests_total`
    /// in a fresh registry.
    pub fn new(service: ServiceInfo) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new(
                format!("{}_build_info", service.name),
                "Build information; the value is always 1",
            ),
            &["version"],
        )?;
        build_info.with_label_values(&[service.version]).set(1);
        registry.register(Box::new(build_info))?;
        let requests = IntCounterVec::new(
            Opts::new(
                format!("{}_http_requests_total", service.name),
                "HTTP requests answered, by route and status code",
            ),
            &["path", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self {
            service,
            node_id: None,
            started: Instant::now(),
            registry,
            requests,
            status: None,
        })
    }

    /// Adds `node_id` to the status document.
    pub fn with_node_id(mut self, id: NodeId) -> Self {
        self.node_id = Some(id);
        self
    }

    /// Fields merged into every status document, computed per request; they
    /// may replace the standard ones (e.g. `"status": "empty"`).
    pub fn with_status(
        mut self,
        f: impl Fn() -> Map<String, Value> + Send + Sync + 'static,
    ) -> Self {
        self.status = Some(Arc::new(f));
        self
    }

    /// The registry served at `/metrics`, for the daemon's own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The JSON document served at `GET /v1/status`.
    pub fn status_document(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("service".into(), self.service.name.into());
        doc.insert("version".into(), self.service.version.into());
        doc.insert("status".into(), "ok".into());
        if let Some(id) = self.node_id {
            doc.insert("node_id".into(), id.0.into());
        }
        doc.insert("pid".into(), std::process::id().into());
        doc.insert(
            "uptime_seconds".into(),
            self.started.elapsed().as_secs().into(),
        );
        if let Some(extra) = &self.status {
            doc.extend(extra());
        }
        Value::Object(doc)
    }

    fn metrics_text(&self) -> Result<String, ApiError> {
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut text)
            .context("encoding metrics")?;
        Ok(text)
    }

    /// The complete router: `routes` (which must not set a fallback) plus the
    /// standard endpoints and middleware.
    pub fn router(self, routes: Router) -> Router {
        let requests = self.requests.clone();
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
        let server = Arc::new(self);
        Router::new()
            .route("/v1/status", get(status))
            .route("/metrics", get(metrics))
            .with_state(server)
            .merge(routes)
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            })
            .layer(middleware::from_fn_with_state(limit, limit_concurrency))
            .layer(middleware::from_fn_with_state(requests, count_requests))
    }

    /// Serves [`router`](Self::router) on `listener` until `cancel` fires,
    /// then stops accepting and waits up to a grace period for requests in
    /// flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        routes: Router,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let addr = listener
            .local_addr()
            .context("reading the HTTP listen address")?;
        let name = self.service.name;
        info!("{name} HTTP API listening on http://{addr}");
        let server = axum::serve(listener, self.router(routes))
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future();
        tokio::select! {
            result = server => result.with_context(|| format!("serving HTTP on {addr}"))?,
            () = async { cancel.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                warn!("HTTP requests still in flight {SHUTDOWN_GRACE:?} after shutdown began; dropping them");
            }
        }
        info!("{name} HTTP API on {addr} stopped");
        Ok(())
    }
}

async fn status(State(server): State<Arc<HttpServer>>) -> Json<Value> {
    Json(server.status_document())
}

async fn metrics(State(server): State<Arc<HttpServer>>) -> Result<Response, ApiError> {
    let text = server.metrics_text()?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}

async fn limit_concurrency(
    State(limit): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    match limit.try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many concurrent requests (limit {MAX_CONCURRENT_REQUESTS})"),
        )
        .into_response(),
    }
}

async fn count_requests(
    State(requests): State<IntCounterVec>,
    req: Request,
    next: Next,
) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    requests
        .with_label_values(&[path.as_str(), response.status().as_str()])
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SERVICE: ServiceInfo = crate::service_info!("test_daemon");

    #[test]
    fn status_document_fields() {
        let server = HttpServer::new(SERVICE).unwrap().with_node_id(NodeId(7));
        let doc = server.status_document();
        assert_eq!(doc["service"], "test_daemon");
        assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["status"], "ok");
        assert_eq!(doc["node_id"], 7);
        assert_eq!(doc["pid"], std::process::id());
        assert!(doc["uptime_seconds"].is_u64());

        let server = HttpServer::new(SERVICE)
            .unwrap()
            .with_status(|| Map::from_iter([("status".to_owned(), "empty".into())]));
        let doc = server.status_document();
        assert_eq!(doc["status"], "empty");
        assert!(doc.get("node_id").is_none());
    }

    /// One HTTP/1.0 request over a fresh connection: (status code, body).
    async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_owned())
    }

    #[tokio::test]
    async fn serves_status_metrics_and_json_errors_then_shuts_down() {
        let listener = bind_listener("HTTP", "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let routes = Router::new().route("/v1/hello", get(|| async { "hi" }));
        let server = HttpServer::new(SERVICE).unwrap();
        let task = tokio::spawn(server.serve(listener, routes, cancel.clone()));

        let (code, body) = http_get(addr, "/v1/status").await;
        assert_eq!(code, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["service"], "test_daemon");
        assert_eq!(http_get(addr, "/v1/hello").await, (200, "hi".to_owned()));

        let (code, body) = http_get(addr, "/no/such/path").await;
        assert_eq!(code, 404);
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["error"], "no such endpoint");

        let (code, metrics) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            metrics.contains("test_daemon_build_info{version=\""),
            "{metrics}"
        );
        assert!(
            metrics
                .contains(r#"test_daemon_http_requests_total{path="/v1/status",status="200"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"test_daemon_http_requests_total{path="unmatched",status="404"} 1"#),
            "{metrics}"
        );

        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = bind_listener("HTTP", "127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = bind_listener("HTTP", &addr).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!("binding the HTTP listener to {addr}: ")),
            "{msg}"
        );
        let err = bind_listener("HTTP", "not an address").await.unwrap_err();
        assert!(format!("{err:#}").contains("not an address"));
    }
}
