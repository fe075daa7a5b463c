//! The oracle: Rust redo checked against the page images PostgreSQL
//! attaches to every record under `wal_consistency_checking = all`.
//!
//! It does what PostgreSQL's `verifyBackupPageConsistency` does on a
//! standby, with the Rust redo in place of PostgreSQL's:
//!
//! * The latest known version of every page is kept, keyed by relation
//!   fork and block: the image PostgreSQL attached to the last record that
//!   referenced the page (its LSN set to that record's end, as redo would).
//!   It is never the Rust result, so that one wrong redo does not make
//!   every later record of the page mismatch.
//! * For every block reference with an image of a record of heap, heap2,
//!   btree or sequence, or an XLOG full-page image: the Rust redo runs on a
//!   copy of the previous version (zeroes if the reference initialises the
//!   page), both the result and the image are masked with the resource
//!   manager's mask, and they are compared. A block whose previous version
//!   is unknown (first touched before the WAL read, or never imaged) is
//!   not checked, as PostgreSQL skips blocks missing on the standby.
//! * Unlike PostgreSQL, an image marked for apply is compared too: redo
//!   must restore it, which is cheap to check.
//! * A block reference without an image makes the page unknown (the
//!   simplest choice; with `wal_consistency_checking = all` only records
//!   written before the setting took effect lack images).
//! * Storage records: a relation fork created afresh or truncated loses
//!   its known pages (beyond the new end, for truncation).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::wal::{read_wal_directory, BlockImage, DecodedRecord};
use postgres_format::PgMajorVersion;
use utils::Lsn;

use crate::mask::mask_page;
use crate::{bufpage, can_redo, redo_block, BLCKSZ};

type Page = [u8; BLCKSZ];

const RM_XLOG_ID: u8 = 0;
const RM_SMGR_ID: u8 = 2;
const RM_HEAP2_ID: u8 = 9;
const RM_HEAP_ID: u8 = 10;
const RM_BTREE_ID: u8 = 11;
const RM_SEQ_ID: u8 = 15;
const XLOG_FPI_FOR_HINT: u8 = 0xA0;
const XLOG_FPI: u8 = 0xB0;
/// Bytes of `pd_lsn` and `pd_checksum`, which every mask hides.
const PAGE_LSN_AND_CHECKSUM: usize = 10;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 1;
const SMGR_TRUNCATE_VM: u32 = 2;
const SMGR_TRUNCATE_FSM: u32 = 4;

/// Mismatches kept in [`OracleStats::mismatches`]; the rest are only counted.
pub const MISMATCHES_KEPT: usize = 1000;

/// The name of a record type as pg_waldump prints it (`Heap/INSERT+INIT`,
/// `Btree/SPLIT_L`, `XLOG/FPI`), for the resource managers the oracle
/// checks; `None` for the others.
pub fn record_type_name(rmid: u8, info: u8) -> Option<String> {
    const HEAP: [&str; 8] = [
        "INSERT",
        "DELETE",
        "UPDATE",
        "TRUNCATE",
        "HOT_UPDATE",
        "CONFIRM",
        "LOCK",
        "INPLACE",
    ];
    const HEAP2: [&str; 8] = [
        "REWRITE",
        "PRUNE",
        "VACUUM",
        "FREEZE_PAGE",
        "VISIBLE",
        "MULTI_INSERT",
        "LOCK_UPDATED",
        "NEW_CID",
    ];
    const BTREE: [&str; 16] = [
        "INSERT_LEAF",
        "INSERT_UPPER",
        "INSERT_META",
        "SPLIT_L",
        "SPLIT_R",
        "INSERT_POST",
        "DEDUP",
        "DELETE",
        "UNLINK_PAGE",
        "UNLINK_PAGE_META",
        "NEWROOT",
        "MARK_PAGE_HALFDEAD",
        "VACUUM",
        "REUSE_PAGE",
        "META_CLEANUP",
        "UNKNOWN",
    ];
    let op = ((info & 0x70) >> 4) as usize;
    let init = if info & 0x80 != 0 { "+INIT" } else { "" };
    let name = match rmid {
        RM_HEAP_ID => format!("Heap/{}{init}", HEAP[op]),
        RM_HEAP2_ID => format!("Heap2/{}{init}", HEAP2[op]),
        RM_BTREE_ID => format!("Btree/{}", BTREE[(info >> 4) as usize]),
        RM_SEQ_ID if info & 0xF0 == 0 => "Sequence/LOG".to_owned(),
        RM_SEQ_ID => format!("Sequence/UNKNOWN_{:02X}", info & 0xF0),
        RM_XLOG_ID if info & 0xF0 == XLOG_FPI => "XLOG/FPI".to_owned(),
        RM_XLOG_ID if info & 0xF0 == XLOG_FPI_FOR_HINT => "XLOG/FPI_FOR_HINT".to_owned(),
        _ => return None,
    };
    Some(name)
}

