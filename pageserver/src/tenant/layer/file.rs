//! The on-disk format shared by delta and image layers: header, compressed
//! data blocks, index and footer (see the [`super`] module documentation),
//! with a generic writer and reader that the delta and image layer types wrap.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use utils::bytes_reader::{Malformed, Reader, ShortInput};
use utils::Lsn;

use super::LayerError;
use crate::key::{Key, KeyRange};
use crate::value::Value;

pub(crate) const MAGIC: [u8; 8] = *b"PSLAYER\0";
pub(crate) const FOOTER_MAGIC: [u8; 4] = *b"PSLF";
pub(crate) const FORMAT_VERSION: u16 = 1;
pub(crate) const HEADER_SIZE: usize = 128;
pub(crate) const FOOTER_SIZE: usize = 32;
pub(crate) const INDEX_ENTRY_SIZE: usize = 80;
/// Bytes of an entry before its value: key, LSN, value length.
const ENTRY_HEADER_SIZE: usize = Key::SIZE + 8 + 4;

/// Default target size of a data block before compression.
pub const DEFAULT_BLOCK_SIZE: usize = 32 * 1024;
/// The largest encoded value a layer holds.
pub const MAX_VALUE_SIZE: usize = 32 * 1024 * 1024;
/// The largest target block size.
pub const MAX_TARGET_BLOCK_SIZE: usize = 8 * 1024 * 1024;
/// The largest uncompressed block a reader accepts.
const MAX_RAW_BLOCK: usize = MAX_TARGET_BLOCK_SIZE + MAX_VALUE_SIZE + ENTRY_HEADER_SIZE;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_LZ4: u8 = 1;

/// The two kinds of layer file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    Delta = 1,
    Image = 2,
}

impl LayerKind {
    fn from_u8(v: u8) -> Option<LayerKind> {
        match v {
            1 => Some(LayerKind::Delta),
            2 => Some(LayerKind::Image),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            LayerKind::Delta => "delta",
            LayerKind::Image => "image",
        }
    }
}

/// The fixed header at offset 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: LayerKind,
    pub key_range: KeyRange,
    pub lsn_range: Range<Lsn>,
    pub entry_count: u64,
    pub block_count: u32,
    pub index_offset: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10] = self.kind as u8;
        b[11] = Key::SIZE as u8;
        b[16..35].copy_from_slice(&self.key_range.start.to_bytes());
        b[35..54].copy_from_slice(&self.key_range.end.to_bytes());
        b[56..64].copy_from_slice(&self.lsn_range.start.0.to_le_bytes());
        b[64..72].copy_from_slice(&self.lsn_range.end.0.to_le_bytes());
        b[72..80].copy_from_slice(&self.entry_count.to_le_bytes());
        b[80..84].copy_from_slice(&self.block_count.to_le_bytes());
        b[88..96].copy_from_slice(&self.index_offset.to_le_bytes());
        let crc = crc32c::crc32c(&b[..HEADER_SIZE - 4]);
        b[HEADER_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, Malformed> {
        let (covered, crc) = split_crc(b, "layer header")?;
        let mut r = Reader::new(covered, "layer header");
        if r.array()? != MAGIC {
            return Err("bad magic in the header: not a layer file".into());
        }
        let actual = crc32c::crc32c(covered);
        if crc != actual {
            return Err(format!(
                "header checksum mismatch (stored {crc:08X}, computed {actual:08X})"
            )
            .into());
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(format!(
                "unsupported format version {version} (this build reads {FORMAT_VERSION})"
            )
            .into());
        }
        let kind = r.u8()?;
        let kind = LayerKind::from_u8(kind).ok_or_else(|| format!("unknown layer kind {kind}"))?;
        let key_size = r.u8()?;
        if usize::from(key_size) != Key::SIZE {
            return Err(format!("key size {key_size} (this build uses {})", Key::SIZE).into());
        }
        let reserved_a: [u8; 4] = r.array()?;
        let (start, end) = (Key::read(&mut r)?, Key::read(&mut r)?);
        let reserved_b: [u8; 2] = r.array()?;
        let lsn_range = Lsn(r.u64()?)..Lsn(r.u64()?);
        let entry_count = r.u64()?;
        let block_count = r.u32()?;
        let reserved_c: [u8; 4] = r.array()?;
        let index_offset = r.u64()?;
        let reserved_d = r.rest();
        let reserved: [&[u8]; 4] = [&reserved_a, &reserved_b, &reserved_c, reserved_d];
        if reserved.iter().any(|r| r.iter().any(|&x| x != 0)) {
            return Err("reserved header bytes are not zero".into());
        }
        if start >= end {
            return Err(format!("empty key range {start}-{end}").into());
        }
        if lsn_range.start >= lsn_range.end {
            return Err(format!("empty LSN range {lsn_range:?}").into());
        }
        if kind == LayerKind::Image && lsn_range.end.0 != lsn_range.start.0 + 1 {
            return Err(format!("image layer with LSN range {lsn_range:?}").into());
        }
        Ok(Header {
            kind,
            key_range: KeyRange::new(start, end),
            lsn_range,
            entry_count,
            block_count,
            index_offset,
        })
    }
}

