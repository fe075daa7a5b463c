//! The safekeeper's HTTP API (`/v1/...`), beside `/v1/status` and `/metrics`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use daemon_utils::{ApiError, ApiRoutes};
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

/// The API's OpenAPI document, served at `GET /v1/openapi.json`.
pub const OPENAPI_SPEC: &str = include_str!("../../docs/openapi/safekeeper.json");

pub fn routes(timelines: Arc<GlobalTimelines>) -> Router {
    api_routes().with_state(timelines)
}

/// The routes, listed: a unit test compares them with [`OPENAPI_SPEC`].
fn api_routes() -> ApiRoutes<Arc<GlobalTimelines>> {
    const TIMELINE: &str = "/v1/tenant/{tenant_id}/timeline/{timeline_id}";
    ApiRoutes::new(OPENAPI_SPEC)
        .get("/v1/timeline", list)
        .post("/v1/tenant/{tenant_id}/timeline", create)
        .get(TIMELINE, status)
        .delete(TIMELINE, delete)
}

async fn list(State(timelines): State<Arc<GlobalTimelines>>) -> Json<Vec<TimelineStatus>> {
    Json(timelines.list().iter().map(|t| t.status()).collect())
}

async fn create(
    State(timelines): State<Arc<GlobalTimelines>>,
    Path(tenant_id): Path<String>,
    body: Result<Json<TimelineCreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TimelineStatus>), ApiError> {
    let tenant_id: TenantId = parse(&tenant_id)?;
    let Json(request) = body?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let problems = daemon_utils::openapi_mismatches(OPENAPI_SPEC, api_routes().listed());
        assert!(
            problems.is_empty(),
            "docs/openapi/safekeeper.json: {problems:#?}"
        );
    }
}