/// Counts for one record type.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TypeStats {
    /// Records of the type read.
    pub records: u64,
    /// Records of which at least one block was redone and compared.
    pub redone: u64,
    /// Redone records whose every compared block matched.
    pub matched: u64,
    /// Redone records with a block that did not match (or failed to redo).
    pub mismatched: u64,
    /// Records skipped: no Rust redo for the type (`can_redo` is false).
    pub no_redo: u64,
    /// Records with a Rust redo but no block to check (no image, or the
    /// page before the record unknown).
    pub unchecked: u64,
    pub blocks_compared: u64,
    pub blocks_mismatched: u64,
}

impl TypeStats {
    fn add(&mut self, other: &TypeStats) {
        self.records += other.records;
        self.redone += other.redone;
        self.matched += other.matched;
        self.mismatched += other.mismatched;
        self.no_redo += other.no_redo;
        self.unchecked += other.unchecked;
        self.blocks_compared += other.blocks_compared;
        self.blocks_mismatched += other.blocks_mismatched;
    }
}

/// How a redone block differed from PostgreSQL's image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The masked pages differ first at `offset` (in `region` of the page);
    /// `expected` (PostgreSQL's image) and `actual` (the Rust redo) are the
    /// masked bytes from `window_start`.
    Bytes {
        offset: usize,
        region: String,
        window_start: usize,
        expected: Vec<u8>,
        actual: Vec<u8>,
    },
    /// The Rust redo returned an error.
    RedoError(String),
}

/// One block the Rust redo got wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub record_type: String,
    pub lsn: Lsn,
    pub end_lsn: Lsn,
    pub block_id: u8,
    pub rel: RelTag,
    pub blkno: u32,
    pub will_init: bool,
    pub difference: Difference,
}

impl Mismatch {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} at {} block {} ({}/{} blk {}{})",
            self.record_type,
            self.lsn,
            self.block_id,
            self.rel.node,
            self.rel.fork.name(),
            self.blkno,
            if self.will_init { ", init" } else { "" }
        );
        match &self.difference {
            Difference::RedoError(e) => {
                let _ = write!(s, ": redo failed: {e}");
            }
            Difference::Bytes {
                offset,
                region,
                window_start,
                expected,
                actual,
            } => {
                let _ = write!(
                    s,
                    ": first difference at byte {offset} ({region}); from byte {window_start}: \
                     expected {} got {}",
                    hex::encode(expected),
                    hex::encode(actual)
                );
            }
        }
        s
    }
}

