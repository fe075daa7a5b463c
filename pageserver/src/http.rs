//! The pageserver's HTTP API (`/v1/...`), beside `/v1/status` and `/metrics`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use daemon_utils::ApiError;
use pageserver_api::models::{
    TenantCreateRequest, TenantInfo, TimelineCreateRequest, TimelineInfo,
};
use utils::{TenantId, TimelineId};

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
        }
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

pub fn routes(manager: Manager) -> Router {
    Router::new()
        .route("/v1/tenant", get(list_tenants).post(create_tenant))
        .route("/v1/tenant/{tenant_id}", get(tenant_info))
        .route(
            "/v1/tenant/{tenant_id}/attach",
            axum::routing::post(attach_tenant),
        )
        .route(
            "/v1/tenant/{tenant_id}/detach",
            axum::routing::post(detach_tenant),
        )
        .route(
            "/v1/tenant/{tenant_id}/timeline",
            get(list_timelines).post(create_timeline),
        )
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}",
            get(timeline_info_handler).delete(delete_timeline),
        )
        .route(
            "/v1/tenant/{tenant_id}/timeline/{timeline_id}/checkpoint",
            axum::routing::post(checkpoint_timeline),
        )
        .with_state(manager)
}

fn tenant_info_of(t: &Tenant) -> TenantInfo {
    TenantInfo {
        tenant_id: t.tenant_id,
        state: match t.state() {
            TenantState::Active => "active".to_owned(),
            TenantState::Broken(reason) => format!("broken: {reason}"),
        },
        timelines: t.timelines().len(),
    }
}

async fn list_tenants(State(m): State<Manager>) -> Json<Vec<TenantInfo>> {
    Json(m.list().iter().map(|t| tenant_info_of(t)).collect())
}

async fn create_tenant(
    State(m): State<Manager>,
    body: Option<Json<TenantCreateRequest>>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let tenant_id = request.tenant_id.unwrap_or_else(TenantId::generate);
    let tenant = tokio::task::block_in_place(|| m.create_tenant(tenant_id)).map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(tenant_info_of(&tenant))))
}

async fn tenant_info(
    State(m): State<Manager>,
    Path(tenant_id): Path<String>,
) -> Result<Json<TenantInfo>, ApiError> {
    let tenant = tenant(&m, &tenant_id)?;
    Ok(Json(tenant_info_of(&tenant)))
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
    body: Result<Json<TimelineCreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<TimelineInfo>), ApiError> {
    let tenant = tenant(&m, &tenant_id)?;
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
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
    Query(query): Query<DetailQuery>,
) -> Result<Json<TimelineInfo>, ApiError> {
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
    tokio::task::block_in_place(|| m.delete_timeline(&tenant, timeline_id)).map_err(api_error)?;
    if let Some(remote) = m.remote() {
        crate::remote_timeline::delete_timeline(remote, tenant.tenant_id, timeline_id)
            .await
            .map_err(|e| api_error(e.context("deleting the timeline from remote storage")))?;
    }
    Ok(Json(serde_json::json!({ "deleted": true })))
}

/// `POST /v1/tenant/{t}/attach`: download the tenant from remote storage.
async fn attach_tenant(
    State(m): State<Manager>,
    Path(tenant_id): Path<String>,
) -> Result<(StatusCode, Json<TenantInfo>), ApiError> {
    let tenant_id: TenantId = parse(&tenant_id)?;
    let tenant = m.attach_tenant(tenant_id).await.map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(tenant_info_of(&tenant))))
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
    query: axum::extract::Query<DetachQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant_id: TenantId = parse(&tenant_id)?;
    let timeout = detach_timeout(query.timeout_seconds)?;
    m.detach_tenant(tenant_id, timeout)
        .await
        .map_err(api_error)?;
    Ok(Json(serde_json::json!({ "detached": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

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
