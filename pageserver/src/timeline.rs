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
//! [`TimelineConf::open_layer_max_bytes`] or on [`Timeline::flush`], writes
//! the frozen layer as a delta layer file, and then records the new
//! disk-consistent LSN in its metadata file. [`Timeline::compact_images`]
//! writes image layers so that reads stop early, and [`Timeline::gc`]
//! removes layer files that no read at or above the GC horizon (or at a
//! retained branch point) needs. A timeline made by [`Timeline::new_root`]
//! or [`Timeline::branch`] has no directory and stays in memory.
//!
//! A read collects values newest first: the open layer, the frozen layers,
//! then the layer files ([`crate::layer::map`]) down to an image, then the
//! ancestor at the branch LSN.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use postgres_format::PgMajorVersion;
use tokio::sync::watch;
use tracing::{error, info, warn};
use utils::{Lsn, TenantId, TimelineId};

use crate::key::{Key, KeyRange};
use crate::layer::inmemory::InMemoryLayer;
use crate::layer::map::{collect_values, LayerMap, PersistentLayer};
use crate::layer::{DeltaLayerWriter, ImageLayerWriter, LayerError, LayerName};
use crate::tenant::metadata::{fsync_dir, MetadataError, TimelineMetadata};
use crate::value::{RustRecord, UnreadableRecord, Value, BLCKSZ};

/// Default size of the open in-memory layer that triggers a flush.
pub const DEFAULT_OPEN_LAYER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Default number of keys in an image partition: 128 MiB of pages.
pub const DEFAULT_IMAGE_PARTITION_KEYS: usize = 16 * 1024;

/// Storage settings of a timeline.
#[derive(Clone, Debug)]
pub struct TimelineConf {
    /// Freeze and flush the open layer once it holds this many bytes (at
    /// the next record boundary, in [`Timeline::advance_last_record`]).
    pub open_layer_max_bytes: usize,
    /// Target number of keys of a key partition: the unit in which
    /// [`Timeline::compact`] writes image layers and in which flushes split
    /// delta layers.
    pub image_partition_keys: usize,
}

