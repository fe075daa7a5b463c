//! The PostgreSQL data directory as a timeline holds it: relations and
//! their sizes, the relations of each database, the databases, relmapper
//! files, SLRU segments, two-phase files, `pg_control` and the checkpoint.
//!
//! Reads go through [`Timeline`] at an LSN; writes are collected in a
//! [`DatadirModification`] for one WAL record (or one import step) and
//! stored together at its LSN (`modification`). WAL ingest keeps the
//! latest relation sizes in a [`RelSizeCache`] (`rel_cache`).
//!
//! Directories are small values: a version byte, a count, then the
//! entries (`u32` oids, with a `u8` fork for relations), little-endian.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

use crate::key::{Key, SlruKind};
use crate::tenant::timeline::{ReadError, Timeline};
use crate::value::BLCKSZ;

const DIRECTORY_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DatadirError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{what} at {lsn} is malformed: {reason}")]
    Corrupt {
        what: String,
        lsn: Lsn,
        reason: String,
    },
    #[error("relation {rel:?} does not exist at {lsn}")]
    NoSuchRelation { rel: RelTag, lsn: Lsn },
    #[error("block {block} of {rel:?} is beyond its end ({nblocks} blocks) at {lsn}")]
    BeyondEnd {
        rel: RelTag,
        block: u32,
        nblocks: u32,
        lsn: Lsn,
    },
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, DatadirError>;

fn encode_set<T, F: Fn(&mut BytesMut, &T)>(items: &BTreeSet<T>, put: F) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(DIRECTORY_FORMAT);
    out.put_u32_le(items.len() as u32);
    for item in items {
        put(&mut out, item);
    }
    out.freeze()
}

