//! A timeline: one line of WAL history, as versioned key/values.
//!
//! `get(key, lsn)` reconstructs a value as of an LSN: the newest image at
//! or below it, with the Rust-applied deltas above that image applied in
//! LSN order. A branch is a timeline with an ancestor: reads below the
//! branch point fall through to the ancestor at the branch LSN, so
//! creating a branch copies nothing.
//!
//! Storage: values are put into an open [`InMemoryLayer`]. A timeline with
//! a directory (made by [`crate::tenant::Tenant`]) freezes the open layer
//! at a record boundary when it grows past
//! [`TimelineConf::open_layer_max_bytes`], when it spans more than
//! [`TimelineConf::checkpoint_distance`] of WAL, or on [`Timeline::flush`], writes
//! the frozen layer as a delta layer file, and then records the new
//! disk-consistent LSN in its metadata file. [`Timeline::compact_images`]
//! writes image layers so that reads stop early, and [`Timeline::gc`]
//! removes layer files that no read at or above the GC horizon (or at a
//! retained branch point) needs. A timeline made by [`Timeline::new_root`]
//! or [`Timeline::branch`] has no directory and stays in memory.
//!
//! A read collects values newest first: the open layer, the frozen layers,
//! then the layer files ([`crate::tenant::layer::map`]) down to an image,
//! then the ancestor at the branch LSN.
//!
//! By concern: `read` (get, wait for an LSN), `write` (put, freeze, flush),
//! `chains` (bounding each key's chain of deltas), `compaction` (image
//! layers per key partition), `gc` (removing layer
//! files), `branch` (creating, branching, loading, the persisted metadata).

mod branch;
mod chains;
mod compaction;
mod gc;
mod read;
mod write;

pub use chains::MAX_TRACKED_KEYS;
pub use compaction::partition_keys;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use postgres_format::PgMajorVersion;
use tokio::sync::watch;
use utils::{Lsn, TenantId, TimelineId};

use crate::key::{Key, KeyRange};
use crate::tenant::layer::inmemory::InMemoryLayer;
use crate::tenant::layer::map::LayerMap;
use crate::tenant::layer::{LayerError, LayerName};
use crate::tenant::metadata::MetadataError;
use crate::value::UnreadableRecord;

/// Default size of the open in-memory layer that triggers a flush.
pub const DEFAULT_OPEN_LAYER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Default WAL distance after which the open layer is frozen and written:
/// what a restart may have to ingest again.
pub const DEFAULT_CHECKPOINT_DISTANCE: u64 = 64 * 1024 * 1024;

/// Default number of keys in an image partition: 128 MiB of pages.
pub const DEFAULT_IMAGE_PARTITION_KEYS: usize = 16 * 1024;

/// Default bound on the deltas a read applies on top of a whole version.
pub const DEFAULT_MAX_DELTA_CHAIN: usize = 100;

/// Storage settings of a timeline.
#[derive(Clone, Debug)]
pub struct TimelineConf {
    /// Freeze and flush the open layer once it holds this many bytes (at
    /// the next record boundary, in [`Timeline::advance_last_record`]).
    pub open_layer_max_bytes: usize,
    /// Freeze and flush the open layer once it spans this many bytes of
    /// WAL, however few values it holds: the disk-consistent LSN trails the
    /// last record by at most about this much, which bounds the WAL a
    /// restart ingests again.
    pub checkpoint_distance: u64,
    /// Target number of keys of a key partition: the unit in which
    /// [`Timeline::compact`] writes image layers and in which flushes split
    /// delta layers.
    pub image_partition_keys: usize,
    /// The most deltas a read of a page applies on top of the newest whole
    /// version: ingest stores the page image in place of the delta that
    /// makes a chain this long (at least 1).
    pub max_delta_chain: usize,
}

impl Default for TimelineConf {
    fn default() -> Self {
        TimelineConf {
            open_layer_max_bytes: DEFAULT_OPEN_LAYER_MAX_BYTES,
            checkpoint_distance: DEFAULT_CHECKPOINT_DISTANCE,
            image_partition_keys: DEFAULT_IMAGE_PARTITION_KEYS,
            max_delta_chain: DEFAULT_MAX_DELTA_CHAIN,
        }
    }
}

pub use crate::tenant::metadata::RecordLsn;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{key:?} at {lsn}: deltas without a base image")]
    MissingBase { key: Key, lsn: Lsn },
    #[error("{key:?} at {lsn}: {reason}")]
    Reconstruct { key: Key, lsn: Lsn, reason: String },
    /// The version read was made unreadable by a record with neither a
    /// page image nor a Rust redo.
    #[error("{key:?} cannot be reconstructed at {lsn}: {record}")]
    Unreadable {
        key: Key,
        lsn: Lsn,
        record: UnreadableRecord,
    },
    #[error("timed out after {timeout:?} waiting for WAL up to {lsn}; ingested up to {last}")]
    WaitTimeout {
        lsn: Lsn,
        last: Lsn,
        timeout: Duration,
    },
    #[error("timeline is shutting down")]
    ShuttingDown,
    /// GC may have removed what a read at this LSN needs.
    #[error("cannot read at {lsn}: below the GC horizon {horizon}")]
    BelowGcHorizon { lsn: Lsn, horizon: Lsn },
    /// A layer file could not be read.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// A put below the open layer: that LSN is already frozen or on disk.
    #[error("cannot store values at {lsn}: the timeline holds everything below {start} already (frozen or on disk)")]
    BelowOpenLayer { lsn: Lsn, start: Lsn },
}