/// What an oracle run found.
#[derive(Clone, Debug, Default)]
pub struct OracleStats {
    /// Counts per record type name (see [`record_type_name`]).
    pub by_type: BTreeMap<String, TypeStats>,
    /// The first [`MISMATCHES_KEPT`] mismatches, in WAL order.
    pub mismatches: Vec<Mismatch>,
    /// Records read, of every resource manager.
    pub records: u64,
    /// Records that could not be decoded into block references.
    pub decode_errors: u64,
    /// Page images that could not be restored.
    pub bad_images: u64,
    /// Where reading stopped, and why if not at a missing segment.
    pub end_lsn: Option<Lsn>,
    pub end_error: Option<String>,
    /// Whether reading stopped where valid WAL ends.
    pub end_of_wal: bool,
    /// Time spent in [`redo_block`] alone, over every block compared.
    pub redo_time: std::time::Duration,
    /// Bytes of the records redone, without their page images: the WAL a
    /// pageserver stores and applies for them.
    pub redone_bytes: u64,
}

impl OracleStats {
    pub fn total(&self) -> TypeStats {
        let mut total = TypeStats::default();
        for stats in self.by_type.values() {
            total.add(stats);
        }
        total
    }

    /// The run as JSON (for `redo_oracle --json`): counts per type and in
    /// total, the mismatches kept (each with its description), and where
    /// reading stopped.
    pub fn report(&self) -> serde_json::Value {
        let mismatches: Vec<serde_json::Value> = self
            .mismatches
            .iter()
            .map(|m| {
                serde_json::json!({
                    "type": m.record_type,
                    "lsn": m.lsn,
                    "end_lsn": m.end_lsn,
                    "block_id": m.block_id,
                    "rel": m.rel.node.to_string(),
                    "fork": m.rel.fork.name(),
                    "blkno": m.blkno,
                    "will_init": m.will_init,
                    "description": m.describe(),
                })
            })
            .collect();
        serde_json::json!({
            "types": self.by_type,
            "total": self.total(),
            "mismatches": mismatches,
            "records": self.records,
            "decode_errors": self.decode_errors,
            "bad_images": self.bad_images,
            "end_lsn": self.end_lsn,
            "end_error": self.end_error,
            "end_of_wal": self.end_of_wal,
            "redo": self.redo_throughput(),
        })
    }

    /// Throughput of the redo alone: records redone and WAL bytes (without
    /// images) per second of [`redo_block`] time.
    pub fn redo_throughput(&self) -> serde_json::Value {
        let seconds = self.redo_time.as_secs_f64();
        let records = self.total().redone;
        let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        serde_json::json!({
            "records": records,
            "blocks": self.total().blocks_compared,
            "bytes": self.redone_bytes,
            "seconds": seconds,
            "records_per_second": per_second(records as f64),
            "megabytes_per_second": per_second(self.redone_bytes as f64) / 1e6,
        })
    }
}

/// The oracle's state: the latest known version of each page, and counts.
#[derive(Default)]
pub struct Oracle {
    known: HashMap<(RelTag, u32), Box<Page>>,
    stats: OracleStats,
}

impl Oracle {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> &OracleStats {
        &self.stats
    }

    pub fn into_stats(self) -> OracleStats {
        self.stats
    }

    /// Check one record (ending at `end_lsn`) and learn the pages it images.
    pub fn process(&mut self, record: &DecodedRecord, end_lsn: Lsn) {
        self.stats.records += 1;
        let (rmid, info) = (record.header.rmid, record.header.info);
        if rmid == RM_SMGR_ID {
            self.forget_for_smgr(record);
        }
        let images: Vec<Option<Box<Page>>> = record
            .blocks
            .iter()
            .map(|b| b.image.as_ref().and_then(|i| self.restore(i)))
            .collect();
        if let Some(name) = record_type_name(rmid, info) {
            let counts = self.check(record, end_lsn, &name, &images);
            self.stats.by_type.entry(name).or_default().add(&counts);
        }
        for (block, image) in record.blocks.iter().zip(images) {
            let key = (block.tag(), block.block);
            match image {
                Some(mut page) => {
                    // As redo leaves it; a new (all-zero) page keeps no LSN.
                    if !bufpage::is_new(&page) {
                        bufpage::set_lsn(&mut page, end_lsn);
                    }
                    self.known.insert(key, page);
                }
                None => {
                    self.known.remove(&key);
                }
            }
        }
    }

