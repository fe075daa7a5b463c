//! The tenants of this pageserver: loaded from `<workdir>/tenants` at start,
//! created and removed through the HTTP API, each timeline with its WAL
//! receiver when a storage broker is configured.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context};
use postgres_format::PgMajorVersion;
use remote_storage::GenericRemoteStorage;
use storage_broker::BrokerClient;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};
use utils::{Lsn, TenantId, TimelineId};

use crate::import_datadir::{end_of_wal, import_datadir};
use crate::page_service::TimelineLookup;
use crate::remote_timeline;
use crate::tenant::timeline::{RecordLsn, Timeline, TimelineConf};
use crate::tenant::{Tenant, TenantState};

/// How PostgreSQL's `initdb` is run to bootstrap timelines.
#[derive(Clone, Debug)]
pub struct InitdbConf {
    /// Directory of the PostgreSQL 15 binaries.
    pub pg_bin_dir: PathBuf,
    /// OS user to run initdb as when the pageserver runs as root.
    pub pg_os_user: String,
}

pub struct TenantManager {
    workdir: PathBuf,
    conf: TimelineConf,
    initdb: InitdbConf,
    broker: Option<BrokerClient>,
    remote: Option<GenericRemoteStorage>,
    tenants: RwLock<HashMap<TenantId, Arc<Tenant>>>,
    /// The WAL receiver and uploader of each timeline.
    receivers: Mutex<HashMap<(TenantId, TimelineId), CancellationToken>>,
    /// Tenants being attached.
    attaching: Mutex<std::collections::HashSet<TenantId>>,
    cancel: CancellationToken,
}

/// Why attaching or detaching a tenant failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("no remote storage is configured: {0}")]
    NoRemoteStorage(&'static str),
    #[error("tenant {0} not found in remote storage")]
    NotFound(TenantId),
    #[error("tenant {0} already exists on this pageserver")]
    AlreadyExists(TenantId),
    #[error("tenant {tenant_id} is broken: {reason}")]
    Broken { tenant_id: TenantId, reason: String },
    #[error("tenant {tenant_id}: remote storage is behind ({detail}); try again")]
    NotUploaded { tenant_id: TenantId, detail: String },
}

impl TenantManager {
    /// Load every tenant under `<workdir>/tenants`.
    pub fn load(
        workdir: &Path,
        conf: TimelineConf,
        initdb: InitdbConf,
        broker: Option<BrokerClient>,
        remote: Option<GenericRemoteStorage>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<TenantManager>> {
        let tenants_dir = workdir.join("tenants");
        std::fs::create_dir_all(&tenants_dir)
            .with_context(|| format!("creating {}", tenants_dir.display()))?;
        let mut tenants = HashMap::new();
        for entry in std::fs::read_dir(&tenants_dir)? {
            let entry = entry?;
            let Some(tenant_id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<TenantId>().ok())
            else {
                continue;
            };
            let tenant = Tenant::load(workdir, tenant_id, conf.clone());
            match tenant.state() {
                TenantState::Active => {
                    info!(%tenant_id, "loaded tenant with {} timelines", tenant.timelines().len())
                }
                TenantState::Broken(reason) => warn!(%tenant_id, "tenant is broken: {reason}"),
            }
            tenants.insert(tenant_id, tenant);
        }
        let manager = Arc::new(TenantManager {
            workdir: workdir.to_owned(),
            conf,
            initdb,
            broker,
            remote,
            tenants: RwLock::new(tenants),
            receivers: Mutex::new(HashMap::new()),
            attaching: Mutex::new(Default::default()),
            cancel,
        });
        for tenant in manager.list() {
            for timeline in tenant.timelines() {
                manager.start_timeline_tasks(&tenant, &timeline);
            }
        }
        Ok(manager)
    }

    pub fn list(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<_> = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|t| t.tenant_id);
        all
    }

