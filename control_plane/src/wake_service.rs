//! The control-plane service: `neon_local control-plane run`, a daemon
//! that `neon_local start` runs beside the storage daemons. It serves the
//! wake API the proxy calls and scales idle computes to zero.
//!
//! * `POST /v1/wake_compute` with `{"endpoint": name}`, `{"branch": name}`
//!   or `{}` (the default tenant's branch `main`) answers, once the compute
//!   accepts connections, `{"endpoint": name, "address": "host:port"}`. A
//!   branch gets its read-write endpoint, created on first use (named after
//!   the branch, or `<branch>-proxy` when that name is taken) with the
//!   default suspend timeout. A stopped or suspended endpoint is started,
//!   as `neon_local endpoint start` does. Errors are `{"error": message}`:
//!   404 for an unknown endpoint or branch, 500 for a failed start.
//! * Concurrent wakes of one endpoint wait for one start: a per-endpoint
//!   read-write gate, where checking that a compute runs takes the read
//!   side and starting or suspending it the write side.
//! * `GET /v1/computes/{name}/spec`: the spec of endpoint `name`, as
//!   `endpoint start` would give its compute_ctl (for compute_ctl
//!   `--control-plane-uri`), after making its timeline on the safekeepers
//!   as `endpoint start` does; 404 for an unknown endpoint.
//! * Every second, each running endpoint with a suspend timeout is asked
//!   for its last activity (compute_ctl's `/status`); one idle for its
//!   timeout (and not woken for as long) is stopped and marked
//!   `suspended`.
//!
//! Endpoint changes take the same file locks as the CLI ([`crate::lock`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use auth::{Access, Claims, JwtVerifier, Scope};
use axum::body::Bytes;
use axum::extract::{Path as AxumPath, State as AxumState};
use axum::http::StatusCode;
use axum::Extension;
use axum::{Json, Router};
use compute_api::{ComputeSpec, ComputeState, ComputeStatus};
use control_plane_api::{WakeRequest, WakeResponse, COMPUTE_SPEC_ROUTE, WAKE_COMPUTE_PATH};
use daemon_utils::{
    bind_listener, ApiError, ApiRoutes, AuthPolicy, CancellationToken, HttpServer, RouteRequest,
    ServiceInfo,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::RwLock;
use tracing::{info, warn};

use crate::daemon_process::StopMode;
use crate::endpoint::{CreateOptions, Endpoint};
use crate::local_env::{LocalEnv, Timeout};
use crate::state::{check_name, State};
use crate::tenants::DEFAULT_BRANCH;

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("control_plane");

/// How often idle endpoints are looked for.
const SUSPEND_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a wake waits for a compute to start.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What `control-plane run` is given (no config file: the repository's).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConf {
    pub repo_dir: PathBuf,
    /// Overrides `control_plane.default_suspend_timeout`.
    pub suspend_timeout: Option<Timeout>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counts {
    wakes: u64,
    starts: u64,
    suspends: u64,
}

#[derive(Default)]
struct Stats {
    total: Counts,
    endpoints: BTreeMap<String, Counts>,
}

struct Service {
    repo: PathBuf,
    env: LocalEnv,
    default_suspend_timeout: Timeout,
    http: reqwest::Client,
    /// Presented to compute_ctl's API.
    compute_token: String,
    gates: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    last_wake: Mutex<HashMap<String, Instant>>,
    stats: Mutex<Stats>,
}

fn not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, message)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    fn gate(&self, name: &str) -> Arc<RwLock<()>> {
        lock(&self.gates)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn touch(&self, name: &str) {
        lock(&self.last_wake).insert(name.to_owned(), Instant::now());
    }

    fn count(&self, name: &str, f: impl Fn(&mut Counts)) {
        let mut stats = lock(&self.stats);
        f(&mut stats.total);
        f(stats.endpoints.entry(name.to_owned()).or_default());
    }

    fn status_fields(&self) -> Map<String, Value> {
        let stats = lock(&self.stats);
        let mut doc = Map::new();
        doc.insert("wakes".into(), stats.total.wakes.into());
        doc.insert("starts".into(), stats.total.starts.into());
        doc.insert("suspends".into(), stats.total.suspends.into());
        doc.insert(
            "endpoints".into(),
            serde_json::to_value(&stats.endpoints).unwrap_or_default(),
        );
        doc.insert(
            "default_suspend_timeout".into(),
            self.default_suspend_timeout.to_string().into(),
        );
        doc
    }

    /// The endpoint a wake request is for; creates a branch's endpoint if
    /// it has none.
    fn resolve(&self, req: &WakeRequest) -> Result<String, ApiError> {
        match (&req.endpoint, &req.branch) {
            (Some(_), Some(_)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "name an endpoint or a branch, not both",
            )),
            (Some(name), None) => {
                if check_name("endpoint", name).is_err()
                    || !Endpoint::dir_of(&self.repo, name)
                        .join("endpoint.toml")
                        .is_file()
                {
                    return Err(not_found(format!("unknown endpoint '{name}'")));
                }
                Ok(name.clone())
            }
            (None, branch) => self.endpoint_for_branch(branch.as_deref().unwrap_or(DEFAULT_BRANCH)),
        }
    }

    fn endpoint_for_branch(&self, branch: &str) -> Result<String, ApiError> {
        let state = State::load(&self.repo)?;
        let Some(tenant_id) = state.default_tenant_id else {
            return Err(not_found(
                "there is no default tenant: create one with `neon_local tenant create --set-default`"
                    .into(),
            ));
        };
        let Some(timeline_id) = state.timeline(tenant_id, branch) else {
            let names: Vec<&str> = state
                .branches
                .iter()
                .filter(|b| b.tenant_id == tenant_id)
                .map(|b| b.name.as_str())
                .collect();
            return Err(not_found(format!(
                "unknown branch '{branch}' (the branches are: {})",
                names.join(", ")
            )));
        };
        let find = || -> anyhow::Result<Option<String>> {
            let mut primaries: Vec<Endpoint> = Endpoint::list(&self.repo)?
                .into_iter()
                .filter(|e| {
                    e.conf.is_primary()
                        && e.conf.tenant_id == tenant_id
                        && e.conf.timeline_id == timeline_id
                })
                .collect();
            // A running one first, then the one named after the branch.
            let mut running = Vec::new();
            for e in &primaries {
                if e.running_pid(&self.env)?.is_some() {
                    running.push(e.conf.name.clone());
                }
            }
            if let Some(name) = running.into_iter().next() {
                return Ok(Some(name));
            }
            primaries.sort_by_key(|e| e.conf.name != branch);
            Ok(primaries.into_iter().next().map(|e| e.conf.name))
        };
        if let Some(name) = find()? {
            return Ok(name);
        }
        let creation = Endpoint::lock_creation(&self.repo)?;
        if let Some(name) = find()? {
            return Ok(name);
        }
        let taken = |name: &str| Endpoint::dir_of(&self.repo, name).exists();
        let name = std::iter::once(branch.to_owned())
            .chain(std::iter::once(format!("{branch}-proxy")))
            .chain((2..).map(|i| format!("{branch}-proxy-{i}")))
            .find(|n| !taken(n))
            .unwrap_or_default();
        let opts = CreateOptions {
            name: name.clone(),
            tenant_id: Some(tenant_id),
            branch_name: branch.to_owned(),
            pg_port: None,
            http_port: None,
            lsn: None,
            pg_version: 15,
            suspend_timeout: Some(self.default_suspend_timeout),
            max_pageserver_lag: None,
            lazy: None,
            replica: false,
        };
        Endpoint::create_locked(&self.repo, &self.env, &state, &opts, &creation)
            .with_context(|| format!("creating an endpoint for branch '{branch}'"))?;
        info!(
            "created endpoint '{name}' for branch '{branch}' (suspend timeout {})",
            self.default_suspend_timeout
        );
        Ok(name)
    }

    /// compute_ctl's state, if it runs and answers.
    async fn compute_state(&self, ep: &Endpoint) -> Option<ComputeState> {
        ep.running_pid(&self.env).ok()??;
        let url = format!("http://{}/status", ep.http_addr());
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.compute_token)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Where the endpoint's postgres listens, if it runs.
    async fn running_address(&self, name: &str) -> Result<Option<String>, ApiError> {
        let ep = Endpoint::load(&self.repo, name)
            .map_err(|_| not_found(format!("unknown endpoint '{name}'")))?;
        Ok(match self.compute_state(&ep).await {
            Some(state) if state.status == ComputeStatus::Running => {
                Some(format!("127.0.0.1:{}", ep.conf.pg_port))
            }
            _ => None,
        })
    }

    async fn wake(self: &Arc<Self>, req: WakeRequest) -> Result<WakeResponse, ApiError> {
        let svc = self.clone();
        let name = tokio::task::spawn_blocking(move || svc.resolve(&req))
            .await
            .map_err(|e| anyhow::anyhow!("resolving the endpoint: {e}"))??;
        self.count(&name, |c| c.wakes += 1);
        let gate = self.gate(&name);
        {
            let _read = gate.read().await;
            self.touch(&name);
            if let Some(address) = self.running_address(&name).await? {
                return Ok(WakeResponse {
                    endpoint: name,
                    address,
                });
            }
        }
        let _write = gate.write().await;
        self.touch(&name);
        if let Some(address) = self.running_address(&name).await? {
            return Ok(WakeResponse {
                endpoint: name,
                address,
            });
        }
        info!("starting endpoint '{name}' for a connection");
        let started = Instant::now();
        let svc = self.clone();
        let n = name.clone();
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let ep = Endpoint::load(&svc.repo, &n)?;
            let _lock = ep.lock()?;
            if ep.running_pid(&svc.env)?.is_some() {
                // Started from the CLI meanwhile, or broken.
                if ep.status(&svc.env) == "running" {
                    return Ok(false);
                }
                ep.stop_locked(&svc.env, StopMode::Fast)?;
            }
            if let Some(mut child) = ep.start_locked(&svc.repo, &svc.env, START_TIMEOUT)? {
                // Reap compute_ctl when it exits, so it leaves no zombie.
                std::thread::spawn(move || child.wait());
            }
            Ok(true)
        })
        .await
        .map_err(|e| anyhow::anyhow!("starting the endpoint: {e}"))?;
        match result {
            Ok(true) => {
                self.count(&name, |c| c.starts += 1);
                info!("endpoint '{name}' started in {:?}", started.elapsed());
            }
            Ok(false) => {}
            Err(e) => {
                warn!("starting endpoint '{name}' failed: {e:#}");
                return Err(anyhow::anyhow!("starting endpoint '{name}': {e:#}").into());
            }
        }
        self.touch(&name);
        match self.running_address(&name).await? {
            Some(address) => Ok(WakeResponse {
                endpoint: name,
                address,
            }),
            None => Err(anyhow::anyhow!("endpoint '{name}' started but does not run").into()),
        }
    }

    /// How long the endpoint has had no client and no wake, if it runs.
    async fn idle_for(&self, ep: &Endpoint) -> Option<Duration> {
        let state = self.compute_state(ep).await?;
        if state.status != ComputeStatus::Running {
            return None;
        }
        let active = state
            .last_active
            .or(state.start_time)
            .as_deref()
            .and_then(compute_api::time::parse_rfc3339)?;
        let idle = SystemTime::now()
            .duration_since(active)
            .unwrap_or(Duration::ZERO);
        let since_wake = lock(&self.last_wake)
            .get(&ep.conf.name)
            .map_or(Duration::MAX, Instant::elapsed);
        Some(idle.min(since_wake))
    }

    async fn suspend_idle(self: &Arc<Self>) -> anyhow::Result<()> {
        for ep in Endpoint::list(&self.repo)? {
            let Some(timeout) = ep.suspend_timeout() else {
                continue;
            };
            match self.idle_for(&ep).await {
                Some(idle) if idle >= timeout => {}
                _ => continue,
            }
            let name = ep.conf.name.clone();
            let gate = self.gate(&name);
            let _write = gate.write().await;
            // A wake may have come in meanwhile.
            let Some(idle) = self.idle_for(&ep).await.filter(|&i| i >= timeout) else {
                continue;
            };
            let env = self.env.clone();
            let suspended = tokio::task::spawn_blocking(move || ep.suspend(&env, || true))
                .await
                .context("suspending")??;
            if suspended {
                self.count(&name, |c| c.suspends += 1);
                info!(
                    "suspended endpoint '{name}': no client for {}s (suspend timeout {})",
                    idle.as_secs(),
                    Timeout(timeout)
                );
            }
        }
        Ok(())
    }
}

