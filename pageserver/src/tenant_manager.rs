//! The tenants of this pageserver: loaded from `<workdir>/tenants` at start,
//! created and removed through the HTTP API, each timeline with its WAL
//! receiver when a storage broker is configured and its uploader when
//! remote storage is.
//!
//! Each tenant has a generation (docs/remote-storage.md), kept in
//! `<tenant dir>/generation`: 1 for a tenant created here, the attach's
//! for an attached one. Its uploaders share a [`RemoteTenant`] that says
//! whether a newer generation has been attached elsewhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context};
use postgres_format::PgMajorVersion;
use remote_storage::GenericRemoteStorage;
use storage_broker::BrokerClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};
use utils::{Lsn, TenantId, TimelineId};

use crate::import_datadir::{end_of_wal, import_datadir};
use crate::page_service::TimelineLookup;
use crate::remote_timeline::{self, Generation, RemoteTenant, RemoteTimeline};
use crate::tenant::timeline::{RecordLsn, Timeline, TimelineConf};
use crate::tenant::{Tenant, TenantError, TenantState};

/// How PostgreSQL's `initdb` is run to bootstrap timelines.
#[derive(Clone, Debug)]
pub struct InitdbConf {
    /// Directory of the PostgreSQL 15 binaries.
    pub pg_bin_dir: PathBuf,
    /// OS user to run initdb as when the pageserver runs as root.
    pub pg_os_user: String,
}

/// The most an attach may raise a tenant's generation by.
const MAX_GENERATION_STEP: u32 = 1 << 20;

pub struct TenantManager {
    workdir: PathBuf,
    conf: TimelineConf,
    initdb: InitdbConf,
    broker: Option<BrokerClient>,
    remote: Option<GenericRemoteStorage>,
    tenants: RwLock<HashMap<TenantId, Arc<Tenant>>>,
    /// Each tenant's generation, and whether it is stale.
    generations: RwLock<HashMap<TenantId, Arc<RemoteTenant>>>,
    /// The WAL receiver and uploader of each timeline.
    tasks: Mutex<HashMap<(TenantId, TimelineId), TimelineTasks>>,
    /// Tenants being attached.
    attaching: Mutex<std::collections::HashSet<TenantId>>,
    cancel: CancellationToken,
}

