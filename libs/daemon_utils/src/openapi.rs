//! Every daemon describes its HTTP API in an OpenAPI 3.0 document
//! (`docs/openapi/<daemon>.json`), served to anyone at
//! `GET /v1/openapi.json`. A daemon builds its routes with [`ApiRoutes`],
//! which keeps the list of what it serves, and a unit test of the daemon
//! compares that list with the document ([`openapi_mismatches`]): a route
//! added without its description, or a description of a route that is not
//! served, fails the daemon's tests.

use std::collections::BTreeSet;

use axum::handler::Handler;
use axum::http::{header, Method};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::Router;
use serde_json::Value;

use crate::http::{METRICS_PATH, STATUS_PATH};
use crate::ApiError;

/// Where a daemon serves its OpenAPI document; public, like `/v1/status`.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// The operations of an OpenAPI path item.
const OPERATION_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A daemon's own routes (what [`crate::HttpServer::router`] is given),
/// built so that they can be listed: every route is added with its method,
/// and `GET /v1/openapi.json` serves the daemon's OpenAPI document.
pub struct ApiRoutes<S = ()> {
    router: Router<S>,
    listed: Vec<(Method, &'static str)>,
}

impl<S: Clone + Send + Sync + 'static> ApiRoutes<S> {
    /// Routes serving `spec` (the daemon's OpenAPI document, JSON) at
    /// [`OPENAPI_PATH`].
    pub fn new(spec: &'static str) -> Self {
        let routes = Self {
            router: Router::new(),
            listed: Vec::new(),
        };
        routes.get(OPENAPI_PATH, move || async move {
            ([(header::CONTENT_TYPE, "application/json")], spec)
        })
    }

    pub fn get<H: Handler<T, S>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add(Method::GET, path, routing::get(handler))
    }

    pub fn post<H: Handler<T, S>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add(Method::POST, path, routing::post(handler))
    }

    pub fn delete<H: Handler<T, S>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.add(Method::DELETE, path, routing::delete(handler))
    }

    fn add(mut self, method: Method, path: &'static str, route: MethodRouter<S>) -> Self {
        self.listed.push((method, path));
        // A second method on a path joins the first (axum merges them).
        self.router = self.router.route(path, route);
        self
    }

    /// What the routes serve: (method, axum path such as `/v1/tenant/{tenant_id}`).
    pub fn listed(&self) -> &[(Method, &'static str)] {
        &self.listed
    }

    /// The router, given its state. Its errors are JSON, like every error
    /// of the API: axum's own refusals of a request its extractors cannot
    /// read (a path segment that is not UTF-8, say), plain text, become
    /// `{"error": text}`.
    pub fn with_state<S2: Clone + Send + Sync + 'static>(self, state: S) -> Router<S2> {
        self.router
            .layer(middleware::map_response(plain_errors_as_json))
            .with_state(state)
    }
}

/// The longest plain-text error turned into JSON; longer ones are cut.
const MAX_PLAIN_ERROR: usize = 64 * 1024;

async fn plain_errors_as_json(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(plain && (response.status().is_client_error() || response.status().is_server_error())) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_PLAIN_ERROR).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(the error could not be read: {e})"),
    };
    ApiError::new(parts.status, text).into_response()
}

/// Routes every daemon serves beside its own, and those anyone may call.
const STANDARD_ROUTES: &[(&str, &str)] = &[("GET", STATUS_PATH), ("GET", METRICS_PATH)];
const PUBLIC_ROUTES: &[(&str, &str)] = &[("GET", STATUS_PATH), ("GET", OPENAPI_PATH)];

