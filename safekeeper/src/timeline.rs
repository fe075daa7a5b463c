//! Timelines on this safekeeper: `<datadir>/<tenant_id>/<timeline_id>/`
//! holding the control file and the WAL segments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use anyhow::Context;
use postgres_format::PgMajorVersion;
use remote_storage::GenericRemoteStorage;
use safekeeper_api::models::{TimelineCreateRequest, TimelineStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use utils::{Lsn, NodeId, TenantId, TimelineId};

use crate::acceptor::{Acceptor, PersistentState, ServerInfo};
use crate::state_file::{FileControlStore, CONTROL_FILE_NAME};
use crate::wal_storage::PhysicalWal;

pub type TimelineAcceptor = Acceptor<FileControlStore, PhysicalWal>;

/// What WAL readers wait for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub term: u64,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
}

/// What a pageserver reported about the WAL it received (in memory; the
/// remote-consistent LSN that local WAL removal relies on is persisted in
/// the control file first).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReaderFeedback {
    pub last_received_lsn: Lsn,
    /// The last record a pageserver reported having ingested (its status
    /// updates' write LSN): what the walproposer's backpressure follows.
    pub pageserver_last_record_lsn: Lsn,
    pub disk_consistent_lsn: Lsn,
    pub remote_consistent_lsn: Lsn,
}

pub struct Timeline {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub dir: PathBuf,
    acceptor: Mutex<TimelineAcceptor>,
    progress: watch::Sender<Progress>,
    pub walproposers: AtomicUsize,
    pub walsenders: AtomicUsize,
    pub feedback: Mutex<ReaderFeedback>,
    segment_size: usize,
    /// Where WAL is offloaded, if anywhere.
    pub remote: Option<GenericRemoteStorage>,
    /// Stops the timeline's background tasks (on deletion or shutdown).
    pub cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("timeline {0}/{1} already exists on this safekeeper")]
    AlreadyExists(TenantId, TimelineId),
    #[error("timeline {0}/{1} not found on this safekeeper")]
    NotFound(TenantId, TimelineId),
    #[error("invalid timeline request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn pg_major(pg_version: u32) -> anyhow::Result<PgMajorVersion> {
    (pg_version / 10000)
        .to_string()
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
}

