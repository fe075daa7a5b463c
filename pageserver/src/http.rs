//! The pageserver's HTTP API (`/v1/...`), beside `/v1/status` and `/metrics`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use daemon_utils::{ApiError, ApiRoutes};
use pageserver_api::models::{
    TenantAttachRequest, TenantCreateRequest, TenantInfo, TimelineCreateRequest, TimelineInfo,
};
use utils::{TenantId, TimelineId};

use crate::remote_timeline::{Generation, StaleGeneration};
use crate::tenant::timeline::{BranchError, Timeline};
use crate::tenant::{Tenant, TenantError, TenantState};
use crate::tenant_manager::{AlreadyExists, AttachError, TenantManager};

type Manager = Arc<TenantManager>;

fn parse<T: std::str::FromStr>(value: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e: T::Err| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

/// Map an error to its status: client mistakes are 4xx, the rest 500.
fn api_error(e: anyhow::Error) -> ApiError {
    let status = if e.downcast_ref::<AlreadyExists>().is_some() {
        StatusCode::CONFLICT
    } else if let Some(a) = e.downcast_ref::<AttachError>() {
        match a {
            AttachError::NoRemoteStorage(_) => StatusCode::BAD_REQUEST,
            AttachError::NotFound(_) => StatusCode::NOT_FOUND,
            AttachError::AlreadyExists(_) => StatusCode::CONFLICT,
            AttachError::Broken { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AttachError::NotUploaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AttachError::GenerationTooLow { .. } => StatusCode::CONFLICT,
            AttachError::BadGeneration(_) => StatusCode::BAD_REQUEST,
        }
    } else if e.downcast_ref::<StaleGeneration>().is_some() {
        StatusCode::CONFLICT
    } else if let Some(t) = e.downcast_ref::<TenantError>() {
        match t {
            TenantError::NotFound(_) => StatusCode::NOT_FOUND,
            TenantError::AlreadyExists(_) => StatusCode::CONFLICT,
            TenantError::HasChildren { .. } => StatusCode::CONFLICT,
            TenantError::Branch(_) => StatusCode::BAD_REQUEST,
            TenantError::Broken { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    } else if e.downcast_ref::<BranchError>().is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    ApiError::new(status, format!("{e:#}"))
}

fn tenant(manager: &TenantManager, tenant_id: &str) -> Result<Arc<Tenant>, ApiError> {
    let tenant_id: TenantId = parse(tenant_id)?;
    manager.get(tenant_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("tenant {tenant_id} not found"),
        )
    })
}

/// The API's OpenAPI document, served at `GET /v1/openapi.json`.
pub const OPENAPI_SPEC: &str = include_str!("../../docs/openapi/pageserver.json");

pub fn routes(manager: Manager) -> Router {
    api_routes().with_state(manager)
}

/// The routes, listed: a unit test compares them with [`OPENAPI_SPEC`].
fn api_routes() -> ApiRoutes<Manager> {
    const TIMELINE: &str = "/v1/tenant/{tenant_id}/timeline/{timeline_id}";
    ApiRoutes::new(OPENAPI_SPEC)
        .get("/v1/tenant", list_tenants)
        .post("/v1/tenant", create_tenant)
        .get("/v1/tenant/{tenant_id}", tenant_info)
        .post("/v1/tenant/{tenant_id}/attach", attach_tenant)
        .post("/v1/tenant/{tenant_id}/detach", detach_tenant)
        .get("/v1/tenant/{tenant_id}/timeline", list_timelines)
        .post("/v1/tenant/{tenant_id}/timeline", create_timeline)
        .get(TIMELINE, timeline_info_handler)
        .delete(TIMELINE, delete_timeline)
        .post(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}/checkpoint",
            checkpoint_timeline,
        )
}

fn tenant_info_of(m: &TenantManager, t: &Tenant) -> TenantInfo {
    let remote = m.remote_tenant(t.tenant_id);
    TenantInfo {
        tenant_id: t.tenant_id,
        state: match t.state() {
            TenantState::Active => "active".to_owned(),
            TenantState::Broken(reason) => format!("broken: {reason}"),
        },
        timelines: t.timelines().len(),
        generation: remote.as_ref().map(|r| r.generation().0),
        newer_generation: remote.and_then(|r| r.newer_generation()).map(|g| g.0),
    }
}

async fn list_tenants(State(m): State<Manager>) -> Json<Vec<TenantInfo>> {
    Json(m.list().iter().map(|t| tenant_info_of(&m, t)).collect())
}

/// No body (no content type) creates a tenant with a new id.
async fn create_tenant(
    State(m): State<Manager>,
    body: Result<Option<Json<TenantCreateRequest>>, JsonRejection>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    let request = body?.map(|Json(b)| b).unwrap_or_default();
    let tenant_id = request.tenant_id.unwrap_or_else(TenantId::generate);
    let tenant = m.create_tenant(tenant_id).await.map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(tenant_info_of(&m, &tenant))))
}