/// What is wrong with OpenAPI document `spec` as the description of a
/// daemon serving `routes` (from [`ApiRoutes::listed`]) plus the standard
/// `/v1/status` and `/metrics`; empty when it describes exactly those:
///
/// * an OpenAPI 3.0 document;
/// * every served (method, path) is an operation of the document, and
///   every operation is served (paths compared in axum's `{name}` syntax);
/// * each operation declares each parameter of its path template (`in:
///   path`, required) and no other path parameter, and has responses;
/// * the public routes (`GET /v1/status`, `GET /v1/openapi.json`) say
///   `security: []`; every other operation needs the bearer token (its own
///   or the document's `security`) and documents its 401;
/// * every local `$ref` resolves.
pub fn openapi_mismatches(spec: &str, routes: &[(Method, &str)]) -> Vec<String> {
    let doc: Value = match serde_json::from_str(spec) {
        Ok(doc) => doc,
        Err(e) => return vec![format!("the document is not JSON: {e}")],
    };
    let mut problems = Vec::new();
    match doc["openapi"].as_str() {
        Some(v) if v.starts_with("3.0.") => {}
        other => problems.push(format!("openapi is {other:?}, not 3.0.x")),
    }
    check_refs(&doc, &doc, "#", &mut problems);

    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.as_str().to_owned(), (*p).to_owned()))
        .chain(
            STANDARD_ROUTES
                .iter()
                .map(|(m, p)| ((*m).to_owned(), (*p).to_owned())),
        )
        .collect();
    let Some(paths) = doc["paths"].as_object() else {
        problems.push("the document has no paths".to_owned());
        return problems;
    };
    let global_security = doc["security"].as_array().is_some_and(|s| !s.is_empty());
    let mut described = BTreeSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().into_iter().flatten() {
            if !OPERATION_METHODS.contains(&method.as_str()) {
                continue;
            }
            let method = method.to_ascii_uppercase();
            let what = format!("{method} {path}");
            check_operation(&doc, path, item, op, &what, &mut problems);
            let public = PUBLIC_ROUTES.contains(&(method.as_str(), path.as_str()));
            let security = op.get("security").and_then(Value::as_array);
            match (public, security) {
                (true, Some(s)) if s.is_empty() => {}
                (true, _) => problems.push(format!("{what} is public: it needs `security: []`")),
                (false, Some(s)) if s.is_empty() => {
                    problems.push(format!("{what} needs a token but says `security: []`"))
                }
                (false, None) if !global_security => problems.push(format!(
                    "{what} needs a token but neither it nor the document has `security`"
                )),
                (false, _) => {
                    if op["responses"].get("401").is_none() {
                        problems.push(format!("{what} needs a token but documents no 401"));
                    }
                }
            }
            described.insert((method, path.clone()));
        }
    }
    for (method, path) in served.difference(&described) {
        problems.push(format!(
            "{method} {path} is served but not in the OpenAPI document"
        ));
    }
    for (method, path) in described.difference(&served) {
        problems.push(format!(
            "{method} {path} is in the OpenAPI document but not served"
        ));
    }
    problems
}

/// The `{name}`s of an axum (or OpenAPI) path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// `value`, or what its local `$ref` points to.
fn deref<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).unwrap_or(&Value::Null),
        None => value,
    }
}

fn check_operation(
    doc: &Value,
    path: &str,
    item: &Value,
    op: &Value,
    what: &str,
    problems: &mut Vec<String>,
) {
    let mut declared = BTreeSet::new();
    let params = [&item["parameters"], &op["parameters"]];
    for param in params
        .iter()
        .filter_map(|p| p.as_array())
        .flatten()
        .map(|p| deref(doc, p))
    {
        if param["in"] != "path" {
            continue;
        }
        let name = param["name"].as_str().unwrap_or_default().to_owned();
        if param["required"] != true {
            problems.push(format!("{what}: path parameter {name} is not required"));
        }
        declared.insert(name);
    }
    let expected = template_params(path);
    if declared != expected {
        problems.push(format!(
            "{what}: declares path parameters {declared:?}, the path has {expected:?}"
        ));
    }
    if op["responses"].as_object().is_none_or(|r| r.is_empty()) {
        problems.push(format!("{what} has no responses"));
    }
}