impl Timeline {
    fn load(
        dir: &Path,
        node_id: NodeId,
        remote: Option<GenericRemoteStorage>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Timeline> {
        let control = FileControlStore::new(dir);
        let state = control.load()?;
        let version = pg_major(state.server.pg_version)?;
        let segment_size = state.server.wal_seg_size as usize;
        let boundary = state.commit_lsn.max(state.local_start_lsn);
        let wal = PhysicalWal::open(dir, segment_size, version, boundary)
            .with_context(|| format!("opening the WAL in {}", dir.display()))?;
        Ok(Self::new(
            dir,
            Acceptor::new(state, node_id, control, wal),
            remote,
            cancel,
        ))
    }

    fn new(
        dir: &Path,
        acceptor: TimelineAcceptor,
        remote: Option<GenericRemoteStorage>,
        cancel: CancellationToken,
    ) -> Timeline {
        let state = &acceptor.state;
        let progress = Progress {
            term: state.term,
            flush_lsn: acceptor.flush_lsn(),
            commit_lsn: acceptor.commit_lsn(),
        };
        Timeline {
            tenant_id: state.tenant_id,
            timeline_id: state.timeline_id,
            dir: dir.to_owned(),
            segment_size: state.server.wal_seg_size as usize,
            acceptor: Mutex::new(acceptor),
            progress: watch::channel(progress).0,
            walproposers: AtomicUsize::new(0),
            walsenders: AtomicUsize::new(0),
            feedback: Mutex::new(ReaderFeedback::default()),
            remote,
            cancel,
        }
    }

    /// The acceptor, for the connection that holds it. Publishes progress
    /// when released through [`publish`](Self::publish).
    pub fn acceptor(&self) -> MutexGuard<'_, TimelineAcceptor> {
        self.acceptor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tell WAL readers what the acceptor now has.
    pub fn publish(&self, acceptor: &TimelineAcceptor) {
        let progress = Progress {
            term: acceptor.state.term,
            flush_lsn: acceptor.flush_lsn(),
            commit_lsn: acceptor.commit_lsn(),
        };
        self.progress.send_if_modified(|old| {
            let changed = *old != progress;
            *old = progress;
            changed
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Whether committed WAL is here that no pageserver has said it has
    /// (this safekeeper's view: what pageservers reported since it
    /// started, and the remote consistent LSN it persisted).
    pub fn pageserver_behind(&self) -> bool {
        let commit = self.acceptor().commit_lsn();
        let persisted = self.acceptor().state.remote_consistent_lsn;
        let feedback = *self.feedback.lock().unwrap_or_else(|p| p.into_inner());
        let pageserver = feedback
            .pageserver_last_record_lsn
            .max(feedback.remote_consistent_lsn)
            .max(persisted);
        commit.is_valid() && commit > pageserver
    }

    pub fn status(&self) -> TimelineStatus {
        let acceptor = self.acceptor();
        let s = &acceptor.state;
        let feedback = *self.feedback.lock().unwrap_or_else(|p| p.into_inner());
        TimelineStatus {
            tenant_id: s.tenant_id,
            timeline_id: s.timeline_id,
            node_id: acceptor.node_id,
            term: s.term,
            last_log_term: acceptor.last_log_term(),
            term_history: s.term_history.clone(),
            timeline_start_lsn: s.timeline_start_lsn,
            flush_lsn: acceptor.flush_lsn(),
            commit_lsn: acceptor.commit_lsn(),
            backup_lsn: s.backup_lsn,
            remote_consistent_lsn: s.remote_consistent_lsn.max(feedback.remote_consistent_lsn),
            peer_horizon_lsn: s.peer_horizon_lsn,
            system_id: s.server.system_id,
            pg_version: s.server.pg_version,
            wal_seg_size: s.server.wal_seg_size,
            walproposers: self.walproposers.load(Ordering::Relaxed),
            walsenders: self.walsenders.load(Ordering::Relaxed),
        }
    }
}

/// All timelines of this safekeeper.
pub struct GlobalTimelines {
    datadir: PathBuf,
    node_id: NodeId,
    map: RwLock<HashMap<(TenantId, TimelineId), Arc<Timeline>>>,
    remote: Option<GenericRemoteStorage>,
    /// The parent of every timeline's token.
    cancel: CancellationToken,
    /// Background tasks (WAL offload), waited for at shutdown.
    tasks: TaskTracker,
    /// Whether timelines get their background tasks as they are created.
    offloading: std::sync::atomic::AtomicBool,
}

impl GlobalTimelines {
    /// Load every timeline under `datadir`. A timeline whose control file
    /// cannot be read is logged and skipped, never modified. With `remote`,
    /// [`start_offload`](Self::start_offload) starts offloading WAL there;
    /// `cancel` stops that.
    pub fn load(
        datadir: &Path,
        node_id: NodeId,
        remote: Option<GenericRemoteStorage>,
        cancel: CancellationToken,
    ) -> anyhow::Result<GlobalTimelines> {
        let mut map = HashMap::new();
        for tenant in
            std::fs::read_dir(datadir).with_context(|| format!("listing {}", datadir.display()))?
        {
            let tenant = tenant?;
            let Some(tenant_id) = tenant
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<TenantId>().ok())
            else {
                continue;
            };
            for timeline in std::fs::read_dir(tenant.path())? {
                let timeline = timeline?;
                let Some(timeline_id) = timeline
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<TimelineId>().ok())
                else {
                    continue;
                };
                if !timeline.path().join(CONTROL_FILE_NAME).exists() {
                    continue;
                }
                match Timeline::load(
                    &timeline.path(),
                    node_id,
                    remote.clone(),
                    cancel.child_token(),
                ) {
                    Ok(tl) => {
                        map.insert((tenant_id, timeline_id), Arc::new(tl));
                    }
                    Err(e) => {
                        warn!(%tenant_id, %timeline_id, "cannot load timeline, skipping it: {e:#}")
                    }
                }
            }
        }
        info!("loaded {} timelines", map.len());
        Ok(GlobalTimelines {
            datadir: datadir.to_owned(),
            node_id,
            map: RwLock::new(map),
            remote,
            cancel,
            tasks: TaskTracker::new(),
            offloading: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// With remote storage, start a WAL offload task for every timeline,
    /// and for every timeline created from now on. Call once, from the
    /// runtime.
    pub fn start_offload(&self) {
        if self.remote.is_none() || self.offloading.swap(true, Ordering::SeqCst) {
            return;
        }
        for timeline in self.list() {
            self.spawn_offload(timeline);
        }
    }

    fn spawn_offload(&self, timeline: Arc<Timeline>) {
        if let Some(remote) = &self.remote {
            self.tasks.spawn(crate::wal_backup::offload_timeline(
                timeline,
                remote.clone(),
            ));
        }
    }

    /// Wait for the background tasks after `cancel` fired.
    pub async fn wait_for_background_tasks(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn get(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> Result<Arc<Timeline>, TimelineError> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant_id, timeline_id))
            .cloned()
            .ok_or(TimelineError::NotFound(tenant_id, timeline_id))
    }

    pub fn list(&self) -> Vec<Arc<Timeline>> {
        let mut all: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|t| (t.tenant_id, t.timeline_id));
        all
    }

    pub fn create(
        &self,
        tenant_id: TenantId,
        req: &TimelineCreateRequest,
    ) -> Result<Arc<Timeline>, TimelineError> {
        let timeline_id = req.timeline_id;
        pg_major(req.pg_version).map_err(|e| TimelineError::Invalid(e.to_string()))?;
        if !postgres_format::wal_names::is_valid_segment_size(req.wal_seg_size as usize) {
            return Err(TimelineError::Invalid(format!(
                "WAL segment size {} is not a power of two from 1 MiB to 1 GiB",
                req.wal_seg_size
            )));
        }
        if let Some(start) = req.start_lsn.filter(|&l| l > crate::acceptor::MAX_PEER_LSN) {
            return Err(TimelineError::Invalid(format!(
                "start_lsn {start} is beyond the greatest LSN a timeline may reach ({})",
                crate::acceptor::MAX_PEER_LSN
            )));
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&(tenant_id, timeline_id)) {
            return Err(TimelineError::AlreadyExists(tenant_id, timeline_id));
        }
        let dir = self
            .datadir
            .join(tenant_id.to_string())
            .join(timeline_id.to_string());
        // Build it beside, then rename into place: a failure leaves nothing.
        let tmp = self.datadir.join(format!(".{tenant_id}_{timeline_id}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let build = || -> anyhow::Result<()> {
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let server = ServerInfo {
                pg_version: req.pg_version,
                system_id: req.system_id.unwrap_or(0),
                wal_seg_size: req.wal_seg_size,
            };
            let mut state = PersistentState::new(tenant_id, timeline_id, server);
            if let Some(start) = req.start_lsn {
                state.timeline_start_lsn = start;
            }
            crate::state_file::write_atomically(
                &tmp.join(CONTROL_FILE_NAME),
                &crate::state_file::encode(&state)?,
            )?;
            std::fs::create_dir_all(dir.parent().expect("tenant dir"))?;
            std::fs::rename(&tmp, &dir)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
            Ok(())
        };
        if let Err(e) = build() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
        let timeline = Arc::new(Timeline::load(
            &dir,
            self.node_id,
            self.remote.clone(),
            self.cancel.child_token(),
        )?);
        map.insert((tenant_id, timeline_id), timeline.clone());
        if self.offloading.load(Ordering::SeqCst) {
            self.spawn_offload(timeline.clone());
        }
        crate::metrics::metrics().timelines.set(map.len() as i64);
        info!(%tenant_id, %timeline_id, "created timeline");
        Ok(timeline)
    }

    /// Remove a timeline and its files.
    pub fn delete(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> Result<(), TimelineError> {
        let timeline = self
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tenant_id, timeline_id))
            .ok_or(TimelineError::NotFound(tenant_id, timeline_id))?;
        crate::metrics::metrics().timelines.dec();
        // Stop its background tasks; they check for this under the acceptor.
        timeline.cancel.cancel();
        // Hold the acceptor while deleting, so no connection writes meanwhile.
        let _acceptor = timeline.acceptor();
        std::fs::remove_dir_all(&timeline.dir)
            .with_context(|| format!("removing {}", timeline.dir.display()))?;
        info!(%tenant_id, %timeline_id, "deleted timeline");
        Ok(())
    }
}
