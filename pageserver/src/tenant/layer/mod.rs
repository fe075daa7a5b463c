//! Layers: the immutable layer files (delta and image, their format and
//! names), the in-memory layer that receives ingested WAL ([`inmemory`]),
//! and the layer map that finds the layers a read needs ([`map`]).
//!
//! A **delta layer** holds every value of a key range over an LSN range
//! `[lsn_start, lsn_end)`, sorted by (key, LSN). An **image layer** holds,
//! for a key range, each key's image at one LSN. Both are written once,
//! fsynced, renamed into place and never modified, so they can be uploaded
//! to object storage as they are and read with ranged GETs.
//!
//! # File format (version 1)
//!
//! All integers little-endian; keys are their 19-byte big-endian
//! serialisation ([`Key::to_bytes`](crate::key::Key::to_bytes)).
//!
//! ```text
//! +----------------------+ 0
//! | header (128 bytes)   |
//! +----------------------+ 128
//! | data block 0         |  independently compressed, CRC-32C in the index
//! | data block 1         |
//! | ...                  |
//! +----------------------+ index_offset
//! | index                |  block_count × 80 bytes
//! +----------------------+
//! | footer (32 bytes)    |
//! +----------------------+ file length
//! ```
//!
//! **Header** (128 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PSLAYER\0` |
//! | 8 | 2 | format version (1) |
//! | 10 | 1 | kind: 1 delta, 2 image |
//! | 11 | 1 | key size (19) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 19 | key range start (inclusive) |
//! | 35 | 19 | key range end (exclusive) |
//! | 54 | 2 | reserved, zero |
//! | 56 | 8 | LSN range start (inclusive) |
//! | 64 | 8 | LSN range end (exclusive; an image layer at L has `[L, L+1)`) |
//! | 72 | 8 | entry count |
//! | 80 | 4 | block count |
//! | 84 | 4 | reserved, zero |
//! | 88 | 8 | index offset |
//! | 96 | 28 | reserved, zero |
//! | 124 | 4 | CRC-32C of bytes 0..124 |
//!
//! **Data block**: a run of entries, each `key (19) | LSN (u64) | value
//! length (u32) | value` ([`Value::encode`](crate::value::Value::encode)),
//! in strictly increasing (key, LSN) order across the whole file. The writer
//! closes a block when the next entry would take it past the target size
//! (32 KiB uncompressed by default), so a block holds at least one entry
//! and a large value gets a block of its own. The block is stored LZ4
//! compressed (block format, no size prefix), or as it is when LZ4 does not
//! make it smaller. A key's versions may span several blocks in a delta
//! layer; in an image layer a key has one entry.
//!
//! **Index entry** (80 bytes, one per block, in file order):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 19 | first key |
//! | 19 | 19 | last key |
//! | 38 | 1 | compression: 0 none, 1 LZ4 |
//! | 39 | 1 | reserved, zero |
//! | 40 | 8 | first LSN |
//! | 48 | 8 | last LSN |
//! | 56 | 8 | block offset |
//! | 64 | 4 | stored (compressed) length |
//! | 68 | 4 | uncompressed length |
//! | 72 | 4 | entry count |
//! | 76 | 4 | CRC-32C of the stored bytes |
//!
//! **Footer** (32 bytes, at the end of the file): index offset (u64), index
//! length (u64), CRC-32C of the index (u32), block count (u32), magic
//! `PSLF`, CRC-32C of the footer's first 28 bytes.
//!
//! # Invariants a reader checks
//!
//! Opening reads the header, the footer and the index, nothing else, and
//! checks: both magics, both checksums and the index checksum; the version,
//! kind and key size; non-empty key and LSN ranges; that header and footer
//! agree; that the file length is exactly index offset + index length +
//! footer (a truncated or extended file is refused); that blocks are
//! contiguous from offset 128 to the index, non-empty, in strictly
//! increasing (key, LSN) order with first ≤ last, inside the layer's key and
//! LSN ranges; and that their entry counts add up to the header's.
//!
//! Reading a block checks its CRC-32C before decompressing, the decompressed
//! length, every entry's bounds and value encoding, the order of the
//! entries, and that the block's content matches its index entry. Any
//! mismatch is a [`LayerError::CorruptBlock`] naming the file, block and
//! offset: never a panic, never wrong data.
//!
//! # Lookups
//!
//! The index is kept in memory. A delta lookup of `(key, lsn)` binary
//! searches for the last block starting at or before `(key, lsn)` and walks
//! back while blocks can still hold `key`, stopping at the newest image. An
//! image lookup reads the one block whose key range holds the key.
//!
//! # Writing
//!
//! Writers stream blocks into `<name>.tmp` behind a placeholder header,
//! append index and footer, write the real header, fsync, rename to the
//! final name and fsync the directory. A writer dropped before `finish`
//! removes its temporary file. Names: [`LayerName`].

mod delta;
mod file;
mod image;
pub mod inmemory;
pub mod map;
mod name;

use std::io;
use std::path::{Path, PathBuf};

pub use delta::{DeltaLayerReader, DeltaLayerWriter};
pub use file::{
    LayerKind, LayerSummary, DEFAULT_BLOCK_SIZE, MAX_TARGET_BLOCK_SIZE, MAX_VALUE_SIZE,
};
pub use image::{ImageLayerReader, ImageLayerWriter};
pub use name::{LayerName, LayerNameError};

/// Errors of reading and writing layer files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer file {}: {context}: {source}", .path.display())]
    Io {
        path: PathBuf,
        context: String,
        source: io::Error,
    },
    #[error("layer file {} is corrupt: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("layer file {}: data block {block} at offset {offset} is corrupt: {reason}", .path.display())]
    CorruptBlock {
        path: PathBuf,
        block: usize,
        offset: u64,
        reason: String,
    },
    /// The writer was used wrongly (order, ranges, sizes).
    #[error("layer file {}: {reason}", .path.display())]
    Misuse { path: PathBuf, reason: String },
}

impl LayerError {
    pub(crate) fn io(path: &Path, context: &str, source: io::Error) -> LayerError {
        LayerError::Io {
            path: path.to_owned(),
            context: context.to_owned(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: String) -> LayerError {
        LayerError::Corrupt {
            path: path.to_owned(),
            reason,
        }
    }

    pub(crate) fn misuse(path: &Path, reason: String) -> LayerError {
        LayerError::Misuse {
            path: path.to_owned(),
            reason,
        }
    }

    /// Whether the file's content is damaged (as opposed to an I/O failure
    /// or a writer misuse).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            LayerError::Corrupt { .. } | LayerError::CorruptBlock { .. }
        )
    }
}