async fn wake_handler(
    AxumState(svc): AxumState<Arc<Service>>,
    body: Bytes,
) -> Result<Json<WakeResponse>, ApiError> {
    let req: WakeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        WakeRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid wake request: {e}"),
            )
        })?
    };
    svc.wake(req).await.map(Json)
}

async fn spec_handler(
    AxumState(svc): AxumState<Arc<Service>>,
    AxumPath(compute_id): AxumPath<String>,
    claims: Option<Extension<Claims>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<ComputeSpec>, ApiError> {
    if check_name("endpoint", &compute_id).is_err() {
        return Err(not_found(format!(
            "there is no endpoint named {compute_id:?}"
        )));
    }
    let endpoint =
        Endpoint::load(&svc.repo, &compute_id).map_err(|e| not_found(format!("{e:#}")))?;
    // A tenant token opens only its tenant's computes (the policy let
    // admin, compute and tenant tokens through).
    if let Some(Extension(claims)) = &claims {
        claims
            .check(&Access::TenantOrScopes(
                endpoint.conf.tenant_id,
                &[Scope::Compute],
            ))
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.to_string()))?;
    }
    if endpoint.conf.is_primary() {
        // The storage a primary's spec names must be ready, as `endpoint
        // start` makes it.
        let (ep, env) = (endpoint.clone(), svc.env.clone());
        tokio::task::spawn_blocking(move || ep.ensure_safekeeper_timelines(&env))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))?
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    }
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    info!(
        endpoint = compute_id,
        traceparent, "serving the compute spec"
    );
    let spec = endpoint.spec(&svc.env).map_err(ApiError::from)?;
    Ok(Json(spec))
}

