//! compute_ctl's own routes, beside `/v1/status` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use compute_api::{ComputeSpec, ComputeState, ComputeStatus};
use daemon_utils::{ApiError, CancellationToken};

use crate::compute::{ComputeError, ComputeNode};

#[derive(Clone)]
struct AppState {
    node: Arc<ComputeNode>,
    /// Cancelled after `/terminate`: compute_ctl exits.
    shutdown: CancellationToken,
}

/// `GET /status`, `POST /configure`, `POST /terminate`.
pub fn routes(node: Arc<ComputeNode>, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/configure", post(configure))
        .route("/terminate", post(terminate))
        .with_state(AppState { node, shutdown })
}

/// The one place a compute error becomes an HTTP status.
impl From<ComputeError> for ApiError {
    fn from(e: ComputeError) -> Self {
        let status = match &e {
            ComputeError::InvalidSpec(_) => StatusCode::BAD_REQUEST,
            ComputeError::WrongStatus { .. }
            | ComputeError::NoSpec
            | ComputeError::NeedsRestart(_) => StatusCode::CONFLICT,
            ComputeError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, format!("{e:#}"))
    }
}

async fn status(State(app): State<AppState>) -> Json<ComputeState> {
    Json(app.node.state())
}

/// Starts the compute from the spec in the body and answers once it runs
/// (200) or failed (500, with the reason); on a running compute applies the
/// spec's settings, roles and databases.
async fn configure(
    State(app): State<AppState>,
    body: String,
) -> Result<Json<ComputeState>, ApiError> {
    let spec = ComputeSpec::from_json(&body)
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
