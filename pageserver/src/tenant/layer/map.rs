//! The layer files of one timeline, and the search for the values a read
//! of (key, LSN) needs from them.
//!
//! Layers are known by their names ([`LayerName`]); a file is opened the
//! first time a read needs it and its reader is kept. Delta layers written
//! by flushes cover disjoint LSN ranges; image layers made by compaction
//! sit at one LSN, possibly inside a delta layer's range.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use utils::Lsn;

use crate::key::{Key, KeyRange};
use crate::tenant::layer::{DeltaLayerReader, ImageLayerReader, LayerError, LayerName};
use crate::value::Value;

/// An open layer file.
pub enum LayerReader {
    Delta(DeltaLayerReader),
    Image(ImageLayerReader),
}

/// A layer file of the timeline, opened lazily.
pub struct PersistentLayer {
    name: LayerName,
    path: PathBuf,
    reader: Mutex<Option<Arc<LayerReader>>>,
}

impl PersistentLayer {
    /// The layer file `name` in directory `dir` (not opened yet).
    pub fn new(dir: &Path, name: LayerName) -> PersistentLayer {
        PersistentLayer {
            path: dir.join(name.to_string()),
            name,
            reader: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &LayerName {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key_range(&self) -> KeyRange {
        self.name.key_range()
    }

    /// The LSN of an image layer.
    pub fn image_lsn(&self) -> Option<Lsn> {
        match &self.name {
            LayerName::Image { lsn, .. } => Some(*lsn),
            LayerName::Delta { .. } => None,
        }
    }

    /// The reader, opening the file on first use. The opened file's header
    /// must agree with its name.
    pub fn reader(&self) -> Result<Arc<LayerReader>, LayerError> {
        let mut slot = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let (reader, actual) = if self.name.is_delta() {
            let r = DeltaLayerReader::open(&self.path)?;
            let n = r.layer_name();
            (LayerReader::Delta(r), n)
        } else {
            let r = ImageLayerReader::open(&self.path)?;
            let n = r.layer_name();
            (LayerReader::Image(r), n)
        };
        if actual != self.name {
            return Err(LayerError::Corrupt {
                path: self.path.clone(),
                reason: format!("its header describes the layer {actual}"),
            });
        }
        let reader = Arc::new(reader);
        *slot = Some(reader.clone());
        Ok(reader)
    }

    /// Every key stored in the layer, in order, deduplicated.
    pub fn keys(&self) -> Result<Vec<Key>, LayerError> {
        self.keys_in(&KeyRange::all())
    }

    /// The keys stored in the layer within `range`, in order, deduplicated;
    /// reads only the data blocks that overlap the range.
    pub fn keys_in(&self, range: &KeyRange) -> Result<Vec<Key>, LayerError> {
        match self.reader()?.as_ref() {
            LayerReader::Delta(d) => d.keys_in(range),
            LayerReader::Image(i) => i.keys_in(range),
        }
    }
}

/// The layer files of a timeline.
#[derive(Default)]
pub struct LayerMap {
    layers: Vec<Arc<PersistentLayer>>,
}

impl LayerMap {
    pub fn new() -> LayerMap {
        LayerMap::default()
    }

    /// Add a layer; a layer with the same name is replaced.
    pub fn insert(&mut self, layer: Arc<PersistentLayer>) {
        self.layers.retain(|l| l.name != layer.name);
        self.layers.push(layer);
    }

    pub fn remove(&mut self, name: &LayerName) -> Option<Arc<PersistentLayer>> {
        let i = self.layers.iter().position(|l| &l.name == name)?;
        Some(self.layers.swap_remove(i))
    }

    pub fn contains(&self, name: &LayerName) -> bool {
        self.layers.iter().any(|l| &l.name == name)
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<PersistentLayer>> + '_ {
        self.layers.iter()
    }

    /// The layers that may hold `key` at an LSN `<= lsn`.
    pub fn candidates(&self, key: Key, lsn: Lsn) -> Vec<Arc<PersistentLayer>> {
        self.layers
            .iter()
            .filter(|l| l.key_range().contains(&key) && l.name.lsn_range().start <= lsn)
            .cloned()
            .collect()
    }

    /// The layers a GC at `horizon` may remove: each is below the horizon
    /// and, for every read the timeline must still serve (any LSN at or
    /// above the horizon, and each `retain` LSN at or above the layer's
    /// start), image layers no older than the layer's newest LSN and no
    /// newer than the read cover the layer's whole key range between them.
    /// (Image layers are made per key partition, so several may be needed
    /// to cover a delta layer written before the partitions changed.)
    pub fn gc_candidates(&self, horizon: Lsn, retain: &[Lsn]) -> Vec<Arc<PersistentLayer>> {
        let covered = |l: &PersistentLayer, at: Lsn| {
            let newest = Lsn(l.name.lsn_range().end.0 - 1);
            let ranges = self.layers.iter().filter_map(|i| {
                let il = i.image_lsn()?;
                let usable = il >= newest
                    && il <= at
                    && i.name != l.name
                    && (l.image_lsn().is_none() || il > newest);
                usable.then(|| i.key_range())
            });
            union_covers(ranges, &l.key_range())
        };
        self.layers
            .iter()
            .filter(|l| {
                let range = l.name.lsn_range();
                range.end <= horizon
                    && covered(l, horizon)
                    && retain
                        .iter()
                        .filter(|r| **r >= range.start && **r < horizon)
                        .all(|r| covered(l, *r))
            })
            .cloned()
            .collect()
    }
}

/// Whether the union of `ranges` holds every key of `target`.
pub fn union_covers(ranges: impl Iterator<Item = KeyRange>, target: &KeyRange) -> bool {
    if target.is_empty() {
        return true;
    }
    let mut ranges: Vec<KeyRange> = ranges.filter(|r| r.overlaps(target)).collect();
    ranges.sort();
    let mut reached = target.start;
    for r in ranges {
        if r.start > reached {
            return false;
        }
        if r.end > reached {
            reached = r.end;
            if reached >= target.end {
                return true;
            }
        }
    }
    false
}

/// The values of `key` at LSNs `<= lsn` found in `layers` (the
/// [`LayerMap::candidates`] for the read), newest first, ending with the
/// newest image. The flag is whether an image was reached.
pub fn collect_values(
    layers: &[Arc<PersistentLayer>],
    key: Key,
    lsn: Lsn,
    out: &mut Vec<(Lsn, Value)>,
) -> Result<bool, LayerError> {
    let Some(mut cont) = lsn.checked_add(1) else {
        return Err(LayerError::Misuse {
            path: PathBuf::new(),
            reason: "read at the greatest LSN".into(),
        });
    };
    // Deltas hold values in [.., cont); images strictly below `img_bound`
    // are still to try.
    let mut img_bound = cont;
    loop {
        let image_lsn = layers
            .iter()
            .filter_map(|l| l.image_lsn())
            .filter(|l| *l < img_bound)
            .max();
        let floor = image_lsn.map_or(Lsn(0), |l| Lsn(l.0 + 1));
        let mut deltas: Vec<&Arc<PersistentLayer>> = layers
            .iter()
            .filter(|l| {
                let r = l.name.lsn_range();
                l.name.is_delta() && r.start < cont && r.end > floor
            })
            .collect();
        deltas.sort_by_key(|l| std::cmp::Reverse(l.name.lsn_range().start));
        for d in deltas {
            let reader = d.reader()?;
            let LayerReader::Delta(reader) = reader.as_ref() else {
                continue;
            };
            for (at, value) in reader.get_values(key, Lsn(cont.0 - 1))? {
                if at < floor {
                    break;
                }
                let image = value.will_init();
                out.push((at, value));
                if image {
                    return Ok(true);
                }
            }
        }
        let Some(il) = image_lsn else {
            return Ok(false);
        };
        for layer in layers.iter().filter(|l| l.image_lsn() == Some(il)) {
            let reader = layer.reader()?;
            let LayerReader::Image(reader) = reader.as_ref() else {
                continue;
            };
            if let Some(version) = reader.get(key)? {
                out.push((il, version));
                return Ok(true);
            }
        }
        // No image of this key at `il`: look below it.
        cont = floor;
        img_bound = il;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        Key::twophase_file(n)
    }

    fn range(a: u32, b: u32) -> KeyRange {
        KeyRange::new(key(a), key(b))
    }

    #[test]
    fn union_coverage() {
        let target = range(10, 20);
        assert!(union_covers([range(0, 30)].into_iter(), &target));
        assert!(union_covers(
            [range(15, 20), range(5, 15)].into_iter(),
            &target
        ));
        assert!(union_covers(
            [range(10, 12), range(12, 18), range(17, 25)].into_iter(),
            &target
        ));
        // A gap, a missing start or end.
        assert!(!union_covers(
            [range(10, 14), range(15, 20)].into_iter(),
            &target
        ));
        assert!(!union_covers([range(11, 20)].into_iter(), &target));
        assert!(!union_covers([range(10, 19)].into_iter(), &target));
        assert!(!union_covers(std::iter::empty(), &target));
        assert!(union_covers(std::iter::empty(), &range(5, 5)));
    }
}
