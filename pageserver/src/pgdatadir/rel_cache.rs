//! The latest size of relation forks, as WAL ingest leaves them.
//!
//! Nearly every WAL record asks whether the relation of its block exists
//! and how long it is (to extend it). Read from storage, that is a decode
//! of the database's whole relation directory and a size key per record;
//! with thousands of relations, ingest slowed to a crawl. Ingest is the
//! only writer of a timeline and reads the state just before each record,
//! so it keeps what it learnt and changed here: a fork found in the cache
//! exists with that size at the last record ingested. A fork not in it is
//! looked up in storage (and then cached); nothing negative is cached.
//!
//! It learns sizes read from storage as they were before the record being
//! ingested, and a record's own changes only when that record commits, so
//! a failed record leaves it true. At most [`MAX_CACHED_RELS`] forks; past
//! that it starts again empty.

use std::collections::HashMap;

use postgres_format::relfile::RelTag;

/// Relation forks whose size is remembered at most.
pub const MAX_CACHED_RELS: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct RelSizeCache {
    sizes: HashMap<RelTag, u32>,
}

/// What one committed modification did to relation forks.
#[derive(Debug, Default)]
pub(super) struct RelChanges {
    /// The size each fork is left with; `None` for a dropped fork.
    pub sizes: std::collections::BTreeMap<RelTag, Option<u32>>,
    /// Databases dropped (tablespace, database): every fork in them.
    pub dropped_dbs: Vec<(u32, u32)>,
}

impl RelSizeCache {
    /// The fork's size at the last record ingested, if known.
    pub fn get(&self, rel: &RelTag) -> Option<u32> {
        self.sizes.get(rel).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Remember a size read from storage at the last record.
    pub(super) fn learn(&mut self, rel: RelTag, size: u32) {
        if self.sizes.len() >= MAX_CACHED_RELS {
            self.sizes.clear();
        }
        self.sizes.insert(rel, size);
    }

    /// Apply a committed modification's changes.
    pub(super) fn apply(&mut self, changes: &RelChanges) {
        for &(spc, db) in &changes.dropped_dbs {
            self.sizes
                .retain(|rel, _| (rel.node.spc_oid, rel.node.db_oid) != (spc, db));
        }
        for (rel, size) in &changes.sizes {
            match size {
                Some(n) => self.learn(*rel, *n),
                None => {
                    self.sizes.remove(rel);
                }
            }
        }
    }
}
