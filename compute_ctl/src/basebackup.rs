//! The storage side of a start: where the WAL ends, waiting for the
//! pageserver, and the base backup that becomes PGDATA.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use compute_api::ComputeSpec;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;
use utils::Lsn;
use walproposer::driver::WalproposerConfig;

/// PostgreSQL's WAL segment size (initdb's default, what the pageserver
/// fabricates).
pub const WAL_SEG_SIZE: u32 = 16 * 1024 * 1024;

/// The walproposer's configuration for this compute.
pub fn walproposer_config(spec: &ComputeSpec) -> WalproposerConfig {
    WalproposerConfig {
        safekeepers: spec.safekeepers.clone(),
        tenant_id: spec.tenant_id,
        timeline_id: spec.timeline_id,
        pg_version: spec.pg_version * 10000,
        system_id: 0,
        wal_seg_size: WAL_SEG_SIZE,
        limits: Default::default(),
        max_pageserver_lag: walproposer::backpressure::max_lag_from_setting(
            spec.max_pageserver_lag_bytes,
        ),
        auth_token: spec.storage_auth_token.clone(),
    }
}

/// The pageserver's HTTP API.
pub struct PageserverHttp {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

#[derive(serde::Deserialize)]
struct TimelineDetail {
    last_record_lsn: Lsn,
    #[serde(default)]
    shutdown_checkpoint_lsn: Option<Lsn>,
}

impl PageserverHttp {
    pub fn new(spec: &ComputeSpec) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("creating the HTTP client")?;
        let addr = spec.pageserver_http.trim_end_matches('/');
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        Ok(PageserverHttp {
            client,
            base: format!(
                "{base}/v1/tenant/{}/timeline/{}",
                spec.tenant_id, spec.timeline_id
            ),
            token: spec.storage_auth_token.clone(),
        })
    }

    /// The last LSN the pageserver has ingested on the timeline.
    pub async fn last_record_lsn(&self) -> anyhow::Result<Lsn> {
        Ok(self.detail().await?.last_record_lsn)
    }

    /// Where the latest shutdown checkpoint record the pageserver has
    /// ingested begins: where a replica starts.
    pub async fn shutdown_checkpoint_lsn(&self) -> anyhow::Result<Option<Lsn>> {
        Ok(self.detail().await?.shutdown_checkpoint_lsn)
    }

    async fn detail(&self) -> anyhow::Result<TimelineDetail> {
        let mut request = self.client.get(format!("{}?logical_size=false", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("asking the pageserver at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("the pageserver answered {status} for {}: {body}", self.base);
        }
        response
            .json()
            .await
            .context("reading the pageserver's timeline detail")
    }

    /// Waits until the pageserver has ingested WAL up to `lsn`.
    pub async fn wait_for_lsn(
        &self,
        lsn: Lsn,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.last_record_lsn().await?;
            if have >= lsn {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the pageserver has WAL up to {have} only, {timeout:?} after asking for {lsn}"
                );
            }
            tokio::select! {
                _ = cancel.cancelled() => bail!("cancelled"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
}

/// Fetches the base backup at `lsn` (`basebackup <tenant> <timeline>
/// <lsn> [lazy]`, a tar in CopyOut) into `tar_path`. Returns its size.
pub async fn fetch(
    spec: &ComputeSpec,
    lsn: Lsn,
    lazy: bool,
    tar_path: &Path,
) -> anyhow::Result<u64> {
    let (addr, user) = spec.pageserver_pg_addr()?;
    let mut client = pq_proto::connect(
        addr.as_str(),
        &[
            ("user", user.as_str()),
            ("database", "postgres"),
            ("application_name", "compute_ctl"),
        ],
        spec.storage_auth_token.as_deref(),
    )
    .await
    .with_context(|| format!("connecting to the pageserver at {addr}"))?;
    let mut query = format!("basebackup {} {} {lsn}", spec.tenant_id, spec.timeline_id);
    if lazy {
        query.push_str(" lazy");
    }
    let mut file = std::fs::File::create(tar_path)
        .with_context(|| format!("creating {}", tar_path.display()))?;
    let mut size = 0u64;
    let mut copy = client
        .copy_out(&query)
        .await
        .with_context(|| format!("{query} on the pageserver"))?;
    while let Some(chunk) = copy.recv().await.context("reading the base backup")? {
        file.write_all(&chunk)
            .with_context(|| format!("writing {}", tar_path.display()))?;
        size += chunk.len() as u64;
    }
    copy.finish().await.context("ending the base backup")?;
    file.sync_all()
        .with_context(|| format!("writing {}", tar_path.display()))?;
    let _ = client.close().await;
    info!(%lsn, size, lazy, "fetched the base backup");
    Ok(size)
}

/// Unpacks the tar at `tar_path` into the empty directory `pgdata`.
pub fn unpack(tar_path: &Path, pgdata: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(tar_path).with_context(|| format!("opening {}", tar_path.display()))?;
    let mut archive = tar::Archive::new(file);
    archive.set_overwrite(false);
    archive
        .unpack(pgdata)
        .with_context(|| format!("unpacking the base backup into {}", pgdata.display()))?;
    Ok(())
}
