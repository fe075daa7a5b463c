//! Writes: the changes of one WAL record (or one import step), collected
//! in a [`DatadirModification`] and stored together at its LSN. A
//! directory is written back only if the modification changed it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes};
use postgres_format::relfile::RelTag;
use utils::Lsn;

use crate::key::{Key, SlruKind};
use crate::tenant::timeline::{RecordLsn, Timeline};
use crate::value::{RustRecord, UnreadableRecord, Value, BLCKSZ};

use super::rel_cache::{RelChanges, RelSizeCache};
use super::{encode_set, DatadirError, Result};

/// PostgreSQL's default and global tablespaces (`pg_default`, `pg_global`).
const DEFAULT_TABLESPACE_OID: u32 = 1663;
const GLOBAL_TABLESPACE_OID: u32 = 1664;

/// A directory as a modification loaded it, and whether it changed it.
#[derive(Debug)]
struct Dir<T: Ord> {
    entries: BTreeSet<T>,
    changed: bool,
}

impl<T: Ord> Dir<T> {
    fn new(entries: BTreeSet<T>) -> Self {
        Dir {
            entries,
            changed: false,
        }
    }

    fn contains(&self, entry: &T) -> bool {
        self.entries.contains(entry)
    }

    /// Whether `entry` is new.
    fn insert(&mut self, entry: T) -> bool {
        let new = self.entries.insert(entry);
        self.changed |= new;
        new
    }

    fn remove(&mut self, entry: &T) {
        self.changed |= self.entries.remove(entry);
    }

    fn clear(&mut self) {
        self.changed |= !self.entries.is_empty();
        self.entries.clear();
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The changes of one WAL record (or import step), stored together at one LSN.
pub struct DatadirModification<'a> {
    timeline: &'a Timeline,
    pub lsn: Lsn,
    pending: Vec<(Key, Value)>,
    /// Directories as this modification leaves them.
    rel_dirs: BTreeMap<(u32, u32), Dir<RelTag>>,
    dbs: Option<Dir<(u32, u32)>>,
    slru_dirs: BTreeMap<SlruKind, Dir<u32>>,
    twophase: Option<Dir<u32>>,
    /// SLRU segment sizes as this modification leaves them.
    slru_sizes: BTreeMap<Key, u32>,
    /// Relation forks' sizes as this modification leaves them.
    rels: RelChanges,
    /// Ingest's sizes at the last record (see [`RelSizeCache`]).
    cache: Option<&'a mut RelSizeCache>,
}

impl Timeline {
    /// A modification at `lsn` that reads relation sizes from storage.
    pub fn begin_modification(&self, lsn: Lsn) -> DatadirModification<'_> {
        DatadirModification {
            timeline: self,
            lsn,
            pending: Vec::new(),
            rel_dirs: BTreeMap::new(),
            dbs: None,
            slru_dirs: BTreeMap::new(),
            twophase: None,
            slru_sizes: BTreeMap::new(),
            rels: RelChanges::default(),
            cache: None,
        }
    }