/// `b` without its last 4 bytes, and the CRC-32C of the rest stored in them.
fn split_crc<'a>(b: &'a [u8], what: &'static str) -> Result<(&'a [u8], u32), ShortInput> {
    let mut r = Reader::new(b, what);
    let covered = r.bytes(b.len().saturating_sub(4))?;
    Ok((covered, r.u32()?))
}

/// The fixed footer at the end of the file.
struct Footer {
    index_offset: u64,
    index_len: u64,
    index_crc: u32,
    block_count: u32,
}

impl Footer {
    fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.index_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.index_crc.to_le_bytes());
        b[20..24].copy_from_slice(&self.block_count.to_le_bytes());
        b[24..28].copy_from_slice(&FOOTER_MAGIC);
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; FOOTER_SIZE]) -> Result<Footer, Malformed> {
        let (covered, crc) = split_crc(b, "layer footer")?;
        let mut r = Reader::new(covered, "layer footer");
        let footer = Footer {
            index_offset: r.u64()?,
            index_len: r.u64()?,
            index_crc: r.u32()?,
            block_count: r.u32()?,
        };
        if r.array()? != FOOTER_MAGIC {
            return Err("no footer at the end of the file (truncated or not a layer file)".into());
        }
        r.finish()?;
        let actual = crc32c::crc32c(covered);
        if crc != actual {
            return Err(format!(
                "footer checksum mismatch (stored {crc:08X}, computed {actual:08X})"
            )
            .into());
        }
        Ok(footer)
    }
}

/// One data block as the index describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockMeta {
    pub first: (Key, Lsn),
    pub last: (Key, Lsn),
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub entry_count: u32,
    pub compression: u8,
    pub crc: u32,
}

impl BlockMeta {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.first.0.to_bytes());
        out.extend_from_slice(&self.last.0.to_bytes());
        out.push(self.compression);
        out.push(0);
        out.extend_from_slice(&self.first.1 .0.to_le_bytes());
        out.extend_from_slice(&self.last.1 .0.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.entry_count.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
    }

    /// The next [`INDEX_ENTRY_SIZE`] bytes of `r`.
    fn read(r: &mut Reader<'_>) -> Result<BlockMeta, Malformed> {
        let (first_key, last_key) = (Key::read(r)?, Key::read(r)?);
        let compression = r.u8()?;
        let reserved = r.u8()?;
        if reserved != 0 {
            return Err(format!("index entry reserved byte is {reserved}").into());
        }
        Ok(BlockMeta {
            first: (first_key, Lsn(r.u64()?)),
            last: (last_key, Lsn(r.u64()?)),
            compression,
            offset: r.u64()?,
            stored_len: r.u32()?,
            raw_len: r.u32()?,
            entry_count: r.u32()?,
            crc: r.u32()?,
        })
    }

    /// The whole index: `count` entries and nothing else.
    fn read_index(b: &[u8], count: u32) -> Result<Vec<BlockMeta>, Malformed> {
        let mut r = Reader::new(b, "layer index");
        let index = (0..count)
            .map(|_| BlockMeta::read(&mut r))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(index)
    }
}

