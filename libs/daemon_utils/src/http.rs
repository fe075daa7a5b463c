//! The HTTP management server every daemon runs.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use auth::{Access, JwtVerifier};
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::{info, warn};
use utils::NodeId;

use crate::openapi::OPENAPI_PATH;
use crate::ServiceInfo;

/// Requests served at once; more get `503` at once instead of queueing.
/// Connections themselves are not limited: an idle HTTP/1 connection costs a
/// parked task and a socket, and the management port is not public.
pub const MAX_CONCURRENT_REQUESTS: usize = 128;

/// How long shutdown waits for in-flight requests before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A connection idle this long is probed, every interval, and closed after
/// that many unanswered probes: a vanished peer is noticed within a minute.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// Label for requests that matched no route: keeps the metric's cardinality
/// bounded whatever paths clients try.
const UNMATCHED: &str = "unmatched";

/// The routes every daemon serves beside its own.
pub(crate) const STATUS_PATH: &str = "/v1/status";
pub(crate) const METRICS_PATH: &str = "/metrics";

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

/// A request body, query string or path that does not parse is the
/// caller's mistake: 400 with axum's reason, as JSON like every error
/// (axum's own rejections are plain text).
macro_rules! bad_request_from {
    ($($rejection:ty),+) => {
        $(
            impl From<$rejection> for ApiError {
                fn from(rejection: $rejection) -> Self {
                    Self::new(StatusCode::BAD_REQUEST, rejection.body_text())
                }
            }
        )+
    };
}

bad_request_from!(
    axum::extract::rejection::JsonRejection,
    axum::extract::rejection::QueryRejection,
    axum::extract::rejection::PathRejection,
    axum::extract::rejection::StringRejection
);

/// Binds a TCP listener; the error names what it is for and the address.
pub async fn bind_listener(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener to {addr}"))
}

type StatusFn = dyn Fn() -> Map<String, Value> + Send + Sync;

/// A request as an authentication policy sees it: the method, the route it
/// matched (`/v1/tenant/{tenant_id}`, or `None` when no route matched) and
/// the route's path parameters.
pub struct RouteRequest<'a> {
    pub method: &'a Method,
    pub route: Option<&'a str>,
    pub params: &'a [(String, String)],
}

impl RouteRequest<'_> {
    /// The path parameter `name`, if the route has one.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What each request needs ([`HttpServer::with_auth`]).
pub type AuthPolicy = Arc<dyn Fn(&RouteRequest) -> Access + Send + Sync>;

/// The policy of the storage daemons' APIs: a route with a `{tenant_id}`
/// needs a token for that tenant (or admin), every other route admin.
pub fn tenant_routes_policy() -> AuthPolicy {
    Arc::new(|request: &RouteRequest| {
        match request.param("tenant_id").and_then(|t| t.parse().ok()) {
            Some(tenant_id) => Access::Tenant(tenant_id),
            None => Access::Admin,
        }
    })
}

/// The token verifier of a daemon started with `--auth-public-key PATH`;
/// without one, a warning that nobody will be asked who they are.
pub fn load_verifier(
    public_key: Option<&std::path::Path>,
) -> anyhow::Result<Option<Arc<JwtVerifier>>> {
    match public_key {
        Some(path) => {
            let verifier = JwtVerifier::from_file(path)?;
            info!(
                "authentication on: tokens are verified with {}",
                path.display()
            );
            Ok(Some(Arc::new(verifier)))
        }
        None => {
            warn!("authentication off (no --auth-public-key): every caller is trusted");
            Ok(None)
        }
    }
}

struct AuthState {
    verifier: Arc<JwtVerifier>,
    policy: AuthPolicy,
}

/// A daemon's management API: its own routes plus `GET /v1/status` and
/// `GET /metrics`, JSON 404/405 errors, request counting and a concurrency
/// limit. Serves HTTP/1 and HTTP/2 (cleartext, prior knowledge) on one
/// listener, and optionally a gRPC service on the same port
/// ([`with_grpc`](Self::with_grpc)).
pub struct HttpServer {
    service: ServiceInfo,
    node_id: Option<NodeId>,
    started: Instant,
    registry: Registry,
    requests: IntCounterVec,
    status: Option<Arc<StatusFn>>,
    grpc: Option<Router>,
    auth: Option<Arc<AuthState>>,
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
            grpc: None,
            auth: None,
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

