//! What the pageserver stores at a `(Key, Lsn)`.
//!
//! A [`Value`] is an **image** (a full 8 KiB page, or a small blob such
//! as a relation size or a directory listing), a **delta**: a
//! [`RustRecord`], a change the pageserver applies itself in Rust: a WAL
//! record of a resource manager with a Rust redo ([`pg_redo`]: heap, heap2,
//! B-tree, sequences), or one of the non-page changes (CLOG, visibility map,
//! multixacts) whose records carry no image (docs/design.md), or an
//! **unreadable** version: a record changed the page without an image
//! and the pageserver has no redo for it. A page is reconstructed from the
//! newest image at or below the requested LSN and the deltas above it,
//! applied oldest first; a read that meets an unreadable version first
//! fails, naming the record, and never serves an older version instead.
//!
//! Each delta applies to **one page**: the producer (WAL ingest) splits a
//! record's changes by page. [`RustRecord::apply`] checks that every item it
//! changes lies on one page, and refuses otherwise rather than wrapping into
//! the wrong place.
//!
//! Multi-byte values inside SLRU pages (multixact offsets, member xids and
//! flag words) are in the byte order of the platform PostgreSQL runs on:
//! little-endian (x86-64, AArch64).
//!
//! # Encoding (version 1)
//!
//! Compact and self-describing; all integers little-endian:
//!
//! ```text
//! u8 version (= 1)
//! u8 tag: 0 = image, 1 = delta, 2 = unreadable
//! image: the bytes, to the end
//! unreadable: u64 LSN of the record, u8 rmgr id, u8 info
//! delta: u8 record tag, then
//!   1 ClogSetStatus     u8 status (1 committed, 2 aborted, 3 sub-committed), u32 n, n × u32 xid
//!   2 VmClearBits       u8 all_visible (0|1), u32 n, n × u32 heap block
//!   3 MultixactOffset   u32 multi, u32 offset
//!   4 MultixactMembers  u32 first_offset, u32 n, n × (u32 xid, u8 status 0..=5)
//!   5 WalRecord         u64 start LSN, u64 end LSN, u8 block id, u8 will_init (0|1),
//!                       the whole WAL record (XLogRecord header and body), to the end
//! ```
//!
//! [`Value::decode`] rejects unknown versions and tags, counts that exceed
//! the input, bad flags and trailing bytes, with an error; it never panics.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_format::constants::rmgr_name;
use postgres_format::wal::DecodedRecord;
use utils::bytes_reader::{Reader, ShortInput, TrailingBytes};
use utils::Lsn;

pub use postgres_format::constants::BLCKSZ;

/// Transactions per CLOG page: 2 bits each (`CLOG_XACTS_PER_PAGE`).
pub const CLOG_XACTS_PER_PAGE: u32 = (BLCKSZ * 4) as u32;
/// Bytes of a visibility-map page used for the map: `BLCKSZ` less the
/// MAXALIGNed page header (`MAPSIZE`).
pub const VM_MAPSIZE: usize = BLCKSZ - 24;
/// Offset of the map inside a visibility-map page (`PageGetContents`).
pub const VM_MAP_OFFSET: usize = 24;
/// Heap blocks per visibility-map page, 2 bits each (`HEAPBLOCKS_PER_PAGE`).
pub const VM_HEAPBLOCKS_PER_PAGE: u32 = (VM_MAPSIZE * 4) as u32;
/// `VISIBILITYMAP_ALL_VISIBLE`.
pub const VM_ALL_VISIBLE: u8 = 0x01;
/// `VISIBILITYMAP_ALL_FROZEN`.
pub const VM_ALL_FROZEN: u8 = 0x02;
/// Multixact offsets per page, 4 bytes each (`MULTIXACT_OFFSETS_PER_PAGE`).
pub const MULTIXACT_OFFSETS_PER_PAGE: u32 = (BLCKSZ / 4) as u32;
/// Members per member group (`MULTIXACT_MEMBERS_PER_MEMBERGROUP`).
pub const MULTIXACT_MEMBERS_PER_GROUP: u32 = 4;
/// Bytes of a member group: 4 flag bytes and 4 xids (`MULTIXACT_MEMBERGROUP_SIZE`).
pub const MULTIXACT_MEMBERGROUP_SIZE: u32 = 20;
/// Member groups per page (`MULTIXACT_MEMBERGROUPS_PER_PAGE`).
pub const MULTIXACT_MEMBERGROUPS_PER_PAGE: u32 = BLCKSZ as u32 / MULTIXACT_MEMBERGROUP_SIZE;
/// Members per page (`MULTIXACT_MEMBERS_PER_PAGE`).
pub const MULTIXACT_MEMBERS_PER_PAGE: u32 =
    MULTIXACT_MEMBERGROUPS_PER_PAGE * MULTIXACT_MEMBERS_PER_GROUP;

