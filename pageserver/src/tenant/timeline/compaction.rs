//! Compaction: image layers per key partition, so that reads stop early.

use std::sync::Arc;

use utils::Lsn;

use crate::key::{Key, KeyRange};
use crate::tenant::layer::map::PersistentLayer;
use crate::tenant::layer::{ImageLayerWriter, LayerError, LayerName};

use super::{lock, StorageError, Timeline};

impl Timeline {
    /// The current key partitions (empty before the first compaction).
    pub fn partitioning(&self) -> Vec<KeyRange> {
        lock(&self.partitioning).clone()
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