    /// Serves `grpc` (for example tonic's `Routes::into_axum_router()`) on
    /// the same listener: requests whose `content-type` is
    /// `application/grpc` or `application/grpc+<codec>` go to it, untouched
    /// by the management API's middleware (no request counting, no
    /// concurrency limit: the gRPC service sets its own limits, and its
    /// streams are long-lived). gRPC needs HTTP/2, which the server speaks
    /// alongside HTTP/1. Long-lived streams must end when the daemon's
    /// cancellation token fires, or shutdown waits for its grace period.
    pub fn with_grpc(mut self, grpc: Router) -> Self {
        self.grpc = Some(grpc);
        self
    }

    /// Every request but `GET /v1/status` and `GET /v1/openapi.json`
    /// ([`crate::ApiRoutes`]) needs a bearer token that
    /// `verifier` accepts and that opens what `policy` says the request
    /// needs (`/metrics`: admin). Refusals are 401 (no valid token) or 403
    /// (a valid token that does not open this), before any handler runs.
    /// Handlers find the caller's [`Claims`] among the request's extensions.
    /// Without this, nobody is asked.
    pub fn with_auth(mut self, verifier: Arc<JwtVerifier>, policy: AuthPolicy) -> Self {
        self.auth = Some(Arc::new(AuthState { verifier, policy }));
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
    /// standard endpoints and middleware, and the gRPC service if any.
    pub fn router(mut self, routes: Router) -> Router {
        let requests = self.requests.clone();
        let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
        let grpc = self.grpc.take();
        let auth = self.auth.clone();
        let server = Arc::new(self);
        let http = Router::new()
            .route(STATUS_PATH, get(status))
            .route(METRICS_PATH, get(metrics))
            .with_state(server)
            .merge(routes)
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            });
        let http = match auth {
            Some(auth) => http.layer(middleware::from_fn_with_state(auth, authenticate)),
            None => http,
        };
        let http = http
            .layer(middleware::from_fn_with_state(limit, limit_concurrency))
            .layer(middleware::from_fn_with_state(requests, count_requests));
        match grpc {
            None => http,
            Some(grpc) => Router::new().fallback_service(SplitGrpc { grpc, http }),
        }
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
        let what = if self.grpc.is_some() {
            "HTTP API and gRPC"
        } else {
            "HTTP API"
        };
        info!("{name} {what} listening on http://{addr}");
        let listener = listener.tap_io(configure_connection);
        let server = axum::serve(listener, self.router(routes))
            .with_graceful_shutdown(cancel.clone().cancelled_owned())
            .into_future();
        tokio::select! {
            result = server => result.with_context(|| format!("serving HTTP on {addr}"))?,
            () = async { cancel.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                warn!("HTTP requests still in flight {SHUTDOWN_GRACE:?} after shutdown began; dropping them");
            }
        }
        info!("{name} {what} on {addr} stopped");
        Ok(())
    }
}

/// Small request/response exchanges (and gRPC messages) do not wait for
/// Nagle's algorithm, and TCP keepalives end connections whose peer vanished
/// (a gRPC stream may be idle for long, and would hold its resources).
fn configure_connection(tcp: &mut tokio::net::TcpStream) {
    if let Err(err) = tcp.set_nodelay(true) {
        warn!("setting TCP_NODELAY on an accepted connection: {err}");
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(err) = socket2::SockRef::from(&*tcp).set_tcp_keepalive(&keepalive) {
        warn!("enabling TCP keepalives on an accepted connection: {err}");
    }
}

/// Sends gRPC requests to one router and everything else to another.
#[derive(Clone)]
struct SplitGrpc {
    grpc: Router,
    http: Router,
}

/// True for `application/grpc` and `application/grpc+proto` (etc.), as the
/// gRPC over HTTP/2 specification defines the content type.
fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

impl Service<Request> for SplitGrpc {
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        // Routers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if is_grpc(&req) {
            self.grpc.call(req)
        } else {
            self.http.call(req)
        }
    }
}