const ENCODING_VERSION: u8 = 1;
const TAG_IMAGE: u8 = 0;
const TAG_DELTA: u8 = 1;
const TAG_UNREADABLE: u8 = 2;
const REC_CLOG: u8 = 1;
const REC_VM: u8 = 2;
const REC_MXOFF: u8 = 3;
const REC_MXMEM: u8 = 4;
const REC_WAL: u8 = 5;

/// A stored version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// The whole value: a page, or a small blob.
    Image(Bytes),
    /// A change applied on top of the previous version.
    Delta(RustRecord),
    /// A version that cannot be reconstructed: a WAL record changed the
    /// page without an image, and the pageserver has no redo for it. Reads
    /// of this version (and of later ones up to the next image) fail; it
    /// never falls back to an older version.
    Unreadable(UnreadableRecord),
}

/// The WAL record that made a page version unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnreadableRecord {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Its resource manager id and info byte.
    pub rmgr: u8,
    pub info: u8,
}

impl std::fmt::Display for UnreadableRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rmgr = postgres_format::constants::rmgr_name(self.rmgr).unwrap_or("custom");
        write!(
            f,
            "the WAL record at {} (rmgr {rmgr}, info {:#04x}) changed it without a page image, and the pageserver has no redo for it",
            self.lsn, self.info
        )
    }
}

/// Transaction status in the CLOG (`XidStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClogStatus {
    Committed = 1,
    Aborted = 2,
    SubCommitted = 3,
}

impl ClogStatus {
    pub fn from_u8(v: u8) -> Option<ClogStatus> {
        match v {
            1 => Some(ClogStatus::Committed),
            2 => Some(ClogStatus::Aborted),
            3 => Some(ClogStatus::SubCommitted),
            _ => None,
        }
    }
}

/// `TRANSACTION_STATUS_IN_PROGRESS`.
pub const CLOG_IN_PROGRESS: u8 = 0;

/// A multixact member's lock mode (`MultiXactStatus`, 0..=5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiXactStatus {
    ForKeyShare = 0,
    ForShare = 1,
    ForNoKeyUpdate = 2,
    ForUpdate = 3,
    NoKeyUpdate = 4,
    Update = 5,
}

impl MultiXactStatus {
    pub fn from_u8(v: u8) -> Option<MultiXactStatus> {
        Some(match v {
            0 => MultiXactStatus::ForKeyShare,
            1 => MultiXactStatus::ForShare,
            2 => MultiXactStatus::ForNoKeyUpdate,
            3 => MultiXactStatus::ForUpdate,
            4 => MultiXactStatus::NoKeyUpdate,
            5 => MultiXactStatus::Update,
            _ => return None,
        })
    }
}

/// A change to one page that the pageserver applies in Rust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RustRecord {
    /// A PostgreSQL WAL record of a resource manager with a Rust redo
    /// ([`pg_redo`]), applied to its block `block_id`. With `will_init`,
    /// the record initialises the page: no older version is needed.
    WalRecord {
        start_lsn: Lsn,
        end_lsn: Lsn,
        block_id: u8,
        will_init: bool,
        record: Bytes,
    },
    /// Set the status of transactions that all lie on one CLOG page.
    ClogSetStatus { xids: Vec<u32>, status: ClogStatus },
    /// Clear visibility-map bits of heap blocks that all map to one VM page:
    /// both bits when `all_visible`, otherwise only all-frozen.
    VmClearBits {
        heap_blocks: Vec<u32>,
        all_visible: bool,
    },
    /// Set the member offset of one multixact.
    MultixactOffset { multi: u32, offset: u32 },
    /// Store members at consecutive member offsets from `first_offset`, all
    /// on one members page.
    MultixactMembers {
        first_offset: u32,
        members: Vec<(u32, MultiXactStatus)>,
    },
}