    pub fn get(&self, tenant_id: TenantId) -> Option<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant_id)
            .cloned()
    }

    pub fn create_tenant(&self, tenant_id: TenantId) -> anyhow::Result<Arc<Tenant>> {
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if tenants.contains_key(&tenant_id) {
            bail!(AlreadyExists(format!("tenant {tenant_id} already exists")));
        }
        let tenant = Tenant::create(&self.workdir, tenant_id, self.conf.clone())?;
        tenants.insert(tenant_id, tenant.clone());
        info!(%tenant_id, "created tenant");
        Ok(tenant)
    }

    /// A new timeline from a fresh `initdb`, imported at its end of WAL.
    pub fn bootstrap_timeline(
        &self,
        tenant: &Arc<Tenant>,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Arc<Timeline>> {
        let scratch = InitdbDir::create(&self.initdb)?;
        let pgdata = scratch.path.join("pgdata");
        let mut initdb = self.initdb.command("initdb");
        initdb.args([
            "-D",
            &pgdata.to_string_lossy(),
            "-U",
            "cloud_admin",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
        ]);
        run(&mut initdb).context("running initdb")?;
        let (start, end) = end_of_wal(&pgdata)?;
        let timeline = tenant.create_root_timeline(
            timeline_id,
            PgMajorVersion::V15,
            RecordLsn {
                last: end,
                prev: start,
            },
        )?;
        import_datadir(&timeline, &pgdata, end, start)
            .context("importing initdb's data directory")?;
        timeline.flush().context("writing the imported data")?;
        info!(tenant_id = %tenant.tenant_id, %timeline_id, lsn = %end, "bootstrapped timeline");
        self.start_timeline_tasks(tenant, &timeline);
        Ok(timeline)
    }

    /// A branch of `ancestor` at `lsn` (default: its last record).
    pub fn branch_timeline(
        &self,
        tenant: &Arc<Tenant>,
        ancestor_id: TimelineId,
        timeline_id: TimelineId,
        lsn: Option<Lsn>,
    ) -> anyhow::Result<Arc<Timeline>> {
        let ancestor = tenant.get_timeline(ancestor_id)?;
        let last = ancestor.last_record();
        let at = match lsn {
            None => last,
            Some(lsn) if lsn == last.last => last,
            // No record index: the branch's first WAL is its compute's
            // fabricated checkpoint, whose prev-link is not checked.
            Some(lsn) => RecordLsn {
                last: lsn,
                prev: Lsn::INVALID,
            },
        };
        let timeline = tenant.branch_timeline(ancestor_id, timeline_id, at)?;
        info!(tenant_id = %tenant.tenant_id, %timeline_id, %ancestor_id, lsn = %at.last, "branched timeline");
        self.start_timeline_tasks(tenant, &timeline);
        Ok(timeline)
    }

    pub fn delete_timeline(&self, tenant: &Tenant, timeline_id: TimelineId) -> anyhow::Result<()> {
        if !tenant.children(timeline_id).is_empty() {
            // Refused below; keep its tasks.
            tenant.delete_timeline(timeline_id)?;
        }
        self.stop_timeline_tasks(tenant.tenant_id, timeline_id);
        tenant.delete_timeline(timeline_id)?;
        Ok(())
    }

    /// The remote storage, if configured.
    pub fn remote(&self) -> Option<&GenericRemoteStorage> {
        self.remote.as_ref()
    }

    /// Start the timeline's WAL receiver (with a broker) and uploader (with
    /// remote storage).
    fn start_timeline_tasks(&self, tenant: &Arc<Tenant>, timeline: &Arc<Timeline>) {
        let cancel = self.cancel.child_token();
        self.receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((timeline.tenant_id, timeline.timeline_id), cancel.clone());
        if let Some(broker) = &self.broker {
            let span = info_span!("walreceiver", tenant_id = %timeline.tenant_id, timeline_id = %timeline.timeline_id);
            tokio::spawn(
                crate::walreceiver::run(timeline.clone(), broker.clone(), cancel.clone())
                    .instrument(span),
            );
        }
        if let Some(remote) = &self.remote {
            let span = info_span!("uploader", tenant_id = %timeline.tenant_id, timeline_id = %timeline.timeline_id);
            tokio::spawn(
                remote_timeline::run_uploader(
                    tenant.clone(),
                    timeline.clone(),
                    remote.clone(),
                    cancel,
                )
                .instrument(span),
            );
        }
    }

    fn stop_timeline_tasks(&self, tenant_id: TenantId, timeline_id: TimelineId) {
        if let Some(cancel) = self
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tenant_id, timeline_id))
        {
            cancel.cancel();
        }
    }

    /// Attach a tenant from remote storage: download every timeline's
    /// index and layers into a temporary directory, rename it into place,
    /// load the tenant and start its timelines. A missing or malformed
    /// index leaves the tenant registered as broken (nothing is written
    /// locally).
    pub async fn attach_tenant(&self, tenant_id: TenantId) -> anyhow::Result<Arc<Tenant>> {
        let remote = self.remote.clone().ok_or(AttachError::NoRemoteStorage(
            "attach downloads the tenant from it",
        ))?;
        let final_dir = crate::tenant::tenant_dir(&self.workdir, tenant_id);
        {
            let mut attaching = self.attaching.lock().unwrap_or_else(|p| p.into_inner());
            if self.get(tenant_id).is_some() || final_dir.exists() || !attaching.insert(tenant_id) {
                return Err(AttachError::AlreadyExists(tenant_id).into());
            }
        }
        let result = self.attach_inner(&remote, tenant_id, &final_dir).await;
        self.attaching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tenant_id);
        result
    }

    async fn attach_inner(
        &self,
        remote: &GenericRemoteStorage,
        tenant_id: TenantId,
        final_dir: &Path,
    ) -> anyhow::Result<Arc<Tenant>> {
        let started = std::time::Instant::now();
        let timelines = remote_timeline::list_timelines(remote, tenant_id).await?;
        if timelines.is_empty() {
            return Err(AttachError::NotFound(tenant_id).into());
        }
        let mut indexes = Vec::new();
        for (timeline_id, index) in timelines {
            match index {
                Ok(index) => indexes.push((timeline_id, index)),
                Err(e) => {
                    let reason = format!("timeline {timeline_id}: {e:#}");
                    warn!(%tenant_id, "attach failed, tenant is broken: {reason}");
                    let tenant =
                        Tenant::broken(&self.workdir, tenant_id, self.conf.clone(), reason.clone());
                    self.tenants
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(tenant_id, tenant);
                    return Err(AttachError::Broken { tenant_id, reason }.into());
                }
            }
        }
        let tmp = final_dir.with_extension("___attaching");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        let download = async {
            let mut bytes = 0;
            for (timeline_id, index) in &indexes {
                let dir = tmp.join("timelines").join(timeline_id.to_string());
                tokio::fs::create_dir_all(&dir)
                    .await
                    .with_context(|| format!("creating {}", dir.display()))?;
                bytes += remote_timeline::download_timeline(
                    remote,
                    tenant_id,
                    *timeline_id,
                    index,
                    &dir,
                )
                .await
                .with_context(|| format!("downloading timeline {timeline_id}"))?;
            }
            anyhow::Ok(bytes)
        };
        let bytes = match download.await {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        crate::metrics::get().remote_bytes_downloaded.inc_by(bytes);
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            std::fs::rename(&tmp, final_dir)
                .with_context(|| format!("renaming {} into place", tmp.display()))?;
            crate::tenant::metadata::fsync_dir(final_dir.parent().unwrap_or(&self.workdir))
                .context("fsync of the tenants directory")?;
            Ok(())
        })?;
        let tenant = tokio::task::block_in_place(|| {
            Tenant::load(&self.workdir, tenant_id, self.conf.clone())
        });
        if let TenantState::Broken(reason) = tenant.state() {
            return Err(AttachError::Broken { tenant_id, reason }.into());
        }
        for timeline in tenant.timelines() {
            if let Some((_, index)) = indexes.iter().find(|(id, _)| *id == timeline.timeline_id) {
                timeline.set_remote_consistent_lsn(index.metadata.disk_consistent.last);
            }
        }
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant_id, tenant.clone());
        for timeline in tenant.timelines() {
            self.start_timeline_tasks(&tenant, &timeline);
        }
        info!(%tenant_id, "attached {} timelines, {bytes} bytes of layers, in {:?}", indexes.len(), started.elapsed());
        Ok(tenant)
    }

    /// Detach a tenant: flush its timelines, wait (up to `timeout`) until
    /// remote storage holds everything flushed, stop its tasks and remove
    /// its local directory. A broken tenant is only forgotten: its local
    /// files (if any) stay.
    pub async fn detach_tenant(
        &self,
        tenant_id: TenantId,
        timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        if self.remote.is_none() {
            return Err(
                AttachError::NoRemoteStorage("detaching would lose the tenant's data").into(),
            );
        }
        let tenant = self
            .get(tenant_id)
            .with_context(|| format!("tenant {tenant_id} not found"))?;
        let active = tenant.state() == TenantState::Active;
        if active {
            let timelines = tenant.timelines();
            tokio::task::block_in_place(|| -> anyhow::Result<()> {
                for timeline in &timelines {
                    timeline.flush()?;
                }
                Ok(())
            })?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let behind: Vec<String> = timelines
                    .iter()
                    .filter(|t| t.remote_consistent_lsn() < t.disk_consistent_lsn())
                    .map(|t| {
                        format!(
                            "timeline {} uploaded up to {}, flushed up to {}",
                            t.timeline_id,
                            t.remote_consistent_lsn(),
                            t.disk_consistent_lsn()
                        )
                    })
                    .collect();
                if behind.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(AttachError::NotUploaded {
                        tenant_id,
                        detail: behind.join("; "),
                    }
                    .into());
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        for timeline in tenant.timelines() {
            self.stop_timeline_tasks(tenant_id, timeline.timeline_id);
        }
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tenant_id);
        if active {
            let dir = tenant.dir().to_owned();
            let gone = dir.with_extension("___detached");
            tokio::task::block_in_place(|| -> anyhow::Result<()> {
                std::fs::rename(&dir, &gone)
                    .with_context(|| format!("renaming {}", dir.display()))?;
                std::fs::remove_dir_all(&gone)
                    .with_context(|| format!("removing {}", gone.display()))?;
                Ok(())
            })?;
        }
        info!(%tenant_id, "detached");
        Ok(())
    }

    /// Write what is in memory to layer files (at shutdown).
    pub fn flush_all(&self) {
        for tenant in self.list() {
            for timeline in tenant.timelines() {
                if let Err(e) = timeline.flush() {
                    warn!(tenant_id = %tenant.tenant_id, timeline_id = %timeline.timeline_id, "flushing at shutdown: {e:#}");
                }
            }
        }
    }
}