/// The header of an entry of a data block: key, LSN and value length.
fn read_entry_header(r: &mut Reader<'_>) -> Result<(Key, Lsn, usize), ShortInput> {
    let key = Key::read(r)?;
    let lsn = Lsn(r.u64()?);
    let len = r.u32()? as usize;
    Ok((key, lsn, len))
}

/// What a finished writer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSummary {
    pub path: PathBuf,
    pub kind: LayerKind,
    pub key_range: KeyRange,
    pub lsn_range: Range<Lsn>,
    pub entry_count: u64,
    pub block_count: u32,
    pub file_size: u64,
}

/// Writes entries in (key, LSN) order into a temporary file, and renames it
/// into place when finished. An unfinished writer removes its temporary file
/// when dropped.
pub(crate) struct LayerFileWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    kind: LayerKind,
    key_range: KeyRange,
    lsn_range: Range<Lsn>,
    target_block_size: usize,
    block: Vec<u8>,
    block_first: Option<(Key, Lsn)>,
    block_entries: u32,
    last: Option<(Key, Lsn)>,
    index: Vec<BlockMeta>,
    offset: u64,
    entry_count: u64,
}

impl LayerFileWriter {
    /// Where the finished file goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn new(
        path: &Path,
        kind: LayerKind,
        key_range: KeyRange,
        lsn_range: Range<Lsn>,
    ) -> Result<LayerFileWriter, LayerError> {
        if key_range.is_empty() {
            return Err(LayerError::misuse(
                path,
                format!("empty key range {key_range}"),
            ));
        }
        if lsn_range.start >= lsn_range.end {
            return Err(LayerError::misuse(
                path,
                format!("empty LSN range {lsn_range:?}"),
            ));
        }
        let mut tmp_name = path
            .file_name()
            .ok_or_else(|| LayerError::misuse(path, "the path has no file name".into()))?
            .to_os_string();
        tmp_name.push(".tmp");
        let tmp_path = path.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(|e| LayerError::io(&tmp_path, "creating the temporary file", e))?;
        let mut w = LayerFileWriter {
            path: path.to_owned(),
            tmp_path,
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            kind,
            key_range,
            lsn_range,
            target_block_size: DEFAULT_BLOCK_SIZE,
            block: Vec::new(),
            block_first: None,
            block_entries: 0,
            last: None,
            index: Vec::new(),
            offset: HEADER_SIZE as u64,
            entry_count: 0,
        };
        // A placeholder; the real header is written by `finish`.
        w.write_all(&[0u8; HEADER_SIZE])?;
        Ok(w)
    }

    pub fn set_target_block_size(&mut self, size: usize) {
        self.target_block_size = size.clamp(1, MAX_TARGET_BLOCK_SIZE);
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), LayerError> {
        let Some(file) = self.file.as_mut() else {
            return Err(LayerError::misuse(
                &self.path,
                "the writer has failed".into(),
            ));
        };
        if let Err(e) = file.write_all(buf) {
            self.file = None;
            return Err(LayerError::io(&self.tmp_path, "writing", e));
        }
        Ok(())
    }

    pub fn put(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<(), LayerError> {
        if !self.key_range.contains(&key) {
            return Err(LayerError::misuse(
                &self.path,
                format!(
                    "key {key:?} is outside the layer's key range {}",
                    self.key_range
                ),
            ));
        }
        if !self.lsn_range.contains(&lsn) {
            return Err(LayerError::misuse(
                &self.path,
                format!(
                    "LSN {lsn} is outside the layer's LSN range {:?}",
                    self.lsn_range
                ),
            ));
        }
        if let Some(last) = self.last {
            if (key, lsn) <= last {
                return Err(LayerError::misuse(
                    &self.path,
                    format!(
                        "put out of order: ({key:?}, {lsn}) after ({:?}, {}); entries must be in strictly increasing (key, LSN) order",
                        last.0, last.1
                    ),
                ));
            }
        }
        let len = value.encoded_len();
        if len > MAX_VALUE_SIZE {
            return Err(LayerError::misuse(
                &self.path,
                format!("value of {len} bytes at {key:?} exceeds the limit of {MAX_VALUE_SIZE}"),
            ));
        }
        if self.file.is_none() {
            return Err(LayerError::misuse(
                &self.path,
                "the writer has failed".into(),
            ));
        }
        if !self.block.is_empty()
            && self.block.len() + ENTRY_HEADER_SIZE + len > self.target_block_size
        {
            self.flush_block()?;
        }
        self.block.extend_from_slice(&key.to_bytes());
        self.block.extend_from_slice(&lsn.0.to_le_bytes());
        self.block.extend_from_slice(&(len as u32).to_le_bytes());
        self.block.extend_from_slice(&value.encode());
        self.block_first.get_or_insert((key, lsn));
        self.block_entries += 1;
        self.last = Some((key, lsn));
        self.entry_count += 1;
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), LayerError> {
        let (Some(first), Some(last)) = (self.block_first, self.last) else {
            return Ok(());
        };
        let raw = std::mem::take(&mut self.block);
        let compressed = lz4_flex::block::compress(&raw);
        let (compression, stored) = if compressed.len() < raw.len() {
            (COMPRESSION_LZ4, compressed)
        } else {
            (COMPRESSION_NONE, raw.clone())
        };
        let meta = BlockMeta {
            first,
            last,
            offset: self.offset,
            stored_len: stored.len() as u32,
            raw_len: raw.len() as u32,
            entry_count: self.block_entries,
            compression,
            crc: crc32c::crc32c(&stored),
        };
        self.write_all(&stored)?;
        self.offset += stored.len() as u64;
        self.index.push(meta);
        self.block = raw;
        self.block.clear();
        self.block_first = None;
        self.block_entries = 0;
        Ok(())
    }

    /// Write the index, footer and header, fsync, and rename into place.
    pub fn finish(mut self) -> Result<LayerSummary, LayerError> {
        self.flush_block()?;
        let block_count = u32::try_from(self.index.len())
            .map_err(|_| LayerError::misuse(&self.path, "too many blocks".into()))?;
        let mut index = Vec::with_capacity(self.index.len() * INDEX_ENTRY_SIZE);
        for meta in &self.index {
            meta.encode(&mut index);
        }
        let index_offset = self.offset;
        let footer = Footer {
            index_offset,
            index_len: index.len() as u64,
            index_crc: crc32c::crc32c(&index),
            block_count,
        };
        self.write_all(&index)?;
        self.write_all(&footer.encode())?;
        let header = Header {
            kind: self.kind,
            key_range: self.key_range,
            lsn_range: self.lsn_range.clone(),
            entry_count: self.entry_count,
            block_count,
            index_offset,
        };
        let Some(buf) = self.file.take() else {
            return Err(LayerError::misuse(
                &self.path,
                "the writer has failed".into(),
            ));
        };
        let tmp = self.tmp_path.clone();
        let mut file = buf
            .into_inner()
            .map_err(|e| LayerError::io(&tmp, "writing", e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&header.encode()))
            .map_err(|e| LayerError::io(&tmp, "writing the header", e))?;
        file.sync_all()
            .map_err(|e| LayerError::io(&tmp, "fsync", e))?;
        let file_size = index_offset + index.len() as u64 + FOOTER_SIZE as u64;
        drop(file);
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| LayerError::io(&self.path, "renaming the temporary file into place", e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| LayerError::io(dir, "fsync of the directory", e))?;
        }
        Ok(LayerSummary {
            path: self.path.clone(),
            kind: self.kind,
            key_range: self.key_range,
            lsn_range: self.lsn_range.clone(),
            entry_count: self.entry_count,
            block_count,
            file_size,
        })
    }
}