async fn tenant_info(
    State(m): State<Manager>,
    Path(tenant_id): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    let tenant = tenant(&m, &tenant_id)?;
    Ok(Json(tenant_info_of(&m, &tenant)))
}

/// What the API says of a timeline; `with_logical_size` computes the
/// logical size (a read of every relation's size, so not O(1)).
pub fn timeline_info(timeline: &Timeline, with_logical_size: bool) -> anyhow::Result<TimelineInfo> {
    let last = timeline.last_record();
    let physical_size = timeline
        .dir()
        .map(|dir| {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0)
        })
        .unwrap_or(0);
    Ok(TimelineInfo {
        tenant_id: timeline.tenant_id,
        timeline_id: timeline.timeline_id,
        ancestor_timeline_id: timeline.ancestor().map(|a| a.timeline.timeline_id),
        ancestor_lsn: timeline.ancestor().map(|a| a.lsn),
        last_record_lsn: last.last,
        prev_record_lsn: last.prev,
        shutdown_checkpoint_lsn: timeline.get_shutdown_checkpoint(last.last)?,
        disk_consistent_lsn: timeline.disk_consistent_lsn(),
        remote_consistent_lsn: timeline.remote_consistent_lsn(),
        gc_cutoff_lsn: timeline.gc_horizon(),
        logical_size: if with_logical_size {
            Some(timeline.logical_size(last.last)?)
        } else {
            None
        },
        physical_size,
        pg_version: timeline.pg_version.as_str().parse::<u32>().unwrap_or(0) * 10000,
        ingest_paused: timeline.ingest_paused(),
    })
}

async fn list_timelines(
    State(m): State<Manager>,
    Path(tenant_id): Path<String>,
) -> Result<Json<Vec<TimelineInfo>>, ApiError> {
    let tenant = tenant(&m, &tenant_id)?;
    let infos = tokio::task::block_in_place(|| {
        tenant
            .timelines()
            .iter()
            .map(|t| timeline_info(t, false))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .map_err(api_error)?;
    Ok(Json(infos))
}

async fn create_timeline(
    State(m): State<Manager>,
    Path(tenant_id): Path<String>,
    body: Result<Json<TimelineCreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<TimelineInfo>), ApiError> {
    let tenant = tenant(&m, &tenant_id)?;
    let Json(request) = body?;
    if let Some(v) = request.pg_version {
        if v != 15 && v / 10000 != 15 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("PostgreSQL {v} is not supported: only 15"),
            ));
        }
    }
    let timeline_id = request.new_timeline_id.unwrap_or_else(TimelineId::generate);
    if tenant.get_timeline(timeline_id).is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("timeline {timeline_id} already exists"),
        ));
    }
    let timeline = tokio::task::block_in_place(|| match request.ancestor_timeline_id {
        None => m.bootstrap_timeline(&tenant, timeline_id),
        Some(ancestor) => {
            m.branch_timeline(&tenant, ancestor, timeline_id, request.ancestor_start_lsn)
        }
    })
    .map_err(api_error)?;
    let info =
        tokio::task::block_in_place(|| timeline_info(&timeline, false)).map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// The detail's query: `?logical_size=false` leaves the logical size out
/// (it reads every relation's size; computes poll the detail at start).
#[derive(Debug, Default, serde::Deserialize)]
struct DetailQuery {
    logical_size: Option<bool>,
}