    /// A modification at `lsn`, the next record after those `cache` has
    /// seen: relation sizes come from the cache where it knows them, and
    /// the cache learns this modification's changes when it commits.
    pub fn begin_cached_modification<'a>(
        &'a self,
        lsn: Lsn,
        cache: &'a mut RelSizeCache,
    ) -> DatadirModification<'a> {
        DatadirModification {
            cache: Some(cache),
            ..self.begin_modification(lsn)
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

    fn dbs(&mut self) -> Result<&mut Dir<(u32, u32)>> {
        if self.dbs.is_none() {
            self.dbs = Some(Dir::new(self.timeline.list_dbs(self.read_lsn())?));
        }
        Ok(self.dbs.as_mut().expect("loaded"))
    }

    fn rel_dir(&mut self, spc: u32, db: u32) -> Result<&mut Dir<RelTag>> {
        if !self.rel_dirs.contains_key(&(spc, db)) {
            let rels = self.timeline.list_rels(spc, db, self.read_lsn())?;
            self.rel_dirs.insert((spc, db), Dir::new(rels));
        }
        Ok(self.rel_dirs.get_mut(&(spc, db)).expect("loaded"))
    }

    /// The relation's size as this modification leaves it (`None`: it does not exist).
    pub fn rel_size(&mut self, rel: RelTag) -> Result<Option<u32>> {
        if let Some(&state) = self.rels.sizes.get(&rel) {
            return Ok(state);
        }
        if self
            .rels
            .dropped_dbs
            .contains(&(rel.node.spc_oid, rel.node.db_oid))
        {
            return Ok(None);
        }
        if let Some(n) = self.cache.as_ref().and_then(|c| c.get(&rel)) {
            return Ok(Some(n));
        }
        if !self
            .rel_dir(rel.node.spc_oid, rel.node.db_oid)?
            .contains(&rel)
        {
            return Ok(None);
        }
        let n = self.timeline.stored_rel_size(rel, self.read_lsn())?;
        if let Some(cache) = self.cache.as_mut() {
            cache.learn(rel, n);
        }
        Ok(Some(n))
    }

    fn set_rel_size(&mut self, rel: RelTag, nblocks: u32) {
        self.rels.sizes.insert(rel, Some(nblocks));
        self.put(
            Key::rel_size(rel),
            Value::Image(Bytes::copy_from_slice(&nblocks.to_le_bytes())),
        );
    }

    /// Create a relation fork (and its database entry if new) with `nblocks` blocks.
    pub fn put_rel_creation(&mut self, rel: RelTag, nblocks: u32) -> Result<()> {
        let (spc, db) = (rel.node.spc_oid, rel.node.db_oid);
        self.dbs()?.insert((spc, db));
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

    /// Drop a relation fork. The last fork of a database in a tablespace
    /// other than the default and global ones takes the database's entry in
    /// that tablespace with it: PostgreSQL keeps no trace of it either (an
    /// empty tablespace can be dropped), and base backups refuse
    /// tablespaces that hold anything.
    pub fn put_rel_drop(&mut self, rel: RelTag) -> Result<()> {
        let (spc, db) = (rel.node.spc_oid, rel.node.db_oid);
        let dir = self.rel_dir(spc, db)?;
        dir.remove(&rel);
        let emptied = dir.is_empty();
        self.rels.sizes.insert(rel, None);
        if emptied && spc != DEFAULT_TABLESPACE_OID && spc != GLOBAL_TABLESPACE_OID {
            self.dbs()?.remove(&(spc, db));
        }
        Ok(())
    }

    /// A database with no relations yet (its relations are created after).
    pub fn put_db_creation(&mut self, spc: u32, db: u32) -> Result<()> {
        self.dbs()?.insert((spc, db));
        Ok(())
    }

    pub fn put_db_drop(&mut self, spc: u32, db: u32) -> Result<()> {
        self.dbs()?.remove(&(spc, db));
        self.rel_dir(spc, db)?.clear();
        self.rels
            .sizes
            .retain(|rel, _| (rel.node.spc_oid, rel.node.db_oid) != (spc, db));
        self.rels.dropped_dbs.push((spc, db));
        self.put(Key::relmap_file(spc, db), Value::Image(Bytes::new()));
        Ok(())
    }

    pub fn put_relmap_file(&mut self, spc: u32, db: u32, contents: Bytes) -> Result<()> {
        self.put(Key::relmap_file(spc, db), Value::Image(contents));
        Ok(())
    }

    fn slru_dir(&mut self, kind: SlruKind) -> Result<&mut Dir<u32>> {
        if !self.slru_dirs.contains_key(&kind) {
            let segments = self.timeline.list_slru_segments(kind, self.read_lsn())?;
            self.slru_dirs.insert(kind, Dir::new(segments));
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
        let size = match self.slru_sizes.get(&size_key) {
            Some(&n) => n,
            None => self
                .timeline
                .get_slru_segment_size(kind, segment, self.read_lsn())?,
        };
        if block >= size {
            self.slru_sizes.insert(size_key, block + 1);
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

    fn twophase(&mut self) -> Result<&mut Dir<u32>> {
        if self.twophase.is_none() {
            self.twophase = Some(Dir::new(
                self.timeline.list_twophase_files(self.read_lsn())?,
            ));
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

    /// A shutdown checkpoint record begins at `start`.
    pub fn put_shutdown_checkpoint(&mut self, start: Lsn) -> Result<()> {
        let bytes = Bytes::copy_from_slice(&start.0.to_le_bytes());
        self.put(Key::shutdown_checkpoint(), Value::Image(bytes));
        Ok(())
    }

    /// Store everything at this modification's LSN and make `record` the
    /// last record ingested. Directories are written only if changed.
    pub fn commit(mut self, record: RecordLsn) -> Result<()> {
        for ((spc, db), rels) in std::mem::take(&mut self.rel_dirs) {
            if rels.changed {
                let value = encode_set(&rels.entries, |out, r| {
                    out.put_u32_le(r.node.rel_node);
                    out.put_u8(r.fork as u8);
                });
                self.put(Key::rel_dir(spc, db), Value::Image(value));
            }
        }
        if let Some(dbs) = self.dbs.take().filter(|d| d.changed) {
            let value = encode_set(&dbs.entries, |out, (spc, db)| {
                out.put_u32_le(*spc);
                out.put_u32_le(*db);
            });
            self.put(Key::db_dir(), Value::Image(value));
        }
        for (kind, segments) in std::mem::take(&mut self.slru_dirs) {
            if segments.changed {
                let value = encode_set(&segments.entries, |out, s| out.put_u32_le(*s));
                self.put(Key::slru_dir(kind), Value::Image(value));
            }
        }
        if let Some(xids) = self.twophase.take().filter(|d| d.changed) {
            let value = encode_set(&xids.entries, |out, x| out.put_u32_le(*x));
            self.put(Key::twophase_dir(), Value::Image(value));
        }
        if !self.pending.is_empty() {
            self.timeline
                .put_batch(self.lsn, std::mem::take(&mut self.pending))?;
        }
        if let Some(cache) = self.cache.take() {
            cache.apply(&self.rels);
        }
        self.timeline.advance_last_record(record);
        Ok(())
    }
}