impl Drop for LayerFileWriter {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp_path.exists() {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// One decoded entry of a data block.
pub(crate) struct Entry {
    pub key: Key,
    pub lsn: Lsn,
    pub value: Value,
}

/// An open layer file: its header and index, validated.
pub(crate) struct LayerFile {
    pub path: PathBuf,
    file: File,
    pub header: Header,
    pub index: Vec<BlockMeta>,
    /// The last data blocks decoded by point reads, newest last: reads of
    /// neighbouring keys (relation sizes listed in order, a scan's pages)
    /// decode a block once, not once per key.
    recent: std::sync::Mutex<std::collections::VecDeque<(usize, std::sync::Arc<Vec<Entry>>)>>,
}

/// Decoded blocks kept per layer file ([`LayerFile::read_block_shared`]):
/// at most this many, each at most a block's raw size (32 KiB by default).
const RECENT_BLOCKS: usize = 4;

impl LayerFile {
    pub fn open(path: &Path, expected: LayerKind) -> Result<LayerFile, LayerError> {
        let corrupt = |reason: String| LayerError::corrupt(path, reason);
        let file = File::open(path).map_err(|e| LayerError::io(path, "opening", e))?;
        let len = file
            .metadata()
            .map_err(|e| LayerError::io(path, "reading metadata", e))?
            .len();
        if len < (HEADER_SIZE + FOOTER_SIZE) as u64 {
            return Err(corrupt(format!(
                "the file is {len} bytes, shorter than a header and a footer (truncated?)"
            )));
        }
        let mut hb = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut hb, 0)
            .map_err(|e| LayerError::io(path, "reading the header", e))?;
        let header = Header::decode(&hb).map_err(|e| corrupt(e.to_string()))?;
        if header.kind != expected {
            return Err(corrupt(format!(
                "it is a {} layer, expected a {} layer",
                header.kind.name(),
                expected.name()
            )));
        }
        let mut fb = [0u8; FOOTER_SIZE];
        file.read_exact_at(&mut fb, len - FOOTER_SIZE as u64)
            .map_err(|e| LayerError::io(path, "reading the footer", e))?;
        let footer = Footer::decode(&fb).map_err(|e| corrupt(e.to_string()))?;
        if footer.index_offset != header.index_offset || footer.block_count != header.block_count {
            return Err(corrupt(format!(
                "header and footer disagree (index at {} / {}, {} / {} blocks)",
                header.index_offset, footer.index_offset, header.block_count, footer.block_count
            )));
        }
        let expected_index_len = u64::from(footer.block_count) * INDEX_ENTRY_SIZE as u64;
        if footer.index_len != expected_index_len {
            return Err(corrupt(format!(
                "index of {} bytes for {} blocks",
                footer.index_len, footer.block_count
            )));
        }
        let expected_len = footer
            .index_offset
            .checked_add(footer.index_len)
            .and_then(|x| x.checked_add(FOOTER_SIZE as u64));
        if footer.index_offset < HEADER_SIZE as u64 || expected_len != Some(len) {
            return Err(corrupt(format!(
                "the file is {len} bytes but its footer places the index at {} ({} bytes): truncated or overwritten",
                footer.index_offset, footer.index_len
            )));
        }
        // The index fits in the file, whose size we know, so this allocation
        // is bounded by the file's size.
        let mut ib = vec![0u8; footer.index_len as usize];
        file.read_exact_at(&mut ib, footer.index_offset)
            .map_err(|e| LayerError::io(path, "reading the index", e))?;
        let crc = crc32c::crc32c(&ib);
        if crc != footer.index_crc {
            return Err(corrupt(format!(
                "index checksum mismatch (stored {:08X}, computed {crc:08X})",
                footer.index_crc
            )));
        }
        let index = BlockMeta::read_index(&ib, footer.block_count)
            .map_err(|e| corrupt(format!("index: {e}")))?;
        validate_index(&header, &index).map_err(|e| corrupt(format!("index: {e}")))?;
        Ok(LayerFile {
            path: path.to_owned(),
            file,
            header,
            index,
            recent: Default::default(),
        })
    }