async fn timeline_info_handler(
    State(m): State<Manager>,
    Path((tenant_id, timeline_id)): Path<(String, String)>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Json<TimelineInfo>, ApiError> {
    let Query(query) = query?;
    let tenant = tenant(&m, &tenant_id)?;
    let timeline_id: TimelineId = parse(&timeline_id)?;
    let timeline = tenant
        .get_timeline(timeline_id)
        .map_err(|e| api_error(e.into()))?;
    let with_logical_size = query.logical_size.unwrap_or(true);
    Ok(Json(
        tokio::task::block_in_place(|| timeline_info(&timeline, with_logical_size))
            .map_err(api_error)?,
    ))
}

/// `POST .../checkpoint`: flush what is in memory and write image layers
/// of every key partition with deltas above its newest image, now (what
/// the background loop does over time). For tests and benchmarks.
async fn checkpoint_timeline(
    State(m): State<Manager>,
    Path((tenant_id, timeline_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = tenant(&m, &tenant_id)?;
    let timeline_id: TimelineId = parse(&timeline_id)?;
    let timeline = tenant
        .get_timeline(timeline_id)
        .map_err(|e| api_error(e.into()))?;
    let images = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        if timeline.last_record_lsn() > timeline.disk_consistent_lsn() {
            timeline.flush()?;
        }
        Ok(timeline.compact(1)?)
    })
    .map_err(api_error)?;
    Ok(Json(serde_json::json!({
        "disk_consistent_lsn": timeline.disk_consistent_lsn(),
        "image_layers_written": images.len(),
    })))
}

async fn delete_timeline(
    State(m): State<Manager>,
    Path((tenant_id, timeline_id)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = tenant(&m, &tenant_id)?;
    let timeline_id: TimelineId = parse(&timeline_id)?;
    m.delete_timeline(&tenant, timeline_id)
        .await
        .map_err(api_error)?;
    Ok(Json(serde_json::json!({ "deleted": true })))
}

/// `POST /v1/tenant/{t}/attach` (optional body `{"generation": N}`):
/// download the tenant from remote storage.
async fn attach_tenant(
    State(m): State<Manager>,
    Path(tenant_id): Path<String>,
    body: Result<Option<Json<TenantAttachRequest>>, JsonRejection>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    let tenant_id: TenantId = parse(&tenant_id)?;
    let request = body?.map(|Json(b)| b).unwrap_or_default();
    let generation = request.generation.map(Generation);
    let tenant = m
        .attach_tenant(tenant_id, generation)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(tenant_info_of(&m, &tenant))))
}

#[derive(serde::Deserialize, Default)]
struct DetachQuery {
    /// Seconds to wait for uploads to catch up (default 60).
    timeout_seconds: Option<f64>,
}

/// The longest a detach may be asked to wait for uploads.
const MAX_DETACH_TIMEOUT_SECONDS: f64 = 24.0 * 3600.0;

/// `timeout_seconds` of a detach (default 60): a number of seconds from 0
/// to a day; anything else (negative, NaN, infinite, huge) is a 400.
fn detach_timeout(seconds: Option<f64>) -> Result<std::time::Duration, ApiError> {
    let seconds = seconds.unwrap_or(60.0);
    if !(0.0..=MAX_DETACH_TIMEOUT_SECONDS).contains(&seconds) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "timeout_seconds must be between 0 and {MAX_DETACH_TIMEOUT_SECONDS}, not {seconds}"
            ),
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// `POST /v1/tenant/{t}/detach`: flush, wait until remote storage holds
/// everything, then remove the local copy.
async fn detach_tenant(
    State(m): State<Manager>,
    Path(tenant_id): Path<String>,
    query: Result<Query<DetachQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let timeout = detach_timeout(query?.timeout_seconds)?;
    // An unknown tenant is a 404 here: the manager's error for it is a
    // plain one, which would be a 500.
    let tenant_id = tenant(&m, &tenant_id)?.tenant_id;
    m.detach_tenant(tenant_id, timeout)
        .await
        .map_err(api_error)?;
    Ok(Json(serde_json::json!({ "detached": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let problems = daemon_utils::openapi_mismatches(OPENAPI_SPEC, api_routes().listed());
        assert!(
            problems.is_empty(),
            "docs/openapi/pageserver.json: {problems:#?}"
        );
    }

    #[test]
    fn detach_timeouts_outside_a_day_are_refused_not_a_panic() {
        assert_eq!(
            detach_timeout(None).unwrap(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            detach_timeout(Some(0.5)).unwrap(),
            std::time::Duration::from_millis(500)
        );
        for bad in [
            1e20,
            f64::INFINITY,
            f64::NAN,
            -1.0,
            MAX_DETACH_TIMEOUT_SECONDS + 1.0,
        ] {
            let err = detach_timeout(Some(bad)).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