/// The API's OpenAPI document, served at `GET /v1/openapi.json`.
pub const OPENAPI_SPEC: &str = include_str!("../../docs/openapi/control_plane.json");

/// The routes, listed: a unit test compares them with [`OPENAPI_SPEC`].
fn api_routes() -> ApiRoutes<Arc<Service>> {
    ApiRoutes::new(OPENAPI_SPEC)
        .post(WAKE_COMPUTE_PATH, wake_handler)
        .get(COMPUTE_SPEC_ROUTE, spec_handler)
}

/// Runs the service until `cancel` fires.
pub async fn run(conf: ServiceConf, cancel: CancellationToken) -> anyhow::Result<()> {
    let env = LocalEnv::load(&conf.repo_dir)?;
    let default_suspend_timeout = conf
        .suspend_timeout
        .unwrap_or(env.control_plane.default_suspend_timeout);
    let listen = env.control_plane.listen_http_addr.clone();
    let compute_token = env.auth()?.scope(Scope::Compute);
    let svc = Arc::new(Service {
        repo: conf.repo_dir,
        env,
        default_suspend_timeout,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .context("creating the HTTP client")?,
        compute_token,
        gates: Mutex::default(),
        last_wake: Mutex::default(),
        stats: Mutex::default(),
    });
    let status = svc.clone();
    let verifier = Arc::new(JwtVerifier::from_file(
        &svc.repo.join(crate::local_auth::PUBLIC_KEY_FILE),
    )?);
    let policy: AuthPolicy = Arc::new(|request: &RouteRequest| match request.route {
        Some(WAKE_COMPUTE_PATH) => Access::Scopes(&[Scope::Proxy]),
        Some(COMPUTE_SPEC_ROUTE) => Access::Scopes(&[Scope::Compute, Scope::Tenant]),
        _ => Access::Admin,
    });
    let http = HttpServer::new(SERVICE)?
        .with_status(move || status.status_fields())
        .with_auth(verifier, policy);
    let listener = bind_listener("HTTP", &listen).await?;
    info!(
        "control plane for {}: wake API on http://{listen}, default suspend timeout {default_suspend_timeout}",
        svc.repo.display()
    );
    let routes: Router = api_routes().with_state(svc.clone());
    let suspender = {
        let (svc, cancel) = (svc.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SUSPEND_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = svc.suspend_idle().await {
                    warn!("looking for idle endpoints: {e:#}");
                }
            }
        })
    };
    http.serve(listener, routes, cancel).await?;
    suspender.await.context("the suspend task")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let problems = daemon_utils::openapi_mismatches(OPENAPI_SPEC, api_routes().listed());
        assert!(
            problems.is_empty(),
            "docs/openapi/control_plane.json: {problems:#?}"
        );
    }
}