async fn status(State(server): State<Arc<HttpServer>>) -> Json<Value> {
    Json(server.status_document())
}

async fn metrics(State(server): State<Arc<HttpServer>>) -> Result<Response, ApiError> {
    let text = server.metrics_text()?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}

/// Refuses a request whose token does not open what it needs. The status
/// and the OpenAPI document are public.
async fn authenticate(State(auth): State<Arc<AuthState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let access = match route.as_deref() {
        Some(STATUS_PATH | OPENAPI_PATH) if req.method() == Method::GET => Access::Public,
        Some(METRICS_PATH) => Access::Admin,
        _ => {
            let (mut parts, body) = req.into_parts();
            let params: Vec<(String, String)> =
                match RawPathParams::from_request_parts(&mut parts, &()).await {
                    Ok(raw) => raw
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    Err(_) => Vec::new(),
                };
            let access = (auth.policy)(&RouteRequest {
                method: &parts.method,
                route: route.as_deref(),
                params: &params,
            });
            return check_and_run(&auth, access, Request::from_parts(parts, body), next).await;
        }
    };
    check_and_run(&auth, access, req, next).await
}

async fn check_and_run(auth: &AuthState, access: Access, mut req: Request, next: Next) -> Response {
    if access == Access::Public {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let checked = auth.verifier.authorize_bearer(header, &access);
    match checked {
        Ok(claims) => {
            req.extensions_mut().insert(claims);
            next.run(req).await
        }
        Err(err) => {
            let status = if err.is_forbidden() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            info!(
                method = %req.method(),
                path = req.uri().path(),
                "refused: {err}"
            );
            ApiError::new(status, err.to_string()).into_response()
        }
    }
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
        http_get_with(addr, path, None).await
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

    #[test]
    fn grpc_content_types() {
        let req = |content_type: Option<&str>| {
            let mut builder = Request::builder().uri("/x");
            if let Some(value) = content_type {
                builder = builder.header(header::CONTENT_TYPE, value);
            }
            builder.body(axum::body::Body::empty()).unwrap()
        };
        assert!(is_grpc(&req(Some("application/grpc"))));
        assert!(is_grpc(&req(Some("application/grpc+proto"))));
        assert!(!is_grpc(&req(Some("application/grpc-web"))));
        assert!(!is_grpc(&req(Some("application/json"))));
        assert!(!is_grpc(&req(None)));
    }

    /// One HTTP/1.0 POST with a content type: (status code, body).
    async fn http_post(
        addr: std::net::SocketAddr,
        path: &str,
        content_type: &str,
    ) -> (u16, String) {
        let headers = format!("Content-Type: {content_type}\r\nContent-Length: 0\r\n");
        http_request(addr, "POST", path, &headers).await
    }

    #[tokio::test]
    async fn grpc_requests_bypass_the_management_api() {
        let listener = bind_listener("HTTP", "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let grpc = Router::new().fallback(|| async { "grpc" });
        let server = HttpServer::new(SERVICE).unwrap().with_grpc(grpc);
        let task = tokio::spawn(server.serve(listener, Router::new(), cancel.clone()));

        let (code, body) = http_get(addr, "/v1/status").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            http_post(addr, "/pkg.Service/Method", "application/grpc").await,
            (200, "grpc".to_owned())
        );
        assert_eq!(
            http_post(addr, "/v1/status", "application/grpc+proto").await,
            (200, "grpc".to_owned())
        );
        let (code, _) = http_post(addr, "/pkg.Service/Method", "application/json").await;
        assert_eq!(code, 404);
        // Only the management API's requests are counted.
        let (_, metrics) = http_get(addr, "/metrics").await;
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
    }

    /// One HTTP/1.0 GET, with a bearer token if given: (status code, body).
    async fn http_get_with(
        addr: std::net::SocketAddr,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let headers = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        http_request(addr, "GET", path, &headers).await
    }

    /// One HTTP/1.0 request over a fresh connection with extra header
    /// lines (each ending in CRLF): (status code, body).
    async fn http_request(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &str,
    ) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_owned())
    }

    #[tokio::test]
    async fn tokens_open_what_the_policy_says() {
        use auth::{Claims, Scope, SigningKey};
        let (private, public) = auth::generate_key_pair();
        let signer = SigningKey::from_pem(&private).unwrap();
        let verifier = Arc::new(JwtVerifier::from_pem(&public).unwrap());
        let listener = bind_listener("HTTP", "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let routes = Router::new()
            .route("/v1/tenant/{tenant_id}", get(|| async { "tenant" }))
            .route("/v1/tenant", get(|| async { "list" }));
        let server = HttpServer::new(SERVICE)
            .unwrap()
            .with_auth(verifier, tenant_routes_policy());
        let task = tokio::spawn(server.serve(listener, routes, cancel.clone()));

        let t1 = utils::TenantId::generate();
        let t2 = utils::TenantId::generate();
        let admin = signer.issue(&Claims::new(Scope::Admin));
        let tenant1 = signer.issue(&Claims::tenant(t1));
        let mut expired = Claims::new(Scope::Admin);
        expired.exp = Some(1);
        let expired = signer.issue(&expired);

        assert_eq!(http_get(addr, "/v1/status").await.0, 200);
        let (code, body) = http_get(addr, &format!("/v1/tenant/{t1}")).await;
        assert_eq!(code, 401);
        assert!(body.contains("Authorization: Bearer"), "{body}");
        assert_eq!(
            http_get_with(addr, &format!("/v1/tenant/{t1}"), Some(&tenant1)).await,
            (200, "tenant".into())
        );
        let (code, body) = http_get_with(addr, &format!("/v1/tenant/{t2}"), Some(&tenant1)).await;
        assert_eq!(code, 403, "{body}");
        assert_eq!(
            http_get_with(addr, &format!("/v1/tenant/{t2}"), Some(&admin))
                .await
                .0,
            200
        );
        let (code, body) = http_get_with(addr, &format!("/v1/tenant/{t1}"), Some(&expired)).await;
        assert_eq!(code, 401);
        assert!(body.contains("expired"), "{body}");
        assert_eq!(
            http_get_with(addr, "/v1/tenant/x", Some("not-a-token"))
                .await
                .0,
            401
        );
        assert_eq!(
            http_get_with(addr, "/v1/tenant", Some(&tenant1)).await.0,
            403
        );
        assert_eq!(http_get_with(addr, "/v1/tenant", Some(&admin)).await.0, 200);
        assert_eq!(http_get_with(addr, "/metrics", Some(&tenant1)).await.0, 403);
        assert_eq!(http_get_with(addr, "/metrics", Some(&admin)).await.0, 200);
        assert_eq!(http_get(addr, "/no/such/path").await.0, 401);
        // Refusals are counted like any answer.
        let (_, metrics) = http_get_with(addr, "/metrics", Some(&admin)).await;
        assert!(
            metrics.contains(
                r#"test_daemon_http_requests_total{path="/v1/tenant/{tenant_id}",status="403"} 1"#
            ),
            "{metrics}"
        );

        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_openapi_document_is_public() {
        let (_, public) = auth::generate_key_pair();
        let verifier = Arc::new(JwtVerifier::from_pem(&public).unwrap());
        let listener = bind_listener("HTTP", "127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let routes = crate::ApiRoutes::new(r#"{"openapi":"3.0.3"}"#)
            .get("/v1/private", || async { "private" })
            .with_state(());
        let server = HttpServer::new(SERVICE)
            .unwrap()
            .with_auth(verifier, tenant_routes_policy());
        let task = tokio::spawn(server.serve(listener, routes, cancel.clone()));

        assert_eq!(
            http_get(addr, OPENAPI_PATH).await,
            (200, r#"{"openapi":"3.0.3"}"#.to_owned())
        );
        assert_eq!(http_get(addr, "/v1/private").await.0, 401);
        let (code, _) = http_post(addr, OPENAPI_PATH, "application/json").await;
        assert_eq!(code, 401, "only GET is public");

        cancel.cancel();
        task.await.unwrap().unwrap();
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