fn check_refs(doc: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref") {
                let resolved = r
                    .as_str()
                    .and_then(|r| r.strip_prefix('#'))
                    .and_then(|pointer| doc.pointer(pointer));
                if resolved.is_none() {
                    problems.push(format!("{at}: $ref {r} does not resolve"));
                }
            }
            for (key, v) in map {
                check_refs(doc, v, &format!("{at}/{key}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_refs(doc, v, &format!("{at}/{i}"), problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(paths: Value) -> String {
        json!({
            "openapi": "3.0.3",
            "info": {"title": "t", "version": "1"},
            "security": [{"bearerAuth": []}],
            "components": {
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
                "parameters": {"Id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}},
            },
            "paths": paths,
        })
        .to_string()
    }

    fn standard() -> Value {
        json!({
            "/v1/status": {"get": {"security": [], "responses": {"200": {"description": "ok"}}}},
            "/v1/openapi.json": {"get": {"security": [], "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"responses": {"200": {"description": "ok"}, "401": {"description": "no"}}}},
        })
    }

    fn with(extra: Value) -> Value {
        let mut paths = standard();
        for (k, v) in extra.as_object().unwrap() {
            paths[k] = v.clone();
        }
        paths
    }

    async fn ok() -> &'static str {
        "ok"
    }

    #[test]
    fn routes_and_document_must_match() {
        let routes: ApiRoutes = ApiRoutes::new("{}")
            .get("/v1/thing/{id}", ok)
            .delete("/v1/thing/{id}", ok);
        let listed = routes.listed().to_vec();
        assert_eq!(
            listed,
            vec![
                (Method::GET, OPENAPI_PATH),
                (Method::GET, "/v1/thing/{id}"),
                (Method::DELETE, "/v1/thing/{id}"),
            ]
        );
        let op = json!({
            "parameters": [{"$ref": "#/components/parameters/Id"}],
            "responses": {"200": {"description": "ok"}, "401": {"description": "no"}},
        });
        let good = spec(with(json!({"/v1/thing/{id}": {"get": op, "delete": op}})));
        assert_eq!(openapi_mismatches(&good, &listed), Vec::<String>::new());

        // A route served without a description, and the other way round.
        let missing = spec(with(json!({"/v1/thing/{id}": {"get": op}})));
        let problems = openapi_mismatches(&missing, &listed);
        assert_eq!(
            problems,
            vec!["DELETE /v1/thing/{id} is served but not in the OpenAPI document"]
        );
        let extra = spec(with(
            json!({"/v1/thing/{id}": {"get": op, "delete": op, "post": op}}),
        ));
        assert_eq!(
            openapi_mismatches(&extra, &listed),
            vec!["POST /v1/thing/{id} is in the OpenAPI document but not served"]
        );
    }

    #[test]
    fn parameters_security_and_refs_are_checked() {
        let listed = [(Method::GET, OPENAPI_PATH), (Method::GET, "/v1/thing/{id}")];
        let no_param = spec(with(json!({"/v1/thing/{id}": {"get": {
            "responses": {"200": {"description": "ok"}, "401": {"description": "no"}},
        }}})));
        let problems = openapi_mismatches(&no_param, &listed);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("path parameters"), "{problems:?}");

        let no_401 = spec(with(json!({"/v1/thing/{id}": {"get": {
            "parameters": [{"$ref": "#/components/parameters/Id"}],
            "responses": {"200": {"description": "ok"}},
        }}})));
        assert_eq!(
            openapi_mismatches(&no_401, &listed),
            vec!["GET /v1/thing/{id} needs a token but documents no 401"]
        );

        let bad_ref = spec(with(json!({"/v1/thing/{id}": {"get": {
            "parameters": [{"$ref": "#/components/parameters/Nope"}],
            "responses": {"200": {"description": "ok"}, "401": {"description": "no"}},
        }}})));
        let problems = openapi_mismatches(&bad_ref, &listed);
        assert!(
            problems.iter().any(|p| p.contains("does not resolve")),
            "{problems:?}"
        );

        let mut paths = with(json!({}));
        paths["/v1/status"]["get"]
            .as_object_mut()
            .unwrap()
            .remove("security");
        let problems = openapi_mismatches(&spec(paths), &[(Method::GET, OPENAPI_PATH)]);
        assert_eq!(
            problems,
            vec!["GET /v1/status is public: it needs `security: []`"]
        );

        assert_eq!(
            openapi_mismatches("not json", &listed).len(),
            1,
            "an unreadable document is one problem"
        );
    }

    #[tokio::test]
    async fn extractor_refusals_are_json() {
        use axum::extract::Path;
        use tower::Service;
        let mut router: Router = ApiRoutes::new("{}")
            .get("/v1/thing/{id}", |Path(id): Path<String>| async move { id })
            .with_state(());
        let response = router
            .call(
                axum::extract::Request::get("/v1/thing/%FF")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert!(doc["error"].as_str().unwrap().contains("UTF-8"), "{doc}");
    }

    #[tokio::test]
    async fn serves_the_document_as_json() {
        use tower::Service;
        let mut router: Router = ApiRoutes::new(r#"{"openapi":"3.0.3"}"#).with_state(());
        let response = router
            .call(
                axum::extract::Request::get(OPENAPI_PATH)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
