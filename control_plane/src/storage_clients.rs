//! The pageserver's and safekeepers' HTTP APIs, as neon_local uses them.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pageserver_api::models::{
    TenantCreateRequest, TenantInfo, TimelineCreateRequest, TimelineInfo,
};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use safekeeper_api::models::TimelineStatus;
use serde::de::DeserializeOwned;
use utils::{Lsn, TenantId, TimelineId};

use crate::local_env::LocalEnv;

fn client(timeout: Duration) -> anyhow::Result<Client> {
    Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .context("creating the HTTP client")
}

/// Sends `request`; a refused connection says which daemon is not running.
fn send(request: RequestBuilder, daemon: &str, base: &str) -> anyhow::Result<Response> {
    request.send().map_err(|e| {
        if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach the {daemon} at {base}: is it running? (start it with `neon_local start`)"
            )
        } else {
            anyhow::anyhow!("asking the {daemon} at {base}: {e}")
        }
    })
}

/// The body of a successful answer, or an error quoting the daemon's.
fn parse<T: DeserializeOwned>(response: Response, daemon: &str) -> anyhow::Result<T> {
    let status = response.status();
    if !status.is_success() {
        let text = response.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("the {daemon} refused: {message} ({status})");
    }
    response
        .json()
        .with_context(|| format!("reading the {daemon}'s answer"))
}

pub struct PageserverClient {
    client: Client,
    base: String,
    /// An admin token (the repository's key signs it).
    token: String,
}

impl PageserverClient {
    pub fn new(env: &LocalEnv) -> anyhow::Result<Self> {
        // Bootstrapping a timeline runs initdb.
        Self::with_timeout(env, Duration::from_secs(300))
    }

    /// A client whose requests give up after `timeout`: for what only
    /// shows information, so that a pageserver that does not answer does
    /// not hold the command up.
    pub fn with_timeout(env: &LocalEnv, timeout: Duration) -> anyhow::Result<Self> {
        Ok(PageserverClient {
            client: client(timeout)?,
            base: format!("http://{}", env.pageserver.listen_http_addr),
            token: env.auth()?.admin(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = send(
            self.client
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.token),
            "pageserver",
            &self.base,
        )?;
        parse(response, "pageserver")
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let response = send(
            self.client
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(body),
            "pageserver",
            &self.base,
        )?;
        parse(response, "pageserver")
    }

    /// Deletes a timeline (the pageserver refuses one with children).
    pub fn delete_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<()> {
        let response = send(
            self.client
                .delete(format!(
                    "{}/v1/tenant/{tenant_id}/timeline/{timeline_id}",
                    self.base
                ))
                .bearer_auth(&self.token),
            "pageserver",
            &self.base,
        )?;
        parse::<serde_json::Value>(response, "pageserver").map(drop)
    }

    pub fn create_tenant(&self, tenant_id: Option<TenantId>) -> anyhow::Result<TenantId> {
        let info: TenantInfo = self.post("/v1/tenant", &TenantCreateRequest { tenant_id })?;
        Ok(info.tenant_id)
    }

    pub fn tenants(&self) -> anyhow::Result<Vec<TenantInfo>> {
        self.get("/v1/tenant")
    }

    /// Attach a tenant from the pageserver's remote storage.
    pub fn attach_tenant(&self, tenant_id: TenantId) -> anyhow::Result<TenantInfo> {
        self.post(
            &format!("/v1/tenant/{tenant_id}/attach"),
            &serde_json::json!({}),
        )
    }

    pub fn create_timeline(
        &self,
        tenant_id: TenantId,
        request: &TimelineCreateRequest,
    ) -> anyhow::Result<TimelineInfo> {
        self.post(&format!("/v1/tenant/{tenant_id}/timeline"), request)
    }

    pub fn timelines(&self, tenant_id: TenantId) -> anyhow::Result<Vec<TimelineInfo>> {
        self.get(&format!("/v1/tenant/{tenant_id}/timeline"))
    }

    pub fn timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<TimelineInfo> {
        self.get(&format!("/v1/tenant/{tenant_id}/timeline/{timeline_id}"))
    }

    /// Waits until the timeline has WAL up to `lsn`; false on timeout.
    pub fn wait_for_lsn(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        lsn: Lsn,
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.timeline(tenant_id, timeline_id)?.last_record_lsn >= lsn {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub struct SafekeeperClient {
    client: Client,
    base: String,
    /// An admin token (the repository's key signs it).
    token: String,
}

impl SafekeeperClient {
    pub fn new(env: &LocalEnv, http_addr: &str) -> anyhow::Result<Self> {
        Ok(SafekeeperClient {
            client: client(Duration::from_secs(30))?,
            base: format!("http://{http_addr}"),
            token: env.auth()?.admin(),
        })
    }

    /// The timeline's status, `None` if the safekeeper does not have it.
    pub fn timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Option<TimelineStatus>> {
        let url = format!("{}/v1/tenant/{tenant_id}/timeline/{timeline_id}", self.base);
        let response = send(
            self.client.get(url).bearer_auth(&self.token),
            "safekeeper",
            &self.base,
        )?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        parse(response, "safekeeper").map(Some)
    }

    /// Deletes the timeline and its WAL; nothing to do if it has none.
    pub fn delete_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<()> {
        let url = format!("{}/v1/tenant/{tenant_id}/timeline/{timeline_id}", self.base);
        let response = send(
            self.client.delete(url).bearer_auth(&self.token),
            "safekeeper",
            &self.base,
        )?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        parse::<serde_json::Value>(response, "safekeeper").map(drop)
    }

    /// Creates the timeline unless it exists.
    pub fn ensure_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
        pg_version: u32,
    ) -> anyhow::Result<()> {
        if self.timeline(tenant_id, timeline_id)?.is_some() {
            return Ok(());
        }
        let url = format!("{}/v1/tenant/{tenant_id}/timeline", self.base);
        let body = serde_json::json!({
            "timeline_id": timeline_id,
            "pg_version": pg_version * 10000,
        });
        let response = send(
            self.client.post(url).bearer_auth(&self.token).json(&body),
            "safekeeper",
            &self.base,
        )?;
        if response.status() == StatusCode::CONFLICT {
            return Ok(());
        }
        parse::<serde_json::Value>(response, "safekeeper").map(drop)
    }
}

/// The LSN a quorum of the safekeepers has flushed on the timeline: every
/// commit acknowledged to a client is below it. `None` if no safekeeper
/// has the timeline.
pub fn quorum_flush_lsn(
    env: &LocalEnv,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> anyhow::Result<Option<Lsn>> {
    let mut flushed = Vec::new();
    for sk in &env.safekeepers {
        let client = SafekeeperClient::new(env, &sk.listen_http_addr)?;
        // A safekeeper that is down counts as having nothing.
        if let Ok(Some(status)) = client.timeline(tenant_id, timeline_id) {
            flushed.push(status.flush_lsn);
        }
    }
    if flushed.is_empty() {
        return Ok(None);
    }
    flushed.sort_unstable_by(|a, b| b.cmp(a));
    let quorum = env.safekeepers.len() / 2 + 1;
    Ok(Some(
        flushed.get(quorum - 1).copied().unwrap_or(Lsn::INVALID),
    ))
}