#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error("cannot branch at {lsn}: the timeline's WAL ends at {last}")]
    BeyondEnd { lsn: Lsn, last: Lsn },
    #[error("cannot branch at {lsn}: below the GC horizon {horizon}")]
    BelowGcHorizon { lsn: Lsn, horizon: Lsn },
    #[error("cannot branch at {lsn}: before the timeline's start {start}")]
    BeforeStart { lsn: Lsn, start: Lsn },
}

/// Errors of flushing, compaction and GC.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("timeline {0} is in memory only: it has no directory")]
    InMemoryOnly(TimelineId),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone)]
pub struct Ancestor {
    pub timeline: Arc<Timeline>,
    pub lsn: Lsn,
}

/// A frozen in-memory layer waiting to be written, with the last record
/// it holds.
struct FrozenLayer {
    layer: InMemoryLayer,
    record: RecordLsn,
}

struct Layers {
    open: InMemoryLayer,
    /// Oldest first; contiguous LSN ranges ending at `open.start()`.
    frozen: Vec<Arc<FrozenLayer>>,
    files: LayerMap,
}

pub struct Timeline {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub pg_version: PgMajorVersion,
    ancestor: Option<Ancestor>,
    /// Where this timeline's own history begins (its branch point, or the
    /// bootstrap LSN).
    start_lsn: Lsn,
    /// The timeline directory; `None` for an in-memory timeline.
    dir: Option<PathBuf>,
    conf: TimelineConf,
    layers: RwLock<Layers>,
    last_record: watch::Sender<RecordLsn>,
    /// The last record whose values are all in layer files.
    disk_consistent: Mutex<RecordLsn>,
    gc_horizon: RwLock<Lsn>,
    /// Serialises flushes, GC and metadata writes.
    flush_lock: Mutex<()>,
    /// Serialises compaction and GC. Compaction does not take `flush_lock`,
    /// so ingest (which flushes when its in-memory layer is full) never
    /// waits for image layers to be written.
    compaction_lock: Mutex<()>,
    /// The key partitions: contiguous ranges from [`Key::MIN`] to
    /// [`Key::MAX`]; empty until the first compaction computes them.
    partitioning: Mutex<Vec<KeyRange>>,
    /// The disk-consistent LSN of the last index uploaded to remote
    /// storage (invalid without remote storage or before the first upload).
    remote_consistent: Mutex<Lsn>,
    /// Deltas stored since each key's last whole version (see `chains`).
    delta_chains: Mutex<chains::DeltaChains>,
    /// Why the last flush failed (a full disk, say), until one succeeds:
    /// ingest pauses while frozen layers wait for it
    /// ([`Timeline::ingest_paused`]).
    flush_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Timeline {
    #[allow(clippy::too_many_arguments)]
    fn construct(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        pg_version: PgMajorVersion,
        ancestor: Option<Ancestor>,
        start_lsn: Lsn,
        last: RecordLsn,
        dir: Option<PathBuf>,
        conf: TimelineConf,
        files: LayerMap,
        open_start: Lsn,
        gc_horizon: Lsn,
    ) -> Timeline {
        Timeline {
            tenant_id,
            timeline_id,
            pg_version,
            ancestor,
            start_lsn,
            dir,
            conf,
            layers: RwLock::new(Layers {
                open: InMemoryLayer::new(open_start),
                frozen: Vec::new(),
                files,
            }),
            last_record: watch::channel(last).0,
            disk_consistent: Mutex::new(last),
            gc_horizon: RwLock::new(gc_horizon),
            flush_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            partitioning: Mutex::new(Vec::new()),
            remote_consistent: Mutex::new(Lsn::INVALID),
            delta_chains: Mutex::new(chains::DeltaChains::default()),
            flush_error: Mutex::new(None),
        }
    }

    pub fn ancestor(&self) -> Option<&Ancestor> {
        self.ancestor.as_ref()
    }

    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    /// The timeline directory, `None` for an in-memory timeline.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn conf(&self) -> &TimelineConf {
        &self.conf
    }

    pub fn gc_horizon(&self) -> Lsn {
        *self.gc_horizon.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_record(&self) -> RecordLsn {
        *self.last_record.borrow()
    }

    pub fn last_record_lsn(&self) -> Lsn {
        self.last_record().last
    }

    /// The last record whose values are all in layer files (for an
    /// in-memory timeline: its start).
    pub fn disk_consistent(&self) -> RecordLsn {
        *lock(&self.disk_consistent)
    }

    pub fn disk_consistent_lsn(&self) -> Lsn {
        self.disk_consistent().last
    }

    /// The disk-consistent LSN that remote storage holds (see
    /// [`crate::remote_timeline`]).
    pub fn remote_consistent_lsn(&self) -> Lsn {
        *lock(&self.remote_consistent)
    }

    pub fn set_remote_consistent_lsn(&self, lsn: Lsn) {
        let mut r = lock(&self.remote_consistent);
        if lsn > *r {
            *r = lsn;
        }
    }

    /// The names of the timeline's layer files, sorted.
    pub fn layer_names(&self) -> Vec<LayerName> {
        let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<LayerName> = layers.files.iter().map(|l| l.name().clone()).collect();
        names.sort_by_key(|n| (n.lsn_range().start, n.lsn_range().end, n.key_range()));
        names
    }

    /// Bytes in the open in-memory layer.
    pub fn open_layer_size(&self) -> usize {
        let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
        layers.open.size()
    }

    fn dir_or_err(&self) -> Result<&Path, StorageError> {
        self.dir
            .as_deref()
            .ok_or(StorageError::InMemoryOnly(self.timeline_id))
    }
}