impl TimelineLookup for TenantManager {
    fn get_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Arc<Timeline>> {
        let tenant = self
            .get(tenant_id)
            .with_context(|| format!("tenant {tenant_id} not found"))?;
        Ok(tenant.get_timeline(timeline_id)?)
    }
}

/// "Already exists", for the HTTP layer to map to 409.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyExists(pub String);

impl InitdbConf {
    fn as_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    /// A PostgreSQL program, run as the PostgreSQL OS user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.pg_bin_dir.join(program);
        if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", &self.pg_os_user, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A scratch directory for initdb that the PostgreSQL OS user can write,
/// removed when dropped.
struct InitdbDir {
    path: PathBuf,
}

impl InitdbDir {
    fn create(conf: &InitdbConf) -> anyhow::Result<InitdbDir> {
        let mut mktemp = if InitdbConf::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", &conf.pg_os_user, "--", "mktemp"]);
            c
        } else {
            Command::new("mktemp")
        };
        mktemp.args(["-d", "-t", "pageserver-initdb-XXXXXX"]);
        let path = run(&mut mktemp)
            .context("creating a scratch directory for initdb (as the PostgreSQL OS user)")?;
        Ok(InitdbDir {
            path: PathBuf::from(path.trim()),
        })
    }
}

impl Drop for InitdbDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            warn!("removing {}: {e}", self.path.display());
        }
    }
}
