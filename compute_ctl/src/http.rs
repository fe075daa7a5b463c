//! compute_ctl's own routes, beside `/v1/status` and `/metrics`.

use std::sync::Arc;

use axum::extract::rejection::StringRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router};
use compute_api::{ComputeSpec, ComputeState, ComputeStatus};
use daemon_utils::{ApiError, ApiRoutes, CancellationToken};

use crate::compute::{ComputeError, ComputeNode};

#[derive(Clone)]
struct AppState {
    node: Arc<ComputeNode>,
    /// Cancelled after `/terminate`: compute_ctl exits.
    shutdown: CancellationToken,
}

/// The API's OpenAPI document, served at `GET /v1/openapi.json`.
pub const OPENAPI_SPEC: &str = include_str!("../../docs/openapi/compute_ctl.json");

/// `GET /status`, `POST /configure`, `POST /terminate`.
pub fn routes(node: Arc<ComputeNode>, shutdown: CancellationToken) -> Router {
    api_routes().with_state(AppState { node, shutdown })
}

/// The routes, listed: a unit test compares them with [`OPENAPI_SPEC`].
fn api_routes() -> ApiRoutes<AppState> {
    ApiRoutes::new(OPENAPI_SPEC)
        .get("/status", status)
        .post("/configure", configure)
        .post("/terminate", terminate)
}

/// The one place a compute error becomes an HTTP status.
impl From<ComputeError> for ApiError {
    fn from(e: ComputeError) -> Self {
        let status = match &e {
            ComputeError::InvalidSpec(_) => StatusCode::BAD_REQUEST,
            ComputeError::WrongStatus { .. }
            | ComputeError::NoSpec
            | ComputeError::NeedsRestart(_) => StatusCode::CONFLICT,
            ComputeError::Failed(e) if refused_by_postgres(e) => StatusCode::CONFLICT,
            ComputeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, format!("{e:#}"))
    }
}

/// SQLSTATE classes of errors that say postgres refused what the spec
/// asks of this database (not that it failed): a role or database that
/// does not exist (42), a reserved name (42), objects that still depend on
/// a role to drop (2B), a database in use (55), bad data (22), a
/// constraint (23), an invalid role (0P).
const SPEC_REFUSED_CLASSES: &[&str] = &["0P", "22", "23", "2B", "42", "55"];

/// True when `e` comes from postgres refusing a statement the spec made:
/// the caller's spec does not fit the database (409), unlike a failure of
/// the compute (500).
fn refused_by_postgres(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<pq_proto::ClientError>()
            .and_then(pq_proto::ClientError::code)
            .is_some_and(|code| SPEC_REFUSED_CLASSES.iter().any(|c| code.starts_with(c)))
    })
}

async fn status(State(app): State<AppState>) -> Json<ComputeState> {
    Json(app.node.state())
}

/// Starts the compute from the spec in the body and answers once it runs
/// (200) or failed (500, with the reason); on a running compute applies the
/// spec's settings, roles and databases.
async fn configure(
    State(app): State<AppState>,
    body: Result<String, StringRejection>,
) -> Result<Json<ComputeState>, ApiError> {
    let spec = ComputeSpec::from_json(&body?)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let state = app.node.configure(spec).await?;
    match state.status {
        ComputeStatus::Running => Ok(Json(state)),
        status => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the compute is {status}: {}",
                state.error.as_deref().unwrap_or("no error recorded")
            ),
        )),
    }
}

/// Stops postgres, answers with the final state, then compute_ctl exits.
async fn terminate(State(app): State<AppState>) -> Json<ComputeState> {
    let state = app.node.terminate().await;
    app.shutdown.cancel();
    Json(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_refusals_are_conflicts() {
        let refused = |code: &str| {
            let err = pq_proto::ClientError::Server(Box::new(pq_proto::ErrorFields {
                severity: "ERROR".into(),
                code: code.into(),
                message: "no".into(),
                detail: None,
                hint: None,
                other: Vec::new(),
            }));
            let e = anyhow::Error::from(err).context("creating database \"x\"");
            ApiError::from(ComputeError::Failed(e)).status
        };
        assert_eq!(refused("42704"), StatusCode::CONFLICT, "undefined object");
        assert_eq!(refused("2BP01"), StatusCode::CONFLICT, "dependent objects");
        assert_eq!(
            refused("53100"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "disk full"
        );
        assert_eq!(
            refused("XX000"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal"
        );
        let other = ComputeError::Failed(anyhow::anyhow!("connecting to postgres"));
        assert_eq!(
            ApiError::from(other).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_openapi_document_describes_every_route() {
        let problems = daemon_utils::openapi_mismatches(OPENAPI_SPEC, api_routes().listed());
        assert!(
            problems.is_empty(),
            "docs/openapi/compute_ctl.json: {problems:#?}"
        );
    }
}
