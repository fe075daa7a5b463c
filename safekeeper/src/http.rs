//! The safekeeper's HTTP API (`/v1/...`), beside `/v1/status` and `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use daemon_utils::ApiError;
use safekeeper_api::models::{TimelineCreateRequest, TimelineStatus};
use utils::{TenantId, TimelineId};

use crate::timeline::{GlobalTimelines, TimelineError};

impl From<TimelineError> for ApiError {
    fn from(e: TimelineError) -> Self {
        let status = match &e {
            TimelineError::AlreadyExists(..) => StatusCode::CONFLICT,
            TimelineError::NotFound(..) => StatusCode::NOT_FOUND,
            TimelineError::Invalid(_) => StatusCode::BAD_REQUEST,
            TimelineError::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, format!("{:#}", anyhow::Error::from(e)))
    }
}

fn parse<T: std::str::FromStr>(value: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e: T::Err| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

pub fn routes(timelines: Arc<GlobalTimelines>) -> Router {
    Router::new()
        .route("/v1/timeline", get(list))
        .route("/v1/tenant/{tenant_id}/timeline", post(create))
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}",
            get(status).delete(delete),
        )
        .with_state(timelines)
}

async fn list(State(timelines): State<Arc<GlobalTimelines>>) -> Json<Vec<TimelineStatus>> {
    Json(timelines.list().iter().map(|t| t.status()).collect())
}

async fn create(
    State(timelines): State<Arc<GlobalTimelines>>,
    Path(tenant_id): Path<String>,
    body: Result<Json<TimelineCreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<TimelineStatus>), ApiError> {
    let tenant_id: TenantId = parse(&tenant_id)?;
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let timeline = tokio::task::block_in_place(|| timelines.create(tenant_id, &request))?;
    Ok((StatusCode::CREATED, Json(timeline.status())))
}

async fn status(
    State(timelines): State<Arc<GlobalTimelines>>,
    Path((tenant_id, timeline_id)): Path<(String, String)>,
) -> Result<Json<TimelineStatus>, ApiError> {
    let (tenant_id, timeline_id): (TenantId, TimelineId) =
        (parse(&tenant_id)?, parse(&timeline_id)?);
    Ok(Json(timelines.get(tenant_id, timeline_id)?.status()))
}

async fn delete(
    State(timelines): State<Arc<GlobalTimelines>>,
    Path((tenant_id, timeline_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (tenant_id, timeline_id): (TenantId, TimelineId) =
        (parse(&tenant_id)?, parse(&timeline_id)?);
    tokio::task::block_in_place(|| timelines.delete(tenant_id, timeline_id))?;
    Ok(Json(serde_json::json!({ "deleted": true })))
}