/// A timeline's tasks: cancelled together; the uploader is waited for
/// when the timeline's remote objects are about to change (deletion,
/// detach), so that none of its uploads lands afterwards.
struct TimelineTasks {
    cancel: CancellationToken,
    uploader: Option<JoinHandle<()>>,
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
    #[error(
        "tenant {tenant_id}: generation {requested} is not above the highest in remote storage ({highest}); attach with a higher generation, or without one to take the next"
    )]
    GenerationTooLow {
        tenant_id: TenantId,
        requested: u32,
        highest: u32,
    },
    #[error("invalid generation: {0}")]
    BadGeneration(String),
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
        let mut generations = HashMap::new();
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
            match load_generation(&entry.path()) {
                Ok(generation) => {
                    generations.insert(tenant_id, RemoteTenant::new(tenant_id, generation));
                }
                Err(e) => tenant.set_broken(format!("{e:#}")),
            }
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
            generations: RwLock::new(generations),
            tasks: Mutex::new(HashMap::new()),
            attaching: Mutex::new(Default::default()),
            cancel,
        });
        for tenant in manager.list() {
            if tenant.state() != TenantState::Active {
                continue;
            }
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

    /// The tenant's generation and staleness; `None` for a tenant that is
    /// not here (or broken before its generation was read).
    pub fn remote_tenant(&self, tenant_id: TenantId) -> Option<Arc<RemoteTenant>> {
        self.generations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant_id)
            .cloned()
    }

    /// A new tenant, generation 1. Refused (409) if remote storage already
    /// has a tenant of this id: that one is to be attached, and a second
    /// tenant at its generation would overwrite its objects.
    pub async fn create_tenant(&self, tenant_id: TenantId) -> anyhow::Result<Arc<Tenant>> {
        if self.get(tenant_id).is_some() {
            bail!(AlreadyExists(format!("tenant {tenant_id} already exists")));
        }
        if let Some(remote) = &self.remote {
            let listing = remote_timeline::list_tenant(remote, tenant_id)
                .await
                .context("looking for the tenant in remote storage")?;
            if !listing.is_empty() {
                bail!(AlreadyExists(format!(
                    "tenant {tenant_id} exists in remote storage (generation {}): attach it instead",
                    listing.highest_generation().unwrap_or_default().0
                )));
            }
        }
        tokio::task::block_in_place(|| {
            let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
            if tenants.contains_key(&tenant_id) {
                bail!(AlreadyExists(format!("tenant {tenant_id} already exists")));
            }
            let tenant = Tenant::create(&self.workdir, tenant_id, self.conf.clone())?;
            remote_timeline::write_local_generation(tenant.dir(), Generation::FIRST)?;
            self.generations
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant_id, RemoteTenant::new(tenant_id, Generation::FIRST));
            tenants.insert(tenant_id, tenant.clone());
            info!(%tenant_id, "created tenant");
            Ok(tenant)
        })
    }

    /// A new empty root timeline whose history begins at `start`, with its
    /// tasks: for callers that write its records themselves (tests).
    pub fn create_root_timeline(
        &self,
        tenant: &Arc<Tenant>,
        timeline_id: TimelineId,
        pg_version: PgMajorVersion,
        start: RecordLsn,
    ) -> anyhow::Result<Arc<Timeline>> {
        let timeline = tenant.create_root_timeline(timeline_id, pg_version, start)?;
        self.start_timeline_tasks(tenant, &timeline);
        Ok(timeline)
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

    /// Delete a timeline here and in remote storage. Its uploader is
    /// stopped and waited for first, so that no upload of it lands once
    /// the deletion has begun; then, remotely, the tombstone; then the
    /// local directory; then the rest of the remote objects
    /// ([`remote_timeline::finish_timeline_deletion`]). If that last part
    /// fails, the error says so and a retry (or the next attach) finishes
    /// it. Refused with a child timeline, and when this pageserver's
    /// generation of the tenant is stale (nothing is deleted then).
    pub async fn delete_timeline(
        &self,
        tenant: &Arc<Tenant>,
        timeline_id: TimelineId,
    ) -> anyhow::Result<()> {
        let tenant_id = tenant.tenant_id;
        let children: Vec<TimelineId> = tenant
            .children(timeline_id)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        if !children.is_empty() {
            return Err(TenantError::HasChildren {
                timeline_id,
                children,
            }
            .into());
        }
        let Some(remote) = self.remote.clone() else {
            self.stop_timeline_tasks(tenant_id, timeline_id).await;
            tokio::task::block_in_place(|| tenant.delete_timeline(timeline_id))?;
            return Ok(());
        };
        let remote_tenant = self
            .remote_tenant(tenant_id)
            .with_context(|| format!("tenant {tenant_id} has no generation"))?;
        if let Some(stale) = remote_tenant.stale_error() {
            return Err(stale.into());
        }
        if let Err(e) = tenant.get_timeline(timeline_id) {
            // A deletion that failed after the local directory went:
            // finish the remote part.
            let not_found = matches!(e, TenantError::NotFound(_));
            if not_found
                && remote
                    .download(&remote_timeline::tombstone_path(tenant_id, timeline_id))
                    .await
                    .is_ok()
            {
                remote_tenant.check_current(&remote).await?;
                remote_timeline::finish_timeline_deletion(&remote, tenant_id, timeline_id).await?;
                info!(%tenant_id, %timeline_id, "finished deleting the timeline from remote storage");
                return Ok(());
            }
            return Err(e.into());
        }
        self.stop_timeline_tasks(tenant_id, timeline_id).await;
        if let Err(e) =
            remote_timeline::mark_timeline_deleted(&remote, &remote_tenant, timeline_id).await
        {
            // Nothing was deleted: the timeline goes on.
            self.restart_timeline_tasks(tenant, timeline_id);
            return Err(e.context("marking the timeline deleted in remote storage"));
        }
        if let Err(e) = tokio::task::block_in_place(|| tenant.delete_timeline(timeline_id)) {
            // E.g. a child timeline appeared meanwhile: take the tombstone
            // back, so that attach does not skip a timeline that stays.
            let tombstone = remote_timeline::tombstone_path(tenant_id, timeline_id);
            if let Err(e) = remote.delete(&tombstone).await {
                warn!(%tenant_id, %timeline_id, "removing {tombstone} after a failed deletion: {e}");
            }
            self.restart_timeline_tasks(tenant, timeline_id);
            return Err(e.into());
        }
        remote_timeline::finish_timeline_deletion(&remote, tenant_id, timeline_id)
            .await
            .context(
                "the timeline is deleted here and marked deleted in remote storage, but removing its remote objects failed: retry the deletion to finish it (an attach finishes it too)",
            )?;
        info!(%tenant_id, %timeline_id, "deleted the timeline, locally and from remote storage");
        Ok(())
    }

    fn restart_timeline_tasks(&self, tenant: &Arc<Tenant>, timeline_id: TimelineId) {
        if let Ok(timeline) = tenant.get_timeline(timeline_id) {
            self.start_timeline_tasks(tenant, &timeline);
        }
    }

    /// The remote storage, if configured.
    pub fn remote(&self) -> Option<&GenericRemoteStorage> {
        self.remote.as_ref()
    }

    /// Start the timeline's WAL receiver (with a broker) and uploader (with
    /// remote storage).
    fn start_timeline_tasks(&self, tenant: &Arc<Tenant>, timeline: &Arc<Timeline>) {
        let (tenant_id, timeline_id) = (timeline.tenant_id, timeline.timeline_id);
        let cancel = self.cancel.child_token();
        if let Some(broker) = &self.broker {
            let span = info_span!("walreceiver", %tenant_id, %timeline_id);
            tokio::spawn(
                crate::walreceiver::run(timeline.clone(), broker.clone(), cancel.clone())
                    .instrument(span),
            );
        }
        let uploader = match (&self.remote, self.remote_tenant(tenant_id)) {
            (Some(remote), Some(remote_tenant)) => {
                let span = info_span!("uploader", %tenant_id, %timeline_id);
                Some(tokio::spawn(
                    remote_timeline::run_uploader(
                        tenant.clone(),
                        timeline.clone(),
                        remote.clone(),
                        remote_tenant,
                        cancel.clone(),
                    )
                    .instrument(span),
                ))
            }
            (Some(_), None) => {
                warn!(%tenant_id, %timeline_id, "the tenant has no generation: not uploading");
                None
            }
            (None, _) => None,
        };
        let previous = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((tenant_id, timeline_id), TimelineTasks { cancel, uploader });
        if let Some(previous) = previous {
            previous.cancel.cancel();
        }
    }

    /// Cancel the timeline's tasks and wait for its uploader to end (it
    /// finishes the remote operation under way, if any).
    async fn stop_timeline_tasks(&self, tenant_id: TenantId, timeline_id: TimelineId) {
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tenant_id, timeline_id));
        let Some(tasks) = tasks else {
            return;
        };
        tasks.cancel.cancel();
        if let Some(uploader) = tasks.uploader {
            if let Err(e) = uploader.await {
                warn!(%tenant_id, %timeline_id, "the uploader task failed: {e}");
            }
        }
    }

    /// Attach a tenant from remote storage with `generation` (default: the
    /// highest in remote storage + 1; one not above it is refused): write
    /// the generation's marker, then download every timeline's newest
    /// index and its layers into a temporary directory, rename it into
    /// place, load the tenant and start its timelines. A timeline with a
    /// tombstone is skipped, and its deletion finished. A missing or
    /// malformed index leaves the tenant registered as broken (nothing is
    /// written locally).
    pub async fn attach_tenant(
        &self,
        tenant_id: TenantId,
        generation: Option<Generation>,
    ) -> anyhow::Result<Arc<Tenant>> {
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
        let result = self
            .attach_inner(&remote, tenant_id, generation, &final_dir)
            .await;
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
        requested: Option<Generation>,
        final_dir: &Path,
    ) -> anyhow::Result<Arc<Tenant>> {
        let started = std::time::Instant::now();
        let before = remote_timeline::list_tenant(remote, tenant_id).await?;
        if before.is_empty() {
            return Err(AttachError::NotFound(tenant_id).into());
        }
        let highest = before.highest_generation().unwrap_or_default();
        let generation = match requested {
            Some(Generation::LEGACY) => {
                return Err(AttachError::BadGeneration("generations start at 1".into()).into())
            }
            Some(g) if g <= highest => {
                return Err(AttachError::GenerationTooLow {
                    tenant_id,
                    requested: g.0,
                    highest: highest.0,
                }
                .into())
            }
            // One call may not use up the generation space: a tenant
            // attached at the last generation could never be attached again.
            Some(g) if g.0 - highest.0 > MAX_GENERATION_STEP => {
                return Err(AttachError::BadGeneration(format!(
                    "generation {} is more than {MAX_GENERATION_STEP} above the highest in remote storage ({})",
                    g.0, highest.0
                ))
                .into())
            }
            Some(g) => g,
            None => highest.next().ok_or_else(|| {
                AttachError::BadGeneration(format!("none is left above {}", highest.0))
            })?,
        };
        // The marker first: an uploader of an older generation deletes
        // only after checking for it, so the indexes read below name only
        // layers that stay.
        remote_timeline::write_marker(remote, tenant_id, generation).await?;
        let listing = remote_timeline::list_tenant(remote, tenant_id).await?;
        if let Some(newer) = listing.markers.last().filter(|g| **g > generation) {
            return Err(AttachError::GenerationTooLow {
                tenant_id,
                requested: generation.0,
                highest: newer.0,
            }
            .into());
        }
        let timelines = remote_timeline::load_timelines(remote, tenant_id, &listing).await?;
        let mut indexes = Vec::new();
        let mut deleted = Vec::new();
        for (timeline_id, timeline) in timelines {
            match timeline {
                RemoteTimeline::Live { index, .. } => indexes.push((timeline_id, index)),
                RemoteTimeline::Deleted => deleted.push(timeline_id),
                RemoteTimeline::Broken(e) => {
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
        for timeline_id in deleted {
            // Best effort: a deletion cut short; the next attach retries.
            match remote_timeline::finish_timeline_deletion(remote, tenant_id, timeline_id).await {
                Ok(()) => {
                    info!(%tenant_id, %timeline_id, "finished deleting a timeline found with a tombstone")
                }
                Err(e) => {
                    warn!(%tenant_id, %timeline_id, "skipping a timeline being deleted; finishing its deletion failed: {e:#}")
                }
            }
        }
        let tmp = final_dir.with_extension("___attaching");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        let download = async {
            let timelines_dir = tmp.join("timelines");
            tokio::fs::create_dir_all(&timelines_dir)
                .await
                .with_context(|| format!("creating {}", timelines_dir.display()))?;
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
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || {
                remote_timeline::write_local_generation(&tmp, generation)
            })
            .await??;
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
        let remote_tenant = RemoteTenant::new(tenant_id, generation);
        remote_tenant.set_marker_written();
        self.generations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant_id, remote_tenant);
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
        info!(%tenant_id, generation = generation.0, "attached {} timelines, {bytes} bytes of layers, in {:?}", indexes.len(), started.elapsed());
        Ok(tenant)
    }

    /// Detach a tenant: flush its timelines, wait (up to `timeout`) until
    /// remote storage holds everything flushed, stop its tasks (waiting
    /// for its uploaders) and remove its local directory. A tenant whose
    /// generation is stale is not waited for: its uploads stopped for good
    /// and the newer generation owns the remote copy. A broken tenant is
    /// only forgotten: its local files (if any) stay.
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
        let stale = self
            .remote_tenant(tenant_id)
            .and_then(|r| r.newer_generation());
        if let Some(newer) = stale {
            info!(%tenant_id, "generation {} has been attached elsewhere: detaching without waiting for uploads", newer.0);
        }
        if active && stale.is_none() {
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
            self.stop_timeline_tasks(tenant_id, timeline.timeline_id)
                .await;
        }
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tenant_id);
        self.generations
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

/// The generation in a tenant directory; a directory without the file (a
/// tenant from before generations) takes generation 1 and gets the file.
fn load_generation(dir: &Path) -> anyhow::Result<Generation> {
    if let Some(generation) = remote_timeline::read_local_generation(dir)? {
        return Ok(generation);
    }
    info!(
        "{} has no {} file (a tenant from before generations): it takes generation 1",
        dir.display(),
        remote_timeline::GENERATION_FILE_NAME
    );
    remote_timeline::write_local_generation(dir, Generation::FIRST)?;
    Ok(Generation::FIRST)
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
