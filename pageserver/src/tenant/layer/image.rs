//! Image layers: for a key range, each key's whole version at one LSN:
//! an image, or an unreadable version ([`Value::Unreadable`]).

use std::path::Path;

use bytes::Bytes;
use utils::Lsn;

use super::file::{EntryIter, LayerFile, LayerFileWriter, LayerKind, LayerSummary};
use super::{LayerError, LayerName};
use crate::key::{Key, KeyRange};
use crate::value::Value;

/// Writes an image layer. `put` must be called in strictly increasing key
/// order; the file appears at its path only after `finish`.
pub struct ImageLayerWriter {
    inner: LayerFileWriter,
    lsn: Lsn,
}

impl ImageLayerWriter {
    /// A layer of images at `lsn` (which must be below `Lsn::MAX`).
    pub fn new(path: &Path, key_range: KeyRange, lsn: Lsn) -> Result<ImageLayerWriter, LayerError> {
        let end = lsn
            .checked_add(1)
            .ok_or_else(|| LayerError::misuse(path, "image layer at the greatest LSN".into()))?;
        Ok(ImageLayerWriter {
            inner: LayerFileWriter::new(path, LayerKind::Image, key_range, lsn..end)?,
            lsn,
        })
    }

    /// Target size of a data block before compression (default 32 KiB).
    pub fn set_target_block_size(&mut self, size: usize) {
        self.inner.set_target_block_size(size);
    }

    /// Add the image of `key`: after every earlier key, inside the key range,
    /// or an error.
    pub fn put(&mut self, key: Key, image: Bytes) -> Result<(), LayerError> {
        self.inner.put(key, self.lsn, &Value::Image(image))
    }

    /// Add a whole version of `key` (an image or an unreadable version; a
    /// delta is refused), as [`ImageLayerWriter::put`].
    pub fn put_version(&mut self, key: Key, version: &Value) -> Result<(), LayerError> {
        if let Value::Delta(d) = version {
            return Err(LayerError::misuse(
                self.inner.path(),
                format!("{key:?}: a {} delta cannot go in an image layer", d.name()),
            ));
        }
        self.inner.put(key, self.lsn, version)
    }

    /// Write index, footer and header; fsync; rename into place.
    pub fn finish(self) -> Result<LayerSummary, LayerError> {
        self.inner.finish()
    }
}

/// An open image layer. Opening reads and checks the header, footer and
/// index only; a lookup reads one data block.
pub struct ImageLayerReader {
    file: LayerFile,
}

impl ImageLayerReader {
    pub fn open(path: &Path) -> Result<ImageLayerReader, LayerError> {
        let file = LayerFile::open(path, LayerKind::Image)?;
        // Keys are unique in an image layer: the index's blocks are ordered
        // by (key, LSN) with one LSN, so no key spans two blocks.
        Ok(ImageLayerReader { file })
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

    /// The LSN of the images.
    pub fn lsn(&self) -> Lsn {
        self.file.header.lsn_range.start
    }

    pub fn entry_count(&self) -> u64 {
        self.file.header.entry_count
    }

    pub fn block_count(&self) -> usize {
        self.file.index.len()
    }

    /// The name this layer's file should have.
    pub fn layer_name(&self) -> LayerName {
        LayerName::Image {
            key_range: self.key_range(),
            lsn: self.lsn(),
        }
    }

    fn version(&self, block: usize, key: Key, value: Value) -> Result<Value, LayerError> {
        match value {
            Value::Image(_) | Value::Unreadable(_) => Ok(value),
            Value::Delta(r) => Err(LayerError::CorruptBlock {
                path: self.file.path.clone(),
                block,
                offset: self.file.index[block].offset,
                reason: format!("{key:?} holds a {} delta in an image layer", r.name()),
            }),
        }
    }

    /// The version of `key`, if this layer has one. Reads at most one block.
    pub fn get(&self, key: Key) -> Result<Option<Value>, LayerError> {
        let index = &self.file.index;
        let i = index.partition_point(|m| m.first.0 <= key);
        if i == 0 || index[i - 1].last.0 < key {
            return Ok(None);
        }
        let block = i - 1;
        let entries = self.file.read_block_shared(block)?;
        match entries.binary_search_by(|e| e.key.cmp(&key)) {
            Ok(at) => self
                .version(block, key, entries[at].value.clone())
                .map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Every (key, version) in key order; ends after the first error.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Key, Value), LayerError>> + '_ {
        let mut block = 0usize;
        let mut seen = 0u64;
        EntryIter::new(&self.file).map(move |r| {
            let e = r?;
            // Track the block for error messages.
            while block + 1 < self.file.index.len()
                && seen >= u64::from(self.file.index[block].entry_count)
            {
                seen -= u64::from(self.file.index[block].entry_count);
                block += 1;
            }
            seen += 1;
            self.version(block, e.key, e.value).map(|v| (e.key, v))
        })
    }
}
