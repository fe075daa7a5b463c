//! The PostgreSQL data directory as a timeline holds it: relations and
//! their sizes, the relations of each database, the databases, relmapper
//! files, SLRU segments, two-phase files, `pg_control` and the checkpoint.
//!
//! Reads go through [`Timeline`] at an LSN; writes are collected in a
//! [`DatadirModification`] for one WAL record (or one import step) and
//! stored together at its LSN.
//!
//! Directories are small values: a version byte, a count, then the
//! entries (`u32` oids, with a `u8` fork for relations), little-endian.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

use crate::key::{Key, SlruKind};
use crate::tenant::timeline::{ReadError, RecordLsn, Timeline};
use crate::value::{RustRecord, UnreadableRecord, Value, BLCKSZ};

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

    pub fn rel_exists(&self, rel: RelTag, lsn: Lsn) -> Result<bool> {
        Ok(self
            .list_rels(rel.node.spc_oid, rel.node.db_oid, lsn)?
            .contains(&rel))
    }

    /// Blocks in the relation fork, `None` if it does not exist.
    pub fn get_rel_size(&self, rel: RelTag, lsn: Lsn) -> Result<Option<u32>> {
        if !self.rel_exists(rel, lsn)? {
            return Ok(None);
        }
        match self.get(Key::rel_size(rel), lsn)? {
            None => Ok(Some(0)),
            Some(b) => decode_u32("relation size", lsn, &b).map(Some),
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

/// The changes of one WAL record (or import step), stored together at one LSN.
pub struct DatadirModification<'a> {
    timeline: &'a Timeline,
    pub lsn: Lsn,
    pending: Vec<(Key, Value)>,
    /// Directories and sizes as this modification leaves them.
    rel_dirs: BTreeMap<(u32, u32), BTreeSet<RelTag>>,
    dbs: Option<BTreeSet<(u32, u32)>>,
    sizes: BTreeMap<Key, u32>,
    slru_dirs: BTreeMap<SlruKind, BTreeSet<u32>>,
    twophase: Option<BTreeSet<u32>>,
}

impl Timeline {
    pub fn begin_modification(&self, lsn: Lsn) -> DatadirModification<'_> {
        DatadirModification {
            timeline: self,
            lsn,
            pending: Vec::new(),
            rel_dirs: BTreeMap::new(),
            dbs: None,
            sizes: BTreeMap::new(),
            slru_dirs: BTreeMap::new(),
            twophase: None,
        }
    }
}