    fn restore(&mut self, image: &BlockImage) -> Option<Box<Page>> {
        match image.restore() {
            Ok(bytes) => match <Box<Page>>::try_from(bytes.into_boxed_slice()) {
                Ok(page) => Some(page),
                Err(_) => {
                    self.stats.bad_images += 1;
                    None
                }
            },
            Err(_) => {
                self.stats.bad_images += 1;
                None
            }
        }
    }

    /// Redo and compare the imaged blocks of a record of a checked type.
    fn check(
        &mut self,
        record: &DecodedRecord,
        end_lsn: Lsn,
        name: &str,
        images: &[Option<Box<Page>>],
    ) -> TypeStats {
        let mut counts = TypeStats {
            records: 1,
            ..TypeStats::default()
        };
        let rmid = record.header.rmid;
        if !can_redo(rmid, record.header.rmgr_info()) {
            counts.no_redo = 1;
            return counts;
        }
        for (block, image) in record.blocks.iter().zip(images) {
            let Some(expected) = image else { continue };
            let apply = block.image.as_ref().is_some_and(|i| i.apply());
            let before = if block.will_init() {
                None
            } else {
                self.known.get(&(block.tag(), block.block))
            };
            if before.is_none() && !block.will_init() && !apply {
                continue;
            }
            let mut page: Box<Page> = match before {
                Some(page) => page.clone(),
                None => Box::new([0u8; BLCKSZ]),
            };
            counts.blocks_compared += 1;
            let started = std::time::Instant::now();
            let redone = redo_block(record, end_lsn, block.id, &mut page);
            self.stats.redo_time += started.elapsed();
            let difference = match redone {
                Err(e) => Some(Difference::RedoError(e.to_string())),
                // Every mask covers pd_lsn and pd_checksum: pages equal
                // after them are equal masked too, with no need to mask.
                Ok(()) if expected[PAGE_LSN_AND_CHECKSUM..] == page[PAGE_LSN_AND_CHECKSUM..] => {
                    None
                }
                Ok(()) => {
                    let mut expected = expected.clone();
                    mask_page(rmid, &mut expected, block.block);
                    mask_page(rmid, &mut page, block.block);
                    compare(&expected, &page)
                }
            };
            if let Some(difference) = difference {
                counts.blocks_mismatched += 1;
                if self.stats.mismatches.len() < MISMATCHES_KEPT {
                    self.stats.mismatches.push(Mismatch {
                        record_type: name.to_owned(),
                        lsn: record.lsn,
                        end_lsn,
                        block_id: block.id,
                        rel: block.tag(),
                        blkno: block.block,
                        will_init: block.will_init(),
                        difference,
                    });
                }
            }
        }
        if counts.blocks_compared == 0 {
            counts.unchecked = 1;
        } else {
            counts.redone = 1;
            let images: usize = record
                .blocks
                .iter()
                .filter_map(|b| b.image.as_ref())
                .map(|i| i.data.len())
                .sum();
            self.stats.redone_bytes +=
                u64::from(record.header.total_length).saturating_sub(images as u64);
            if counts.blocks_mismatched > 0 {
                counts.mismatched = 1;
            } else {
                counts.matched = 1;
            }
        }
        counts
    }