/// Decode a directory of `entry_size`-byte entries; `parse` reads one
/// entry (all of its bytes) and returns `None` for an invalid one.
fn decode_set<T: Ord>(
    what: &'static str,
    lsn: Lsn,
    bytes: &[u8],
    entry_size: usize,
    parse: impl Fn(&mut Reader<'_>) -> std::result::Result<Option<T>, ShortInput>,
) -> Result<BTreeSet<T>> {
    let corrupt = |reason: &str| DatadirError::Corrupt {
        what: what.to_owned(),
        lsn,
        reason: reason.to_owned(),
    };
    let mut r = Reader::new(bytes, what);
    let count = match (r.u8(), r.u32()) {
        (Ok(DIRECTORY_FORMAT), Ok(count)) => count,
        _ => return Err(corrupt("bad header")),
    };
    if (count as usize).checked_mul(entry_size) != Some(r.remaining()) {
        return Err(corrupt("entry count does not match the length"));
    }
    let mut set = BTreeSet::new();
    for _ in 0..count {
        let entry = r.bytes(entry_size).map_err(|e| corrupt(&e.to_string()))?;
        let mut entry = Reader::new(entry, what);
        match parse(&mut entry) {
            Ok(Some(item)) if entry.remaining() == 0 => set.insert(item),
            _ => return Err(corrupt("bad entry")),
        };
    }
    Ok(set)
}

fn decode_u32(what: &str, lsn: Lsn, bytes: &[u8]) -> Result<u32> {
    bytes
        .try_into()
        .map(u32::from_le_bytes)
        .map_err(|_| DatadirError::Corrupt {
            what: what.to_owned(),
            lsn,
            reason: format!("{} bytes, expected 4", bytes.len()),
        })
}

/// Reads.
impl Timeline {
    pub fn list_dbs(&self, lsn: Lsn) -> Result<BTreeSet<(u32, u32)>> {
        match self.get(Key::db_dir(), lsn)? {
            None => Ok(BTreeSet::new()),
            Some(b) => decode_set("database directory", lsn, &b, 8, |e| {
                Ok(Some((e.u32()?, e.u32()?)))
            }),
        }
    }

    /// The relation forks of a database.
    pub fn list_rels(&self, spc: u32, db: u32, lsn: Lsn) -> Result<BTreeSet<RelTag>> {
        match self.get(Key::rel_dir(spc, db), lsn)? {
            None => Ok(BTreeSet::new()),
            Some(b) => decode_set("relation directory", lsn, &b, 5, |e| {
                let node = RelFileNode {
                    spc_oid: spc,
                    db_oid: db,
                    rel_node: e.u32()?,
                };
                let fork = ForkNumber::from_u8(e.u8()?);
                Ok(fork.map(|fork| RelTag { node, fork }))
            }),
        }
    }

    /// Whether the fork is in its database's relation directory: a binary
    /// search of the stored directory (entries are written in order, see
    /// [`encode_set`]), not a decode of all of it, since every GetPage asks.
    pub fn rel_exists(&self, rel: RelTag, lsn: Lsn) -> Result<bool> {
        let Some(bytes) = self.get(Key::rel_dir(rel.node.spc_oid, rel.node.db_oid), lsn)? else {
            return Ok(false);
        };
        let corrupt = |reason: &str| DatadirError::Corrupt {
            what: "relation directory".to_owned(),
            lsn,
            reason: reason.to_owned(),
        };
        let mut r = Reader::new(&bytes, "relation directory");
        let count = match (r.u8(), r.u32()) {
            (Ok(DIRECTORY_FORMAT), Ok(count)) => count as usize,
            _ => return Err(corrupt("bad header")),
        };
        let entries = r.rest();
        if count.checked_mul(5) != Some(entries.len()) {
            return Err(corrupt("entry count does not match the length"));
        }
        let wanted = (rel.node.rel_node, rel.fork as u8);
        let entry = |i: usize| {
            let e = &entries[i * 5..i * 5 + 5];
            (u32::from_le_bytes([e[0], e[1], e[2], e[3]]), e[4])
        };
        let (mut low, mut high) = (0, count);
        while low < high {
            let mid = low + (high - low) / 2;
            match entry(mid).cmp(&wanted) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Blocks in the relation fork, `None` if it does not exist.
    pub fn get_rel_size(&self, rel: RelTag, lsn: Lsn) -> Result<Option<u32>> {
        if !self.rel_exists(rel, lsn)? {
            return Ok(None);
        }
        self.stored_rel_size(rel, lsn).map(Some)
    }

    /// The size stored for a fork that exists (0 if none is stored).
    fn stored_rel_size(&self, rel: RelTag, lsn: Lsn) -> Result<u32> {
        match self.get(Key::rel_size(rel), lsn)? {
            None => Ok(0),
            Some(b) => decode_u32("relation size", lsn, &b),
        }
    }

    pub fn get_rel_page(&self, rel: RelTag, block: u32, lsn: Lsn) -> Result<Bytes> {
        let nblocks = self
            .get_rel_size(rel, lsn)?
            .ok_or(DatadirError::NoSuchRelation { rel, lsn })?;
        if block >= nblocks {
            return Err(DatadirError::BeyondEnd {
                rel,
                block,
                nblocks,
                lsn,
            });
        }
        // A block inside the relation that no record wrote is zeros.
        Ok(self
            .get(Key::rel_block(rel, block), lsn)?
            .unwrap_or_else(|| Bytes::from(vec![0u8; BLCKSZ])))
    }

    pub fn get_relmap_file(&self, spc: u32, db: u32, lsn: Lsn) -> Result<Option<Bytes>> {
        Ok(self.get(Key::relmap_file(spc, db), lsn)?)
    }

    pub fn list_slru_segments(&self, kind: SlruKind, lsn: Lsn) -> Result<BTreeSet<u32>> {
        match self.get(Key::slru_dir(kind), lsn)? {
            None => Ok(BTreeSet::new()),
            Some(b) => decode_set("SLRU directory", lsn, &b, 4, |e| Ok(Some(e.u32()?))),
        }
    }

    pub fn get_slru_segment_size(&self, kind: SlruKind, segment: u32, lsn: Lsn) -> Result<u32> {
        match self.get(Key::slru_segment_size(kind, segment), lsn)? {
            None => Ok(0),
            Some(b) => decode_u32("SLRU segment size", lsn, &b),
        }
    }

    pub fn get_slru_page(
        &self,
        kind: SlruKind,
        segment: u32,
        block: u32,
        lsn: Lsn,
    ) -> Result<Bytes> {
        Ok(self
            .get(Key::slru_page(kind, segment, block), lsn)?
            .unwrap_or_else(|| Bytes::from(vec![0u8; BLCKSZ])))
    }

    pub fn list_twophase_files(&self, lsn: Lsn) -> Result<BTreeSet<u32>> {
        match self.get(Key::twophase_dir(), lsn)? {
            None => Ok(BTreeSet::new()),
            Some(b) => decode_set("two-phase directory", lsn, &b, 4, |e| Ok(Some(e.u32()?))),
        }
    }

    pub fn get_twophase_file(&self, xid: u32, lsn: Lsn) -> Result<Option<Bytes>> {
        Ok(self.get(Key::twophase_file(xid), lsn)?)
    }

    pub fn get_control_file(&self, lsn: Lsn) -> Result<Option<Bytes>> {
        Ok(self.get(Key::control_file(), lsn)?)
    }

    pub fn get_checkpoint(&self, lsn: Lsn) -> Result<Option<Bytes>> {
        Ok(self.get(Key::checkpoint(), lsn)?)
    }

    /// Where the latest shutdown checkpoint record ingested by `lsn`
    /// begins (none on a timeline that has had no compute yet).
    pub fn get_shutdown_checkpoint(&self, lsn: Lsn) -> Result<Option<Lsn>> {
        let Some(bytes) = self.get(Key::shutdown_checkpoint(), lsn)? else {
            return Ok(None);
        };
        let raw: [u8; 8] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| DatadirError::Corrupt {
                what: "the shutdown checkpoint LSN".into(),
                lsn,
                reason: format!("{} bytes, not 8", bytes.len()),
            })?;
        Ok(Some(Lsn(u64::from_le_bytes(raw))))
    }

    /// Bytes of relation data (all forks of all relations) at `lsn`.
    pub fn logical_size(&self, lsn: Lsn) -> Result<u64> {
        self.relations_size(lsn, |_| true)
    }

    /// Bytes of relation data of database `db_oid` (in every tablespace)
    /// at `lsn`: `pg_database_size`.
    pub fn db_size(&self, db_oid: u32, lsn: Lsn) -> Result<u64> {
        self.relations_size(lsn, |db| db == db_oid)
    }

    fn relations_size(&self, lsn: Lsn, include: impl Fn(u32) -> bool) -> Result<u64> {
        let mut total = 0u64;
        for (spc, db) in self.list_dbs(lsn)? {
            if !include(db) {
                continue;
            }
            for rel in self.list_rels(spc, db, lsn)? {
                let blocks = u64::from(self.get_rel_size(rel, lsn)?.unwrap_or(0));
                total = total.saturating_add(blocks * BLCKSZ as u64);
            }
        }
        Ok(total)
    }

    /// A whole SLRU segment at `lsn`: its pages, in order.
    pub fn get_slru_segment(&self, kind: SlruKind, segment: u32, lsn: Lsn) -> Result<Bytes> {
        let pages = self.get_slru_segment_size(kind, segment, lsn)?;
        let mut out = Vec::with_capacity(pages as usize * BLCKSZ);
        for block in 0..pages {
            out.extend_from_slice(&self.get_slru_page(kind, segment, block, lsn)?);
        }
        Ok(Bytes::from(out))
    }
}

mod modification;
mod rel_cache;

pub use modification::DatadirModification;
pub use rel_cache::RelSizeCache;

#[cfg(test)]
mod tests;