/// Bytes that are not an encoded [`Value`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed value: {0}")]
pub struct ValueDecodeError(pub String);

impl From<ShortInput> for ValueDecodeError {
    fn from(e: ShortInput) -> Self {
        ValueDecodeError(format!(
            "truncated: {} bytes needed at offset {}, only {} left",
            e.needed, e.offset, e.available
        ))
    }
}

impl From<TrailingBytes> for ValueDecodeError {
    fn from(e: TrailingBytes) -> Self {
        ValueDecodeError(format!(
            "{} trailing bytes after the value at offset {}",
            e.extra, e.offset
        ))
    }
}

/// A delta that cannot be applied to one page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply {record}: {reason}")]
pub struct ApplyError {
    pub record: &'static str,
    pub reason: String,
}

impl Value {
    /// Whether this value needs no older version (an image, or an
    /// unreadable version, which no older version can stand in for).
    pub fn will_init(&self) -> bool {
        match self {
            Value::Image(_) | Value::Unreadable(_) => true,
            Value::Delta(delta) => delta.will_init(),
        }
    }

    /// The encoding described in the module documentation.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u8(ENCODING_VERSION);
        match self {
            Value::Image(img) => {
                out.put_u8(TAG_IMAGE);
                out.put_slice(img);
            }
            Value::Unreadable(u) => {
                out.put_u8(TAG_UNREADABLE);
                out.put_u64_le(u.lsn.0);
                out.put_u8(u.rmgr);
                out.put_u8(u.info);
            }
            Value::Delta(rec) => {
                out.put_u8(TAG_DELTA);
                match rec {
                    RustRecord::WalRecord {
                        start_lsn,
                        end_lsn,
                        block_id,
                        will_init,
                        record,
                    } => {
                        out.put_u8(REC_WAL);
                        out.put_u64_le(start_lsn.0);
                        out.put_u64_le(end_lsn.0);
                        out.put_u8(*block_id);
                        out.put_u8(u8::from(*will_init));
                        out.put_slice(record);
                    }
                    RustRecord::ClogSetStatus { xids, status } => {
                        out.put_u8(REC_CLOG);
                        out.put_u8(*status as u8);
                        put_u32s(&mut out, xids);
                    }
                    RustRecord::VmClearBits {
                        heap_blocks,
                        all_visible,
                    } => {
                        out.put_u8(REC_VM);
                        out.put_u8(u8::from(*all_visible));
                        put_u32s(&mut out, heap_blocks);
                    }
                    RustRecord::MultixactOffset { multi, offset } => {
                        out.put_u8(REC_MXOFF);
                        out.put_u32_le(*multi);
                        out.put_u32_le(*offset);
                    }
                    RustRecord::MultixactMembers {
                        first_offset,
                        members,
                    } => {
                        out.put_u8(REC_MXMEM);
                        out.put_u32_le(*first_offset);
                        out.put_u32_le(len_u32(members.len()));
                        for (xid, status) in members {
                            out.put_u32_le(*xid);
                            out.put_u8(*status as u8);
                        }
                    }
                }
            }
        }
        out.to_vec()
    }

    /// Length of [`Value::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Value::Image(img) => img.len(),
            Value::Unreadable(_) => 10,
            Value::Delta(RustRecord::ClogSetStatus { xids, .. }) => 1 + 1 + 4 + 4 * xids.len(),
            Value::Delta(RustRecord::VmClearBits { heap_blocks, .. }) => {
                1 + 1 + 4 + 4 * heap_blocks.len()
            }
            Value::Delta(RustRecord::MultixactOffset { .. }) => 1 + 8,
            Value::Delta(RustRecord::MultixactMembers { members, .. }) => 1 + 8 + 5 * members.len(),
            Value::Delta(RustRecord::WalRecord { record, .. }) => 1 + 18 + record.len(),
        }
    }

    /// Decode, copying an image.
    pub fn decode(buf: &[u8]) -> Result<Value, ValueDecodeError> {
        Value::decode_bytes(Bytes::copy_from_slice(buf))
    }

    /// Decode; an image shares `buf`'s memory.
    pub fn decode_bytes(buf: Bytes) -> Result<Value, ValueDecodeError> {
        let err = |m: String| ValueDecodeError(m);
        let mut r = Reader::new(&buf, "value");
        let version = r.u8()?;
        if version != ENCODING_VERSION {
            return Err(err(format!(
                "encoding version {version}, expected {ENCODING_VERSION}"
            )));
        }
        let value = match r.u8()? {
            TAG_IMAGE => {
                let start = r.position();
                r.rest();
                Value::Image(buf.slice(start..))
            }
            TAG_UNREADABLE => Value::Unreadable(UnreadableRecord {
                lsn: Lsn(r.u64()?),
                rmgr: r.u8()?,
                info: r.u8()?,
            }),
            TAG_DELTA => Value::Delta(match r.u8()? {
                REC_CLOG => {
                    let s = r.u8()?;
                    let status =
                        ClogStatus::from_u8(s).ok_or_else(|| err(format!("CLOG status {s}")))?;
                    let xids = read_u32s(&mut r)?;
                    RustRecord::ClogSetStatus { xids, status }
                }
                REC_VM => {
                    let all_visible = match r.u8()? {
                        0 => false,
                        1 => true,
                        b => return Err(err(format!("flag byte {b}, expected 0 or 1"))),
                    };
                    let heap_blocks = read_u32s(&mut r)?;
                    RustRecord::VmClearBits {
                        heap_blocks,
                        all_visible,
                    }
                }
                REC_WAL => {
                    let start_lsn = Lsn(r.u64()?);
                    let end_lsn = Lsn(r.u64()?);
                    let block_id = r.u8()?;
                    let will_init = match r.u8()? {
                        0 => false,
                        1 => true,
                        b => return Err(err(format!("will_init byte {b}, expected 0 or 1"))),
                    };
                    let start = r.position();
                    r.rest();
                    RustRecord::WalRecord {
                        start_lsn,
                        end_lsn,
                        block_id,
                        will_init,
                        record: buf.slice(start..),
                    }
                }
                REC_MXOFF => RustRecord::MultixactOffset {
                    multi: r.u32()?,
                    offset: r.u32()?,
                },
                REC_MXMEM => {
                    let first_offset = r.u32()?;
                    let n = r.u32_count(5)?;
                    let mut members = Vec::with_capacity(n);
                    for _ in 0..n {
                        let xid = r.u32()?;
                        let s = r.u8()?;
                        let status = MultiXactStatus::from_u8(s)
                            .ok_or_else(|| err(format!("multixact member status {s}")))?;
                        members.push((xid, status));
                    }
                    RustRecord::MultixactMembers {
                        first_offset,
                        members,
                    }
                }
                t => return Err(err(format!("unknown delta record tag {t}"))),
            }),
            t => return Err(err(format!("unknown value tag {t}"))),
        };
        r.finish()?;
        Ok(value)
    }
}