impl Default for TimelineConf {
    fn default() -> Self {
        TimelineConf {
            open_layer_max_bytes: DEFAULT_OPEN_LAYER_MAX_BYTES,
            image_partition_keys: DEFAULT_IMAGE_PARTITION_KEYS,
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
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn apply_deltas(
    key: Key,
    lsn: Lsn,
    image: &[u8],
    deltas: impl Iterator<Item = RustRecord>,
) -> Result<Bytes, ReadError> {
    let mut page: [u8; BLCKSZ] = image.try_into().map_err(|_| ReadError::Reconstruct {
        key,
        lsn,
        reason: format!("deltas on a value of {} bytes, not a page", image.len()),
    })?;
    for delta in deltas {
        delta.apply(&mut page).map_err(|e| ReadError::Reconstruct {
            key,
            lsn,
            reason: e.to_string(),
        })?;
    }
    Ok(Bytes::copy_from_slice(&page))
}

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
        }
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

    /// Wait until WAL up to `lsn` is ingested.
    pub async fn wait_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<(), ReadError> {
        let mut rx = self.last_record.subscribe();
        let result = tokio::time::timeout(timeout, async {
            rx.wait_for(|r| r.last >= lsn).await.map(|_| ())
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ReadError::ShuttingDown),
            Err(_) => Err(ReadError::WaitTimeout {
                lsn,
                last: self.last_record_lsn(),
                timeout,
            }),
        }
    }

    /// This timeline's own values of `key` at LSNs `<= lsn`, newest first,
    /// appended to `out` down to an image; `true` if an image was reached.
    fn collect_own(
        &self,
        key: Key,
        lsn: Lsn,
        out: &mut Vec<(Lsn, Value)>,
    ) -> Result<bool, ReadError> {
        let candidates = {
            let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
            let in_memory =
                std::iter::once(&layers.open).chain(layers.frozen.iter().rev().map(|f| &f.layer));
            for layer in in_memory {
                for (at, value) in layer.get_values(key, lsn) {
                    let image = value.will_init();
                    out.push((at, value));
                    if image {
                        return Ok(true);
                    }
                }
            }
            layers.files.candidates(key, lsn)
        };
        if candidates.is_empty() {
            return Ok(false);
        }
        Ok(collect_values(&candidates, key, lsn, out)?)
    }

    /// The value of `key` as of `lsn`, `None` if it has none. A version
    /// made unreadable by a record without image or redo is an error
    /// ([`ReadError::Unreadable`]), counted in the metrics.
    pub fn get(&self, key: Key, lsn: Lsn) -> Result<Option<Bytes>, ReadError> {
        match self.get_version(key, lsn)? {
            None => Ok(None),
            Some(Value::Image(image)) => Ok(Some(image)),
            Some(Value::Unreadable(record)) => {
                crate::metrics::get().unreadable_page_reads.inc();
                Err(ReadError::Unreadable { key, lsn, record })
            }
            Some(Value::Delta(_)) => unreachable!("get_version returns whole versions"),
        }
    }

    /// The version of `key` as of `lsn`: an image, or the unreadable
    /// version that stands at `lsn`; `None` if the key has none.
    pub fn get_version(&self, key: Key, lsn: Lsn) -> Result<Option<Value>, ReadError> {
        let mut values: Vec<(Lsn, Value)> = Vec::new();
        let mut timeline = self;
        let mut at = lsn;
        loop {
            if timeline.collect_own(key, at, &mut values)? {
                break;
            }
            match &timeline.ancestor {
                Some(ancestor) => {
                    at = at.min(ancestor.lsn);
                    timeline = &ancestor.timeline;
                }
                None => break,
            }
        }
        let base = match values.pop() {
            None => return Ok(None),
            Some((_, Value::Image(image))) => image,
            // Deltas above it cannot make it readable again.
            Some((_, unreadable @ Value::Unreadable(_))) => return Ok(Some(unreadable)),
            Some((_, Value::Delta(_))) => return Err(ReadError::MissingBase { key, lsn }),
        };
        if values.is_empty() {
            return Ok(Some(Value::Image(base)));
        }
        let deltas = values.into_iter().rev().map(|(_, v)| match v {
            Value::Delta(d) => d,
            Value::Image(_) | Value::Unreadable(_) => {
                unreachable!("whole versions end the collected values")
            }
        });
        apply_deltas(key, lsn, &base, deltas).map(|page| Some(Value::Image(page)))
    }

    /// Store values at `lsn`. Several values for one key at one LSN are
    /// applied in order: an image replaces, a delta applies on top.
    /// `lsn` must not be below the open layer (see
    /// [`ReadError::BelowOpenLayer`]).
    pub fn put_batch(&self, lsn: Lsn, values: Vec<(Key, Value)>) -> Result<(), ReadError> {
        let mut folded: std::collections::BTreeMap<Key, Value> = Default::default();
        for (key, value) in values {
            match (folded.remove(&key), value) {
                (None, value)
                | (Some(_), value @ Value::Image(_))
                | (Some(_), value @ Value::Unreadable(_)) => {
                    folded.insert(key, value);
                }
                (Some(unreadable @ Value::Unreadable(_)), Value::Delta(_)) => {
                    folded.insert(key, unreadable);
                }
                (Some(Value::Image(image)), Value::Delta(delta)) => {
                    let page = apply_deltas(key, lsn, &image, std::iter::once(delta))?;
                    folded.insert(key, Value::Image(page));
                }
                (Some(Value::Delta(first)), Value::Delta(second)) => {
                    // Two deltas at one LSN: materialise the page.
                    let version = match self.get_version(key, Lsn(lsn.0.saturating_sub(1)))? {
                        Some(Value::Image(base)) => {
                            let deltas = [first, second].into_iter();
                            Value::Image(apply_deltas(key, lsn, &base, deltas)?)
                        }
                        Some(unreadable @ Value::Unreadable(_)) => unreadable,
                        Some(Value::Delta(_)) | None => {
                            return Err(ReadError::MissingBase { key, lsn })
                        }
                    };
                    folded.insert(key, version);
                }
            }
        }
        let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
        let start = layers.open.start();
        if lsn < start {
            return Err(ReadError::BelowOpenLayer { lsn, start });
        }
        for (key, value) in folded {
            layers.open.put(key, lsn, value);
        }
        Ok(())
    }

    /// The record ending at `record.last` is fully ingested. On a timeline
    /// with a directory, an open layer past its size limit is then frozen
    /// and written; a failure to write is logged, and the frozen layer
    /// stays in memory and is written by the next flush.
    pub fn advance_last_record(&self, record: RecordLsn) {
        let advanced = self.last_record.send_if_modified(|current| {
            if record.last > current.last {
                *current = record;
                true
            } else {
                false
            }
        });
        if !advanced || self.dir.is_none() {
            return;
        }
        let full = self.open_layer_size() >= self.conf.open_layer_max_bytes;
        if full {
            self.freeze(self.last_record());
            if let Err(e) = self.flush_frozen() {
                error!(
                    "timeline {}: flushing the in-memory layer failed (will retry): {e}",
                    self.timeline_id
                );
            }
        }
    }

    /// Freeze the open layer after the record `record`.
    fn freeze(&self, record: RecordLsn) {
        let end = Lsn(record.last.0.saturating_add(1));
        let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
        if end <= layers.open.start() {
            return;
        }
        let layer = layers.open.freeze(end);
        layers.frozen.push(Arc::new(FrozenLayer { layer, record }));
    }

    /// Freeze the open layer at the last record and write every frozen
    /// layer as a delta layer file; then the metadata's disk-consistent LSN
    /// is the last record.
    pub fn flush(&self) -> Result<(), StorageError> {
        if self.dir.is_none() {
            return Err(StorageError::InMemoryOnly(self.timeline_id));
        }
        self.freeze(self.last_record());
        self.flush_frozen()
    }

    fn dir_or_err(&self) -> Result<&Path, StorageError> {
        self.dir
            .as_deref()
            .ok_or(StorageError::InMemoryOnly(self.timeline_id))
    }

    fn flush_frozen(&self) -> Result<(), StorageError> {
        let dir = self.dir_or_err()?;
        let _guard = lock(&self.flush_lock);
        loop {
            let next = {
                let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
                layers.frozen.first().cloned()
            };
            let Some(frozen) = next else {
                return Ok(());
            };
            let written = self.write_delta_layers(dir, &frozen.layer)?;
            {
                let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
                for name in written {
                    layers
                        .files
                        .insert(Arc::new(PersistentLayer::new(dir, name)));
                }
                layers.frozen.remove(0);
            }
            {
                let mut dc = lock(&self.disk_consistent);
                if frozen.record.last > dc.last {
                    *dc = frozen.record;
                }
            }
            self.metadata().save(dir)?;
        }
    }

    /// Write a frozen layer as delta layer files, one per key partition it
    /// has values in, each named by the keys it actually holds.
    fn write_delta_layers(
        &self,
        dir: &Path,
        layer: &InMemoryLayer,
    ) -> Result<Vec<LayerName>, StorageError> {
        let partitions = self.partitioning();
        let lsn_range = layer.lsn_range();
        let mut written = Vec::new();
        let mut entries = layer.iter().peekable();
        let mut partition = 0;
        while let Some(&(first, _, _)) = entries.peek() {
            while partition + 1 < partitions.len() && !partitions[partition].contains(&first) {
                partition += 1;
            }
            let limit = partitions.get(partition).map_or(Key::MAX, |p| p.end);
            let mut group = Vec::new();
            while let Some(&(key, lsn, value)) = entries.peek() {
                if key >= limit && partition + 1 < partitions.len() {
                    break;
                }
                group.push((key, lsn, value));
                entries.next();
            }
            let last = group.last().map_or(first, |(key, _, _)| *key);
            let name = LayerName::Delta {
                key_range: KeyRange::new(first, last.next()),
                lsn_range: lsn_range.clone(),
            };
            let mut writer = DeltaLayerWriter::new(
                &dir.join(name.to_string()),
                name.key_range(),
                lsn_range.clone(),
            )?;
            for (key, lsn, value) in group {
                writer.put(key, lsn, value)?;
            }
            writer.finish()?;
            written.push(name);
        }
        Ok(written)
    }

    /// The current key partitions (empty before the first compaction).
    pub fn partitioning(&self) -> Vec<KeyRange> {
        lock(&self.partitioning).clone()
    }

    fn save_metadata(&self) -> Result<(), StorageError> {
        let dir = self.dir_or_err()?;
        let _guard = lock(&self.flush_lock);
        self.metadata().save(dir)?;
        Ok(())
    }

    /// Keys in `range` that have a value stored on this timeline itself
    /// (not its ancestors).
    pub fn try_own_keys(&self, range: KeyRange) -> Result<Vec<Key>, LayerError> {
        let (mut keys, files) = {
            let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
            let mut keys: std::collections::BTreeSet<Key> = layers.open.keys(range).collect();
            for f in &layers.frozen {
                keys.extend(f.layer.keys(range));
            }
            let files: Vec<_> = layers
                .files
                .iter()
                .filter(|l| l.key_range().overlaps(&range))
                .cloned()
                .collect();
            (keys, files)
        };
        for file in files {
            keys.extend(file.keys()?.into_iter().filter(|k| range.contains(k)));
        }
        Ok(keys.into_iter().collect())
    }

    /// Write an image layer at `lsn` (at most the disk-consistent LSN):
    /// the value as of `lsn` of every key of the timeline's own key space,
    /// so reads at or above `lsn` stop there. Returns the layer written,
    /// `None` if the timeline has no keys of its own or the layer exists.
    pub fn compact_images(&self, lsn: Lsn) -> Result<Option<LayerName>, StorageError> {
        let dir = self.dir_or_err()?;
        let _guard = lock(&self.compaction_lock);
        let dc = self.disk_consistent_lsn();
        if lsn > dc {
            return Err(StorageError::Invalid(format!(
                "cannot make images at {lsn}: above the disk-consistent LSN {dc} (flush first)"
            )));
        }
        if lsn < self.start_lsn || lsn == Lsn::MAX {
            return Err(StorageError::Invalid(format!(
                "cannot make images at {lsn}: before the timeline's start {}",
                self.start_lsn
            )));
        }
        let keys = self.try_own_keys(KeyRange::all())?;
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            return Ok(None);
        };
        let key_range = KeyRange::new(*first, last.next());
        let name = LayerName::Image { key_range, lsn };
        {
            let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
            if layers.files.contains(&name) {
                return Ok(None);
            }
        }
        let mut writer = ImageLayerWriter::new(&dir.join(name.to_string()), key_range, lsn)?;
        for key in keys {
            if let Some(version) = self.get_version(key, lsn)? {
                writer.put_version(key, &version)?;
            }
        }
        writer.finish()?;
        let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
        layers
            .files
            .insert(Arc::new(PersistentLayer::new(dir, name.clone())));
        Ok(Some(name))
    }

