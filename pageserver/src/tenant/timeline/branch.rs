//! Creating timelines (root, branch, persistent) and loading them from
//! disk; the metadata they persist.

use std::path::PathBuf;
use std::sync::Arc;

use postgres_format::PgMajorVersion;
use tracing::{info, warn};
use utils::{Lsn, TenantId, TimelineId};

use crate::tenant::layer::map::{LayerMap, PersistentLayer};
use crate::tenant::layer::LayerName;
use crate::tenant::metadata::{fsync_dir, TimelineMetadata};

use super::{lock, Ancestor, BranchError, RecordLsn, StorageError, Timeline, TimelineConf};

impl Timeline {
    /// A timeline without ancestor whose history begins at `start`, kept in
    /// memory only.
    pub fn new_root(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        pg_version: PgMajorVersion,
        start: RecordLsn,
    ) -> Timeline {
        Timeline::construct(
            tenant_id,
            timeline_id,
            pg_version,
            None,
            start.last,
            start,
            None,
            TimelineConf::default(),
            LayerMap::new(),
            start.last,
            Lsn::INVALID,
        )
    }

    /// Whether a branch at `at` is allowed.
    pub fn check_branch_point(&self, at: RecordLsn) -> Result<(), BranchError> {
        let last = self.last_record_lsn();
        if at.last > last {
            return Err(BranchError::BeyondEnd { lsn: at.last, last });
        }
        if at.last < self.start_lsn {
            return Err(BranchError::BeforeStart {
                lsn: at.last,
                start: self.start_lsn,
            });
        }
        let horizon = self.gc_horizon();
        if at.last < horizon {
            return Err(BranchError::BelowGcHorizon {
                lsn: at.last,
                horizon,
            });
        }
        Ok(())
    }

    /// A branch of this timeline at `lsn` (a record boundary this timeline
    /// has ingested, with the record before it at `prev`). O(1): nothing is
    /// copied. The branch is kept in memory only; use
    /// [`crate::tenant::Tenant::branch_timeline`] for a persistent branch.
    pub fn branch(
        self: &Arc<Self>,
        timeline_id: TimelineId,
        at: RecordLsn,
    ) -> Result<Timeline, BranchError> {
        self.check_branch_point(at)?;
        Ok(Timeline::construct(
            self.tenant_id,
            timeline_id,
            self.pg_version,
            Some(Ancestor {
                timeline: self.clone(),
                lsn: at.last,
            }),
            at.last,
            at,
            None,
            self.conf.clone(),
            LayerMap::new(),
            at.last,
            Lsn::INVALID,
        ))
    }

    /// A new timeline stored in `dir` (which exists): writes its metadata
    /// file only.
    pub(crate) fn create_persistent(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        pg_version: PgMajorVersion,
        ancestor: Option<Ancestor>,
        start: RecordLsn,
        dir: PathBuf,
        conf: TimelineConf,
    ) -> Result<Timeline, StorageError> {
        let timeline = Timeline::construct(
            tenant_id,
            timeline_id,
            pg_version,
            ancestor,
            start.last,
            start,
            Some(dir),
            conf,
            LayerMap::new(),
            start.last,
            Lsn::INVALID,
        );
        timeline.save_metadata()?;
        Ok(timeline)
    }

    /// Load a timeline from `dir` given its (already read) metadata: lists
    /// the layer files, removes temporary files and layers beyond the
    /// disk-consistent LSN (their WAL is ingested again), and resumes at
    /// the disk-consistent LSN.
    pub(crate) fn load(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        metadata: TimelineMetadata,
        ancestor: Option<Ancestor>,
        dir: PathBuf,
        conf: TimelineConf,
    ) -> Result<Timeline, StorageError> {
        let dc = metadata.disk_consistent;
        let mut files = LayerMap::new();
        let mut open_start = metadata.start_lsn;
        if dc.last > metadata.start_lsn {
            open_start = Lsn(dc.last.0 + 1);
        }
        let io = |context: String| move |source| StorageError::Io { context, source };
        let entries = std::fs::read_dir(&dir).map_err(io(format!(
            "listing the timeline directory {}",
            dir.display()
        )))?;
        let mut removed = false;
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                warn!("ignoring {:?} in {}", name, dir.display());
                continue;
            };
            if name == crate::tenant::metadata::METADATA_FILE_NAME {
                continue;
            }
            if name.ends_with(".tmp") {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                removed = true;
                continue;
            }
            let layer: LayerName = match name.parse() {
                Ok(l) => l,
                Err(e) => {
                    warn!("ignoring {name} in {}: {e}", dir.display());
                    continue;
                }
            };
            let range = layer.lsn_range();
            if range.end.0 > dc.last.0.saturating_add(1) {
                // Written after the metadata's disk-consistent LSN (a crash
                // between the layer and the metadata): the WAL it holds is
                // ingested again, so the layer must not be read.
                let path = entry.path();
                info!(
                    "removing layer {name} beyond the disk-consistent LSN {}",
                    dc.last
                );
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                removed = true;
                continue;
            }
            if layer.is_delta() {
                open_start = open_start.max(range.end);
            }
            files.insert(Arc::new(PersistentLayer::new(&dir, layer)));
        }
        if removed {
            fsync_dir(&dir).map_err(io(format!("fsync of {}", dir.display())))?;
        }
        Ok(Timeline::construct(
            tenant_id,
            timeline_id,
            metadata.pg_version,
            ancestor,
            metadata.start_lsn,
            dc,
            Some(dir),
            conf,
            files,
            open_start,
            metadata.gc_horizon,
        ))
    }

    /// What remote storage should hold: the metadata and the layer files
    /// up to the disk-consistent LSN (path and name), taken together.
    pub fn remote_snapshot(&self) -> (TimelineMetadata, Vec<(LayerName, PathBuf)>) {
        let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
        let metadata = self.metadata();
        let limit = metadata.disk_consistent.last.0.saturating_add(1);
        let mut files: Vec<(LayerName, PathBuf)> = layers
            .files
            .iter()
            .filter(|l| l.name().lsn_range().end.0 <= limit)
            .map(|l| (l.name().clone(), l.path().to_owned()))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        (metadata, files)
    }

    /// The metadata as the metadata file holds it (or would).
    pub fn metadata(&self) -> TimelineMetadata {
        TimelineMetadata {
            disk_consistent: self.disk_consistent(),
            ancestor: self
                .ancestor
                .as_ref()
                .map(|a| (a.timeline.timeline_id, a.lsn)),
            start_lsn: self.start_lsn,
            gc_horizon: self.gc_horizon(),
            pg_version: self.pg_version,
        }
    }

    fn save_metadata(&self) -> Result<(), StorageError> {
        let dir = self.dir_or_err()?;
        let _guard = lock(&self.flush_lock);
        self.metadata().save(dir)?;
        Ok(())
    }
}