    /// The distinct keys in `range`, in order, reading only the data
    /// blocks whose keys overlap it.
    pub fn keys_in(&self, range: &KeyRange) -> Result<Vec<Key>, LayerError> {
        let mut out: Vec<Key> = Vec::new();
        for (i, meta) in self.index.iter().enumerate() {
            if meta.last.0 < range.start {
                continue;
            }
            if meta.first.0 >= range.end {
                break;
            }
            for entry in self.read_block(i)? {
                if range.contains(&entry.key) && out.last() != Some(&entry.key) {
                    out.push(entry.key);
                }
            }
        }
        Ok(out)
    }

    /// Data block `i`, decoded, from the few kept since their last point
    /// read or read now ([`Self::read_block`]).
    pub fn read_block_shared(&self, i: usize) -> Result<std::sync::Arc<Vec<Entry>>, LayerError> {
        {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, entries)) = recent.iter().find(|(b, _)| *b == i) {
                return Ok(entries.clone());
            }
        }
        let entries = std::sync::Arc::new(self.read_block(i)?);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if !recent.iter().any(|(b, _)| *b == i) {
            if recent.len() == RECENT_BLOCKS {
                recent.pop_front();
            }
            recent.push_back((i, entries.clone()));
        }
        Ok(entries)
    }

    /// Read, check and decode data block `i`.
    pub fn read_block(&self, i: usize) -> Result<Vec<Entry>, LayerError> {
        let Some(meta) = self.index.get(i) else {
            return Err(LayerError::corrupt(
                &self.path,
                format!("no data block {i}"),
            ));
        };
        let bad = |reason: String| LayerError::CorruptBlock {
            path: self.path.clone(),
            block: i,
            offset: meta.offset,
            reason,
        };
        let mut stored = vec![0u8; meta.stored_len as usize];
        self.file
            .read_exact_at(&mut stored, meta.offset)
            .map_err(|e| LayerError::io(&self.path, &format!("reading data block {i}"), e))?;
        let crc = crc32c::crc32c(&stored);
        if crc != meta.crc {
            return Err(bad(format!(
                "checksum mismatch (stored {:08X}, computed {crc:08X})",
                meta.crc
            )));
        }
        let raw = match meta.compression {
            COMPRESSION_NONE => stored,
            COMPRESSION_LZ4 => {
                let mut raw = vec![0u8; meta.raw_len as usize];
                let n = lz4_flex::block::decompress_into(&stored, &mut raw)
                    .map_err(|e| bad(format!("decompression failed: {e}")))?;
                if n != raw.len() {
                    return Err(bad(format!(
                        "decompressed to {n} bytes, expected {}",
                        meta.raw_len
                    )));
                }
                raw
            }
            c => return Err(bad(format!("unknown compression {c}"))),
        };
        let raw = Bytes::from(raw);
        // Checked against the block's size when the file was opened;
        // bounded again here so that no count read from disk sizes an
        // allocation beyond the bytes at hand.
        let mut entries =
            Vec::with_capacity((meta.entry_count as usize).min(raw.len() / ENTRY_HEADER_SIZE));
        let mut r = Reader::new(&raw, "data block");
        while r.remaining() > 0 {
            let pos = r.position();
            let (key, lsn, vlen) = read_entry_header(&mut r)
                .map_err(|_| bad(format!("truncated entry at byte {pos}")))?;
            let value = r
                .bytes(vlen)
                .map_err(|_| bad(format!("entry at byte {pos} overruns the block")))?;
            let value = Value::decode_bytes(raw.slice_ref(value))
                .map_err(|e| bad(format!("entry {key:?} @ {lsn}: {e}")))?;
            if !self.header.key_range.contains(&key) || !self.header.lsn_range.contains(&lsn) {
                return Err(bad(format!(
                    "entry {key:?} @ {lsn} is outside the layer's ranges"
                )));
            }
            if let Some(prev) = entries.last().map(|e: &Entry| (e.key, e.lsn)) {
                if (key, lsn) <= prev {
                    return Err(bad(format!("entries out of order at {key:?} @ {lsn}")));
                }
            }
            entries.push(Entry { key, lsn, value });
        }
        let ends = entries
            .first()
            .map(|e| (e.key, e.lsn))
            .zip(entries.last().map(|e| (e.key, e.lsn)));
        if entries.len() != meta.entry_count as usize || ends != Some((meta.first, meta.last)) {
            return Err(bad(format!(
                "content ({} entries) does not match the index ({} entries)",
                entries.len(),
                meta.entry_count
            )));
        }
        Ok(entries)
    }
}