    /// Partitioned compaction at the disk-consistent LSN: for each key
    /// partition with at least `threshold` delta layers above its newest
    /// image, write an image layer of the partition. Partitions are chunks
    /// of about [`TimelineConf::image_partition_keys`] keys of the
    /// timeline's own key space, computed on the first compaction and split
    /// when one grows past twice that. Runs beside ingest: it holds only the
    /// compaction lock. Returns the image layers written.
    pub fn compact(&self, threshold: usize) -> Result<Vec<LayerName>, StorageError> {
        let dir = self.dir_or_err()?;
        let _guard = lock(&self.compaction_lock);
        let lsn = self.disk_consistent_lsn();
        if lsn <= self.start_lsn {
            return Ok(Vec::new());
        }
        let target = self.conf.image_partition_keys.max(1);
        let mut partitions = self.partitioning();
        if partitions.is_empty() {
            let keys = self.try_own_keys(KeyRange::all())?;
            partitions = partition_keys(&keys, target);
            *lock(&self.partitioning) = partitions.clone();
        }
        let files: Vec<Arc<PersistentLayer>> = {
            let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
            layers.files.iter().cloned().collect()
        };
        let mut written = Vec::new();
        let mut next_partitions = Vec::with_capacity(partitions.len());
        for range in partitions {
            let newest_image = files
                .iter()
                .filter(|l| l.key_range().covers(&range))
                .filter_map(|l| l.image_lsn())
                .max();
            let deltas_above = files
                .iter()
                .filter(|l| {
                    l.name().is_delta()
                        && l.key_range().overlaps(&range)
                        && newest_image.is_none_or(|i| l.name().lsn_range().end.0 > i.0 + 1)
                })
                .count();
            if deltas_above < threshold || newest_image == Some(lsn) {
                next_partitions.push(range);
                continue;
            }
            let keys = self.try_own_keys(range)?;
            if keys.is_empty() {
                next_partitions.push(range);
                continue;
            }
            let name = LayerName::Image {
                key_range: range,
                lsn,
            };
            let mut writer = ImageLayerWriter::new(&dir.join(name.to_string()), range, lsn)?;
            for key in &keys {
                if let Some(version) = self.get_version(*key, lsn)? {
                    writer.put_version(*key, &version)?;
                }
            }
            writer.finish()?;
            {
                let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
                layers
                    .files
                    .insert(Arc::new(PersistentLayer::new(dir, name.clone())));
            }
            written.push(name);
            if keys.len() > 2 * target {
                // Split the grown partition; its image covers the parts.
                let mut parts = partition_keys(&keys, target);
                if let Some(first) = parts.first_mut() {
                    first.start = range.start;
                }
                if let Some(last) = parts.last_mut() {
                    last.end = range.end;
                }
                next_partitions.extend(parts);
            } else {
                next_partitions.push(range);
            }
        }
        *lock(&self.partitioning) = next_partitions;
        Ok(written)
    }

