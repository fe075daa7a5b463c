//! The write path: values put into the open in-memory layer, which is
//! frozen at a record boundary and flushed as delta layer files; the
//! disk-consistent LSN follows the flushes.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{error, info};
use utils::Lsn;

use crate::key::{Key, KeyRange};
use crate::tenant::layer::inmemory::InMemoryLayer;
use crate::tenant::layer::map::PersistentLayer;
use crate::tenant::layer::{DeltaLayerWriter, LayerName};
use crate::value::Value;

use super::chains::Stored;
use super::read::{apply_deltas, ZERO_PAGE};
use super::{lock, FrozenLayer, ReadError, RecordLsn, StorageError, Timeline};

impl Timeline {
    /// Store values at `lsn`. Several values for one key at one LSN are
    /// applied in order: an image replaces, a delta applies on top.
    /// `lsn` must not be below the open layer (see
    /// [`ReadError::BelowOpenLayer`]). A delta that makes its key's chain
    /// reach [`super::TimelineConf::max_delta_chain`] is stored as the page
    /// image instead (see `chains`).
    pub fn put_batch(&self, lsn: Lsn, values: Vec<(Key, Value)>) -> Result<(), ReadError> {
        let mut folded: std::collections::BTreeMap<Key, Value> = Default::default();
        for (key, value) in values {
            match (folded.remove(&key), value) {
                (None, value)
                | (Some(_), value @ Value::Image(_))
                | (Some(_), value @ Value::Unreadable(_)) => {
                    folded.insert(key, value);
                }
                (Some(_), Value::Delta(delta)) if delta.will_init() => {
                    folded.insert(key, Value::Delta(delta));
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
                    let before = if first.will_init() {
                        Some(Value::Image(Bytes::from_static(&ZERO_PAGE)))
                    } else {
                        self.get_version(key, Lsn(lsn.0.saturating_sub(1)))?
                    };
                    let version = match before {
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
        let stored: Vec<(Key, Stored)> = folded.iter().map(|(k, v)| (*k, Stored::of(v))).collect();
        {
            let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
            let start = layers.open.start();
            if lsn < start {
                return Err(ReadError::BelowOpenLayer { lsn, start });
            }
            for (key, value) in folded {
                layers.open.put(key, lsn, value);
            }
        }
        self.bound_delta_chains(lsn, &stored);
        Ok(())
    }

    /// The record ending at `record.last` is fully ingested. On a timeline
    /// with a directory, an open layer past its size limit is then frozen
    /// and written; a failure to write (a full disk) keeps the frozen layer
    /// in memory and pauses ingest ([`Timeline::ingest_paused`]) until a
    /// retry ([`Timeline::retry_flush`]) writes it.
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
        if let Some((bytes, wal)) = self.open_layer_full(record.last) {
            info!(
                "timeline {}: writing the open layer ({bytes} bytes in memory, {wal} bytes of WAL)",
                self.timeline_id
            );
            self.freeze(self.last_record());
            // A failure is recorded (and logged) by `flush_frozen`.
            let _ = self.flush_frozen();
        }
    }

    /// Why ingest must wait, if it must: a frozen layer could not be
    /// written (the last flush failed). Ingesting more would only pile up
    /// memory; the WAL stays on the safekeepers, and the compute, seeing
    /// the pageserver fall behind, slows down.
    pub fn ingest_paused(&self) -> Option<String> {
        let frozen = !self
            .layers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .frozen
            .is_empty();
        let error = lock(&self.flush_error).clone();
        error.filter(|_| frozen)
    }

    /// Try again to write the frozen layers (after a failed flush).
    pub fn retry_flush(&self) -> Result<(), StorageError> {
        self.flush_frozen()
    }

    /// Whether the open layer holds `open_layer_max_bytes` or spans
    /// `checkpoint_distance` of WAL up to `last` (one look, one lock): if
    /// so, its size in memory and the WAL it spans.
    fn open_layer_full(&self, last: Lsn) -> Option<(usize, u64)> {
        let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
        let bytes = layers.open.size();
        let wal = last.0.saturating_sub(layers.open.start().0);
        (bytes >= self.conf.open_layer_max_bytes || wal >= self.conf.checkpoint_distance)
            .then_some((bytes, wal))
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

    fn flush_frozen(&self) -> Result<(), StorageError> {
        let result = self.flush_frozen_layers();
        let mut error = lock(&self.flush_error);
        match &result {
            Ok(()) => {
                if error.take().is_some() {
                    info!(
                        "timeline {}: flushing works again; ingest resumes",
                        self.timeline_id
                    );
                    crate::metrics::get().ingest_paused_timelines.dec();
                }
            }
            Err(e) => {
                if error.is_none() {
                    error!(
                        "timeline {}: writing an in-memory layer failed, pausing ingest until a retry succeeds: {e}",
                        self.timeline_id
                    );
                    crate::metrics::get().ingest_paused_timelines.inc();
                }
                *error = Some(e.to_string());
            }
        }
        result
    }

    fn flush_frozen_layers(&self) -> Result<(), StorageError> {
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
}