    /// A fork created afresh, or truncated, loses its known pages (all of
    /// them, or those past the new end).
    fn forget_for_smgr(&mut self, record: &DecodedRecord) {
        let data = &record.main_data;
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?))
        };
        let node_at = |o: usize| -> Option<RelFileNode> {
            Some(RelFileNode {
                spc_oid: u32_at(o)?,
                db_oid: u32_at(o + 4)?,
                rel_node: u32_at(o + 8)?,
            })
        };
        match record.header.rmgr_info() {
            XLOG_SMGR_CREATE => {
                let (Some(node), Some(fork)) = (node_at(0), u32_at(12)) else {
                    return;
                };
                let Some(fork) = u8::try_from(fork).ok().and_then(ForkNumber::from_u8) else {
                    return;
                };
                self.known
                    .retain(|(tag, _), _| tag.node != node || tag.fork != fork);
            }
            XLOG_SMGR_TRUNCATE => {
                let (Some(blkno), Some(node), Some(flags)) = (u32_at(0), node_at(4), u32_at(16))
                else {
                    return;
                };
                self.known.retain(|(tag, blk), _| {
                    let gone = match tag.fork {
                        ForkNumber::Main => flags & SMGR_TRUNCATE_HEAP != 0 && *blk >= blkno,
                        ForkNumber::VisibilityMap => flags & SMGR_TRUNCATE_VM != 0,
                        ForkNumber::Fsm => flags & SMGR_TRUNCATE_FSM != 0,
                        ForkNumber::Init => false,
                    };
                    tag.node != node || !gone
                });
            }
            _ => {}
        }
    }
}

/// The first difference between two masked pages, if any.
fn compare(expected: &Page, actual: &Page) -> Option<Difference> {
    // Slice equality is a memcmp, fast even in a debug build.
    if expected[..] == actual[..] {
        return None;
    }
    let offset = expected
        .iter()
        .zip(actual.iter())
        .position(|(a, b)| a != b)?;
    let window_start = offset.saturating_sub(8) & !7;
    let window_end = (window_start + 32).min(BLCKSZ);
    Some(Difference::Bytes {
        offset,
        region: page_region(expected, offset),
        window_start,
        expected: expected[window_start..window_end].to_vec(),
        actual: actual[window_start..window_end].to_vec(),
    })
}

/// Which part of a (standard) page `offset` falls in, read from its header.
fn page_region(page: &Page, offset: usize) -> String {
    const FIELDS: [(usize, &str); 8] = [
        (0, "pd_lsn"),
        (8, "pd_checksum"),
        (10, "pd_flags"),
        (12, "pd_lower"),
        (14, "pd_upper"),
        (16, "pd_special"),
        (18, "pd_pagesize_version"),
        (20, "pd_prune_xid"),
    ];
    if offset < 24 {
        let field = FIELDS.iter().rev().find(|(start, _)| *start <= offset);
        return format!("header {}", field.map_or("?", |f| f.1));
    }
    let lower = u16::from_le_bytes([page[12], page[13]]) as usize;
    let upper = u16::from_le_bytes([page[14], page[15]]) as usize;
    let special = u16::from_le_bytes([page[16], page[17]]) as usize;
    if offset < lower {
        format!("line pointer {}", (offset - 24) / 4 + 1)
    } else if offset >= special {
        format!("special space +{}", offset - special)
    } else if offset < upper {
        "free space".to_owned()
    } else {
        "tuple data".to_owned()
    }
}

/// Run the oracle over the WAL segments of `dir` (a `pg_wal` directory),
/// from the start of its oldest segment or from `start`, until WAL ends.
pub fn run_oracle(dir: &Path, start: Option<Lsn>) -> anyhow::Result<OracleStats> {
    let mut oracle = Oracle::new();
    let end = read_wal_directory(dir, PgMajorVersion::V15, start, None, 1 << 20, |raw| {
        match DecodedRecord::decode(raw.start_lsn, raw.bytes) {
            Ok(record) => oracle.process(&record, raw.end_lsn),
            Err(_) => {
                oracle.stats.records += 1;
                oracle.stats.decode_errors += 1;
            }
        }
        Ok(())
    })?;
    let mut stats = oracle.into_stats();
    stats.end_lsn = Some(end.lsn);
    stats.end_of_wal = end.error.as_ref().is_none_or(|e| e.is_end_of_wal());
    stats.end_error = end.error.map(|e| e.to_string());
    Ok(stats)
}

#[cfg(test)]
mod tests;
