//! Delta layers: every value of a key range over an LSN range
//! `[lsn_start, lsn_end)`, sorted by (key, LSN).

use std::ops::Range;
use std::path::Path;

use utils::Lsn;

use super::file::{EntryIter, LayerFile, LayerFileWriter, LayerKind, LayerSummary};
use super::{LayerError, LayerName};
use crate::key::{Key, KeyRange};
use crate::value::Value;

/// Writes a delta layer. `put` must be called in strictly increasing
/// (key, LSN) order; the file appears at its path only after `finish`.
pub struct DeltaLayerWriter {
    inner: LayerFileWriter,
}

impl DeltaLayerWriter {
    pub fn new(
        path: &Path,
        key_range: KeyRange,
        lsn_range: Range<Lsn>,
    ) -> Result<DeltaLayerWriter, LayerError> {
        Ok(DeltaLayerWriter {
            inner: LayerFileWriter::new(path, LayerKind::Delta, key_range, lsn_range)?,
        })
    }

    /// Target size of a data block before compression (default 32 KiB).
    pub fn set_target_block_size(&mut self, size: usize) {
        self.inner.set_target_block_size(size);
    }

    /// Add the value of `key` at `lsn`: after every earlier (key, LSN), with
    /// `key` in the key range and `lsn` in the LSN range, or an error.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<(), LayerError> {
        self.inner.put(key, lsn, value)
    }

    /// Write index, footer and header; fsync; rename into place.
    pub fn finish(self) -> Result<LayerSummary, LayerError> {
        self.inner.finish()
    }
}

/// An open delta layer. Opening reads and checks the header, footer and
/// index only; lookups read just the data blocks they need.
pub struct DeltaLayerReader {
    file: LayerFile,
}

impl DeltaLayerReader {
    pub fn open(path: &Path) -> Result<DeltaLayerReader, LayerError> {
        Ok(DeltaLayerReader {
            file: LayerFile::open(path, LayerKind::Delta)?,
        })
    }

    /// The distinct keys in `range`, in order.
    pub fn keys_in(&self, range: &KeyRange) -> Result<Vec<Key>, LayerError> {
        self.file.keys_in(range)
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn key_range(&self) -> KeyRange {
        self.file.header.key_range
    }

    pub fn lsn_range(&self) -> Range<Lsn> {
        self.file.header.lsn_range.clone()
    }

    pub fn entry_count(&self) -> u64 {
        self.file.header.entry_count
    }

    pub fn block_count(&self) -> usize {
        self.file.index.len()
    }

    /// The name this layer's file should have.
    pub fn layer_name(&self) -> LayerName {
        LayerName::Delta {
            key_range: self.key_range(),
            lsn_range: self.lsn_range(),
        }
    }

    /// The values of `key` at LSNs `<= lsn`, newest first, ending with (and
    /// including) the newest image if there is one: what reconstructing the
    /// key at `lsn` needs from this layer. Reads only the blocks that hold
    /// those values, newest first.
    pub fn get_values(&self, key: Key, lsn: Lsn) -> Result<Vec<(Lsn, Value)>, LayerError> {
        let mut out = Vec::new();
        if !self.file.header.key_range.contains(&key) {
            return Ok(out);
        }
        let index = &self.file.index;
        // Blocks [0, end) start at or before (key, lsn).
        let end = index.partition_point(|m| m.first <= (key, lsn));
        for i in (0..end).rev() {
            if index[i].last < (key, Lsn(0)) {
                break;
            }
            let entries = self.file.read_block_shared(i)?;
            for e in entries.iter().rev() {
                if e.key != key || e.lsn > lsn {
                    continue;
                }
                let image = e.value.will_init();
                out.push((e.lsn, e.value.clone()));
                if image {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Every (key, LSN, value) in order; ends after the first error.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Key, Lsn, Value), LayerError>> + '_ {
        EntryIter::new(&self.file).map(|r| r.map(|e| (e.key, e.lsn, e.value)))
    }
}