impl DatadirModification<'_> {
    /// The state before this modification (reads at the LSN just below it).
    fn read_lsn(&self) -> Lsn {
        Lsn(self.lsn.0.saturating_sub(1)).max(self.timeline.start_lsn())
    }

    fn put(&mut self, key: Key, value: Value) {
        self.pending.push((key, value));
    }

    fn dbs(&mut self) -> Result<&mut BTreeSet<(u32, u32)>> {
        if self.dbs.is_none() {
            self.dbs = Some(self.timeline.list_dbs(self.read_lsn())?);
        }
        Ok(self.dbs.as_mut().expect("loaded"))
    }

    fn rel_dir(&mut self, spc: u32, db: u32) -> Result<&mut BTreeSet<RelTag>> {
        if !self.rel_dirs.contains_key(&(spc, db)) {
            let rels = self.timeline.list_rels(spc, db, self.read_lsn())?;
            self.rel_dirs.insert((spc, db), rels);
        }
        Ok(self.rel_dirs.get_mut(&(spc, db)).expect("loaded"))
    }

    /// The relation's size as this modification leaves it (`None`: it does not exist).
    pub fn rel_size(&mut self, rel: RelTag) -> Result<Option<u32>> {
        if !self
            .rel_dir(rel.node.spc_oid, rel.node.db_oid)?
            .contains(&rel)
        {
            return Ok(None);
        }
        if let Some(&n) = self.sizes.get(&Key::rel_size(rel)) {
            return Ok(Some(n));
        }
        let n = self
            .timeline
            .get_rel_size(rel, self.read_lsn())?
            .unwrap_or(0);
        self.sizes.insert(Key::rel_size(rel), n);
        Ok(Some(n))
    }

    fn set_rel_size(&mut self, rel: RelTag, nblocks: u32) {
        self.sizes.insert(Key::rel_size(rel), nblocks);
        self.put(
            Key::rel_size(rel),
            Value::Image(Bytes::copy_from_slice(&nblocks.to_le_bytes())),
        );
    }

    /// Create a relation fork (and its database entry if new) with `nblocks` blocks.
    pub fn put_rel_creation(&mut self, rel: RelTag, nblocks: u32) -> Result<()> {
        let (spc, db) = (rel.node.spc_oid, rel.node.db_oid);
        if self.dbs()?.insert((spc, db)) {
            self.rel_dir(spc, db)?;
        }
        self.rel_dir(spc, db)?.insert(rel);
        self.set_rel_size(rel, nblocks);
        Ok(())
    }

    /// Extends `rel` (creating it) so that it holds `block`.
    fn extend_to_hold(&mut self, rel: RelTag, block: u32) -> Result<()> {
        let size = block.checked_add(1).ok_or_else(|| {
            DatadirError::Invalid(format!(
                "block {block} of {rel:?} is past the largest relation"
            ))
        })?;
        match self.rel_size(rel)? {
            None => self.put_rel_creation(rel, size)?,
            Some(n) if block >= n => self.set_rel_size(rel, size),
            Some(_) => {}
        }
        Ok(())
    }

    /// A page image; extends the relation (creating it) if the block is past its end.
    pub fn put_rel_page_image(&mut self, rel: RelTag, block: u32, page: Bytes) -> Result<()> {
        if page.len() != BLCKSZ {
            return Err(DatadirError::Invalid(format!(
                "page image of {} bytes for {rel:?} block {block}",
                page.len()
            )));
        }
        self.extend_to_hold(rel, block)?;
        self.put(Key::rel_block(rel, block), Value::Image(page));
        Ok(())
    }

    /// A page changed by a record the pageserver cannot reconstruct: its
    /// version at this LSN is unreadable (the relation is extended to hold
    /// the block, as the change would have).
    pub fn put_rel_unreadable(
        &mut self,
        rel: RelTag,
        block: u32,
        record: UnreadableRecord,
    ) -> Result<()> {
        self.extend_to_hold(rel, block)?;
        self.put(Key::rel_block(rel, block), Value::Unreadable(record));
        Ok(())
    }

    /// A WAL record redone in Rust at read time on the page (the relation
    /// is extended to hold the block, as redo would).
    pub fn put_rel_redo(&mut self, rel: RelTag, block: u32, record: RustRecord) -> Result<()> {
        self.extend_to_hold(rel, block)?;
        self.put(Key::rel_block(rel, block), Value::Delta(record));
        Ok(())
    }

    /// A change applied in Rust to a relation page (visibility-map bits).
    pub fn put_rel_delta(&mut self, rel: RelTag, block: u32, record: RustRecord) -> Result<()> {
        match self.rel_size(rel)? {
            Some(n) if block < n => {
                self.put(Key::rel_block(rel, block), Value::Delta(record));
                Ok(())
            }
            // Clearing bits of a page that does not exist changes nothing.
            _ => Ok(()),
        }
    }

    pub fn put_rel_truncation(&mut self, rel: RelTag, nblocks: u32) -> Result<()> {
        if let Some(n) = self.rel_size(rel)? {
            if nblocks < n {
                self.set_rel_size(rel, nblocks);
            }
        }
        Ok(())
    }

    pub fn put_rel_drop(&mut self, rel: RelTag) -> Result<()> {
        self.rel_dir(rel.node.spc_oid, rel.node.db_oid)?
            .remove(&rel);
        Ok(())
    }

    /// A database with no relations yet (its relations are created after).
    pub fn put_db_creation(&mut self, spc: u32, db: u32) -> Result<()> {
        self.dbs()?.insert((spc, db));
        self.rel_dir(spc, db)?;
        Ok(())
    }

    pub fn put_db_drop(&mut self, spc: u32, db: u32) -> Result<()> {
        self.dbs()?.remove(&(spc, db));
        self.rel_dir(spc, db)?.clear();
        self.put(Key::relmap_file(spc, db), Value::Image(Bytes::new()));
        Ok(())
    }

    pub fn put_relmap_file(&mut self, spc: u32, db: u32, contents: Bytes) -> Result<()> {
        self.put(Key::relmap_file(spc, db), Value::Image(contents));
        Ok(())
    }

    fn slru_dir(&mut self, kind: SlruKind) -> Result<&mut BTreeSet<u32>> {
        if !self.slru_dirs.contains_key(&kind) {
            let segments = self.timeline.list_slru_segments(kind, self.read_lsn())?;
            self.slru_dirs.insert(kind, segments);
        }
        Ok(self.slru_dirs.get_mut(&kind).expect("loaded"))
    }

    /// An SLRU page image (a zeroed page, or one imported); extends its segment.
    pub fn put_slru_page_image(
        &mut self,
        kind: SlruKind,
        segment: u32,
        block: u32,
        page: Bytes,
    ) -> Result<()> {
        self.slru_dir(kind)?.insert(segment);
        let size_key = Key::slru_segment_size(kind, segment);
        let size = match self.sizes.get(&size_key) {
            Some(&n) => n,
            None => self
                .timeline
                .get_slru_segment_size(kind, segment, self.read_lsn())?,
        };
        if block >= size {
            self.sizes.insert(size_key, block + 1);
            self.put(
                size_key,
                Value::Image(Bytes::copy_from_slice(&(block + 1).to_le_bytes())),
            );
        }
        self.put(Key::slru_page(kind, segment, block), Value::Image(page));
        Ok(())
    }

    pub fn put_slru_delta(
        &mut self,
        kind: SlruKind,
        segment: u32,
        block: u32,
        record: RustRecord,
    ) -> Result<()> {
        self.put(Key::slru_page(kind, segment, block), Value::Delta(record));
        Ok(())
    }

    pub fn drop_slru_segment(&mut self, kind: SlruKind, segment: u32) -> Result<()> {
        self.slru_dir(kind)?.remove(&segment);
        Ok(())
    }

    fn twophase(&mut self) -> Result<&mut BTreeSet<u32>> {
        if self.twophase.is_none() {
            self.twophase = Some(self.timeline.list_twophase_files(self.read_lsn())?);
        }
        Ok(self.twophase.as_mut().expect("loaded"))
    }

    pub fn put_twophase_file(&mut self, xid: u32, contents: Bytes) -> Result<()> {
        self.twophase()?.insert(xid);
        self.put(Key::twophase_file(xid), Value::Image(contents));
        Ok(())
    }

    pub fn drop_twophase_file(&mut self, xid: u32) -> Result<()> {
        self.twophase()?.remove(&xid);
        Ok(())
    }

    pub fn put_control_file(&mut self, contents: Bytes) -> Result<()> {
        self.put(Key::control_file(), Value::Image(contents));
        Ok(())
    }

    pub fn put_checkpoint(&mut self, contents: Bytes) -> Result<()> {
        self.put(Key::checkpoint(), Value::Image(contents));
        Ok(())
    }

    /// Store everything at this modification's LSN and make `record` the
    /// last record ingested.
    pub fn commit(mut self, record: RecordLsn) -> Result<()> {
        for ((spc, db), rels) in std::mem::take(&mut self.rel_dirs) {
            let value = encode_set(&rels, |out, r| {
                out.put_u32_le(r.node.rel_node);
                out.put_u8(r.fork as u8);
            });
            self.pending
                .push((Key::rel_dir(spc, db), Value::Image(value)));
        }
        if let Some(dbs) = self.dbs.take() {
            let value = encode_set(&dbs, |out, (spc, db)| {
                out.put_u32_le(*spc);
                out.put_u32_le(*db);
            });
            self.pending.push((Key::db_dir(), Value::Image(value)));
        }
        for (kind, segments) in std::mem::take(&mut self.slru_dirs) {
            let value = encode_set(&segments, |out, s| out.put_u32_le(*s));
            self.pending
                .push((Key::slru_dir(kind), Value::Image(value)));
        }
        if let Some(xids) = self.twophase.take() {
            let value = encode_set(&xids, |out, x| out.put_u32_le(*x));
            self.pending
                .push((Key::twophase_dir(), Value::Image(value)));
        }
        if !self.pending.is_empty() {
            self.timeline
                .put_batch(self.lsn, std::mem::take(&mut self.pending))?;
        }
        self.timeline.advance_last_record(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_format::PgMajorVersion;
    use std::sync::Arc;
    use utils::{TenantId, TimelineId};

    fn rel(node: u32, fork: ForkNumber) -> RelTag {
        RelTag {
            node: RelFileNode {
                spc_oid: 1663,
                db_oid: 5,
                rel_node: node,
            },
            fork,
        }
    }

    fn page(fill: u8) -> Bytes {
        Bytes::from(vec![fill; BLCKSZ])
    }

    #[test]
    fn relations_versions_and_branches() {
        let start = RecordLsn {
            last: Lsn(0x100),
            prev: Lsn(0x80),
        };
        let tl = Arc::new(Timeline::new_root(
            TenantId::generate(),
            TimelineId::generate(),
            PgMajorVersion::V15,
            start,
        ));
        let r = rel(16384, ForkNumber::Main);
        let mut m = tl.begin_modification(Lsn(0x200));
        m.put_rel_creation(r, 0).unwrap();
        m.put_rel_page_image(r, 0, page(1)).unwrap();
        m.commit(RecordLsn {
            last: Lsn(0x210),
            prev: Lsn(0x200),
        })
        .unwrap();
        let mut m = tl.begin_modification(Lsn(0x300));
        m.put_rel_page_image(r, 2, page(3)).unwrap();
        m.commit(RecordLsn {
            last: Lsn(0x310),
            prev: Lsn(0x300),
        })
        .unwrap();

        assert_eq!(tl.get_rel_size(r, Lsn(0x150)).unwrap(), None);
        assert_eq!(tl.get_rel_size(r, Lsn(0x250)).unwrap(), Some(1));
        assert_eq!(tl.get_rel_size(r, Lsn(0x300)).unwrap(), Some(3));
        assert_eq!(tl.get_rel_page(r, 0, Lsn(0x300)).unwrap(), page(1));
        assert_eq!(tl.get_rel_page(r, 1, Lsn(0x300)).unwrap(), page(0));
        assert!(tl.get_rel_page(r, 2, Lsn(0x250)).is_err());
        assert_eq!(
            tl.list_dbs(Lsn(0x300)).unwrap(),
            BTreeSet::from([(1663, 5)])
        );

        // A branch at 0x210 sees the state there, and its own changes only.
        let branch = Arc::new(
            tl.branch(
                TimelineId::generate(),
                RecordLsn {
                    last: Lsn(0x210),
                    prev: Lsn(0x200),
                },
            )
            .unwrap(),
        );
        assert_eq!(branch.get_rel_size(r, Lsn(0x400)).unwrap(), Some(1));
        let mut m = branch.begin_modification(Lsn(0x220));
        m.put_rel_page_image(r, 0, page(9)).unwrap();
        m.commit(RecordLsn {
            last: Lsn(0x230),
            prev: Lsn(0x220),
        })
        .unwrap();
        assert_eq!(branch.get_rel_page(r, 0, Lsn(0x230)).unwrap(), page(9));
        assert_eq!(tl.get_rel_page(r, 0, Lsn(0x300)).unwrap(), page(1));
        assert!(tl
            .branch(
                TimelineId::generate(),
                RecordLsn {
                    last: Lsn(0x999),
                    prev: Lsn(0)
                }
            )
            .is_err());

        let mut m = tl.begin_modification(Lsn(0x400));
        m.put_rel_drop(r).unwrap();
        m.commit(RecordLsn {
            last: Lsn(0x410),
            prev: Lsn(0x400),
        })
        .unwrap();
        assert!(!tl.rel_exists(r, Lsn(0x410)).unwrap());
        assert!(tl.rel_exists(r, Lsn(0x310)).unwrap());
    }

    #[test]
    fn deltas_apply_on_read() {
        let start = RecordLsn {
            last: Lsn(0x100),
            prev: Lsn(0x80),
        };
        let tl = Timeline::new_root(
            TenantId::generate(),
            TimelineId::generate(),
            PgMajorVersion::V15,
            start,
        );
        let mut m = tl.begin_modification(Lsn(0x200));
        m.put_slru_page_image(SlruKind::Clog, 0, 0, page(0))
            .unwrap();
        m.commit(RecordLsn {
            last: Lsn(0x210),
            prev: Lsn(0x200),
        })
        .unwrap();
        let mut m = tl.begin_modification(Lsn(0x300));
        let record = RustRecord::ClogSetStatus {
            xids: vec![3],
            status: crate::value::ClogStatus::Committed,
        };
        m.put_slru_delta(SlruKind::Clog, 0, 0, record).unwrap();
        m.commit(RecordLsn {
            last: Lsn(0x310),
            prev: Lsn(0x300),
        })
        .unwrap();
        let before = tl.get_slru_page(SlruKind::Clog, 0, 0, Lsn(0x250)).unwrap();
        let after = tl.get_slru_page(SlruKind::Clog, 0, 0, Lsn(0x310)).unwrap();
        assert_eq!(before[0], 0);
        assert_eq!(after[0], 0b0100_0000, "xid 3 committed: bits 6-7 of byte 0");
        assert_eq!(
            tl.list_slru_segments(SlruKind::Clog, Lsn(0x310)).unwrap(),
            BTreeSet::from([0])
        );
    }
}