/// The most bytes a block of `raw_len` bytes may take stored: LZ4's worst
/// case for incompressible data is slightly larger than the input.
fn max_stored_len(raw_len: usize) -> usize {
    raw_len + raw_len / 255 + 16
}

fn validate_index(header: &Header, index: &[BlockMeta]) -> Result<(), String> {
    let mut offset = HEADER_SIZE as u64;
    let mut entries = 0u64;
    let mut prev_last: Option<(Key, Lsn)> = None;
    for (i, m) in index.iter().enumerate() {
        if m.offset != offset {
            return Err(format!(
                "block {i} at offset {}, expected {offset}",
                m.offset
            ));
        }
        if m.entry_count == 0 || m.stored_len == 0 {
            return Err(format!("block {i} is empty"));
        }
        if m.raw_len as usize > MAX_RAW_BLOCK
            || m.stored_len as usize > max_stored_len(m.raw_len as usize)
            || (m.compression == COMPRESSION_NONE && m.raw_len != m.stored_len)
        {
            return Err(format!(
                "block {i} has impossible lengths: {} bytes stored, {} raw",
                m.stored_len, m.raw_len
            ));
        }
        // Every entry has a header: a count that cannot fit is corrupt
        // (and must not size an allocation).
        if m.entry_count as usize > m.raw_len as usize / ENTRY_HEADER_SIZE {
            return Err(format!(
                "block {i} claims {} entries in {} bytes",
                m.entry_count, m.raw_len
            ));
        }
        if m.first > m.last || prev_last.is_some_and(|p| p >= m.first) {
            return Err(format!("block {i} is out of order"));
        }
        for (k, l) in [m.first, m.last] {
            if !header.key_range.contains(&k) || !header.lsn_range.contains(&l) {
                return Err(format!(
                    "block {i} holds {k:?} @ {l}, outside the layer's ranges"
                ));
            }
        }
        offset += u64::from(m.stored_len);
        entries += u64::from(m.entry_count);
        prev_last = Some(m.last);
    }
    if offset != header.index_offset {
        return Err(format!(
            "data blocks end at {offset}, but the index starts at {}",
            header.index_offset
        ));
    }
    if entries != header.entry_count {
        return Err(format!(
            "blocks hold {entries} entries, the header says {}",
            header.entry_count
        ));
    }
    Ok(())
}

/// Iterates over every entry of a layer file, block by block. After an
/// error it ends.
pub(crate) struct EntryIter<'a> {
    file: &'a LayerFile,
    next_block: usize,
    entries: std::vec::IntoIter<Entry>,
    failed: bool,
}

impl<'a> EntryIter<'a> {
    pub fn new(file: &'a LayerFile) -> EntryIter<'a> {
        EntryIter {
            file,
            next_block: 0,
            entries: Vec::new().into_iter(),
            failed: false,
        }
    }
}

impl Iterator for EntryIter<'_> {
    type Item = Result<Entry, LayerError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(e) = self.entries.next() {
                return Some(Ok(e));
            }
            if self.next_block >= self.file.index.len() {
                return None;
            }
            match self.file.read_block(self.next_block) {
                Ok(entries) => {
                    self.next_block += 1;
                    self.entries = entries.into_iter();
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