    /// Remove the layer files that no read at or above `horizon`, nor at any
    /// of `retain_lsns` (the branch points of child timelines), needs: those
    /// entirely below the horizon whose whole key range is covered by a
    /// newer image layer at or below each such read. Records the horizon
    /// (persistently) first, so branching below it is refused. Returns the
    /// layers removed.
    pub fn gc(&self, horizon: Lsn, retain_lsns: &[Lsn]) -> Result<Vec<LayerName>, StorageError> {
        let dir = self.dir_or_err()?;
        let _compaction = lock(&self.compaction_lock);
        let _guard = lock(&self.flush_lock);
        {
            let mut h = self.gc_horizon.write().unwrap_or_else(|p| p.into_inner());
            if horizon > *h {
                *h = horizon;
            }
        }
        self.metadata().save(dir)?;
        let removed: Vec<Arc<PersistentLayer>> = {
            let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
            let victims = layers.files.gc_candidates(horizon, retain_lsns);
            for v in &victims {
                layers.files.remove(v.name());
            }
            victims
        };
        for layer in &removed {
            std::fs::remove_file(layer.path()).map_err(|source| StorageError::Io {
                context: format!("removing {}", layer.path().display()),
                source,
            })?;
        }
        if !removed.is_empty() {
            fsync_dir(dir).map_err(|source| StorageError::Io {
                context: format!("fsync of {}", dir.display()),
                source,
            })?;
        }
        Ok(removed.iter().map(|l| l.name().clone()).collect())
    }
}

/// Contiguous key ranges from [`Key::MIN`] to [`Key::MAX`], each holding
/// about `target` of `keys` (sorted); one range for no keys.
pub fn partition_keys(keys: &[Key], target: usize) -> Vec<KeyRange> {
    let target = target.max(1);
    let mut cuts: Vec<Key> = keys.iter().step_by(target).skip(1).copied().collect();
    // A last chunk smaller than half the target joins the one before.
    if !keys.len().is_multiple_of(target) && keys.len() % target < target / 2 {
        cuts.pop();
    }
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = Key::MIN;
    for cut in cuts {
        out.push(KeyRange::new(start, cut));
        start = cut;
    }
    out.push(KeyRange::new(start, Key::MAX));
    out
}