/// A u32 count, then that many u32 values.
fn read_u32s(r: &mut Reader<'_>) -> Result<Vec<u32>, ShortInput> {
    let n = r.u32_count(4)?;
    r.u32_vec(n)
}

fn len_u32(n: usize) -> u32 {
    // Values are bounded far below 4 GiB by the layer format; saturating
    // keeps encode infallible, and decode would reject such an encoding.
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_u32s(out: &mut BytesMut, v: &[u32]) {
    out.put_u32_le(len_u32(v.len()));
    for x in v {
        out.put_u32_le(*x);
    }
}

impl RustRecord {
    pub fn name(&self) -> &'static str {
        match self {
            RustRecord::WalRecord { .. } => "WalRecord",
            RustRecord::ClogSetStatus { .. } => "ClogSetStatus",
            RustRecord::VmClearBits { .. } => "VmClearBits",
            RustRecord::MultixactOffset { .. } => "MultixactOffset",
            RustRecord::MultixactMembers { .. } => "MultixactMembers",
        }
    }

    /// Whether the change initialises the page (needs no older version).
    pub fn will_init(&self) -> bool {
        matches!(
            self,
            RustRecord::WalRecord {
                will_init: true,
                ..
            }
        )
    }

    /// Apply this change to `page`, as PostgreSQL's redo would.
    ///
    /// Fails, leaving the page unchanged, if the items do not all lie on one
    /// page (or member offsets wrap past `u32::MAX`).
    pub fn apply(&self, page: &mut [u8; BLCKSZ]) -> Result<(), ApplyError> {
        let fail = |reason: String| ApplyError {
            record: self.name(),
            reason,
        };
        match self {
            RustRecord::WalRecord {
                start_lsn,
                end_lsn,
                block_id,
                record,
                ..
            } => {
                let decoded = DecodedRecord::decode(*start_lsn, record.clone())
                    .map_err(|e| fail(e.to_string()))?;
                pg_redo::redo_block(&decoded, *end_lsn, *block_id, page).map_err(|e| {
                    fail(format!(
                        "redo of the WAL record at {start_lsn} (rmgr {}, info {:#04x}), block {block_id}: {e}",
                        rmgr_name(decoded.header.rmid).unwrap_or("custom"),
                        decoded.header.info
                    ))
                })?;
            }
            RustRecord::ClogSetStatus { xids, status } => {
                same_page(xids.iter().copied(), CLOG_XACTS_PER_PAGE, "xid").map_err(fail)?;
                for &xid in xids {
                    let idx = (xid % CLOG_XACTS_PER_PAGE) as usize;
                    let byte = idx / 4;
                    let shift = (idx % 4) * 2;
                    let cur = (page[byte] >> shift) & 0x03;
                    // As in recovery: sub-committing an already committed
                    // transaction changes nothing.
                    if *status == ClogStatus::SubCommitted && cur == ClogStatus::Committed as u8 {
                        continue;
                    }
                    page[byte] = (page[byte] & !(0x03 << shift)) | ((*status as u8) << shift);
                }
            }
            RustRecord::VmClearBits {
                heap_blocks,
                all_visible,
            } => {
                same_page(
                    heap_blocks.iter().copied(),
                    VM_HEAPBLOCKS_PER_PAGE,
                    "heap block",
                )
                .map_err(fail)?;
                let flags = if *all_visible {
                    VM_ALL_VISIBLE | VM_ALL_FROZEN
                } else {
                    VM_ALL_FROZEN
                };
                for &blk in heap_blocks {
                    let idx = (blk % VM_HEAPBLOCKS_PER_PAGE) as usize;
                    let byte = VM_MAP_OFFSET + idx / 4;
                    let shift = (idx % 4) * 2;
                    page[byte] &= !(flags << shift);
                }
            }
            RustRecord::MultixactOffset { multi, offset } => {
                let at = (multi % MULTIXACT_OFFSETS_PER_PAGE) as usize * 4;
                page[at..at + 4].copy_from_slice(&offset.to_le_bytes());
            }
            RustRecord::MultixactMembers {
                first_offset,
                members,
            } => {
                if members.is_empty() {
                    return Ok(());
                }
                let last = u32::try_from(members.len() - 1)
                    .ok()
                    .and_then(|n| first_offset.checked_add(n))
                    .ok_or_else(|| {
                        fail(format!(
                            "{} members from offset {first_offset} wrap around",
                            members.len()
                        ))
                    })?;
                if first_offset / MULTIXACT_MEMBERS_PER_PAGE != last / MULTIXACT_MEMBERS_PER_PAGE {
                    return Err(fail(format!(
                        "member offsets {first_offset}..={last} span more than one page"
                    )));
                }
                for (offset, (xid, status)) in (*first_offset..=last).zip(members) {
                    let group = (offset / MULTIXACT_MEMBERS_PER_GROUP
                        % MULTIXACT_MEMBERGROUPS_PER_PAGE)
                        * MULTIXACT_MEMBERGROUP_SIZE;
                    let slot = offset % MULTIXACT_MEMBERS_PER_GROUP;
                    // The flags word is a little-endian u32 with 8 bits per
                    // member: member `slot`'s flags are byte `slot` of it.
                    let flag_at = (group + slot) as usize;
                    page[flag_at] = *status as u8;
                    let xid_at = (group + 4 + slot * 4) as usize;
                    page[xid_at..xid_at + 4].copy_from_slice(&xid.to_le_bytes());
                }
            }
        }
        Ok(())
    }
}

fn same_page(
    mut items: impl Iterator<Item = u32>,
    per_page: u32,
    what: &str,
) -> Result<(), String> {
    let Some(first) = items.next() else {
        return Ok(());
    };
    for x in items {
        if x / per_page != first / per_page {
            return Err(format!(
                "{what}s {first} and {x} are on different pages ({per_page} per page)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
