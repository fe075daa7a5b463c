//! Bounding every key's chain of deltas, so that a read applies at most
//! [`TimelineConf::max_delta_chain`] records on top of a whole version.
//!
//! Ingest counts, per key, the deltas stored since the key's last whole
//! version (an image, an unreadable version, or a record that initialises
//! the page). When a delta makes a chain reach the bound, the page is
//! reconstructed at that delta's LSN and the delta is replaced by the
//! image: the same version, whole, so the next read starts there. The
//! bound therefore holds in the in-memory layer as well as in the layer
//! files it is written to, whatever compaction has done; image layers only
//! make chains shorter.
//!
//! The counts are a cache: a key without one (after a restart, on a new
//! branch, or after the map was cleared for growing past
//! [`MAX_TRACKED_KEYS`]) has its chain counted by a read when its next
//! delta arrives. A count may be above the real length (an image layer
//! written since); that only makes a page image come earlier.
//!
//! [`TimelineConf::max_delta_chain`]: super::TimelineConf::max_delta_chain

use std::collections::HashMap;

use tracing::{error, warn};
use utils::Lsn;

use crate::key::Key;
use crate::value::Value;

use super::{lock, ReadError, Timeline};

/// Keys whose chain length is remembered at most (about 40 MiB); past it
/// the map starts again empty.
pub const MAX_TRACKED_KEYS: usize = 1 << 20;

/// Deltas stored since each key's last whole version.
#[derive(Default)]
pub(super) struct DeltaChains {
    lengths: HashMap<Key, u32>,
}

/// What a put stored for a key: a delta on top of what came before, or a
/// whole version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stored {
    Delta,
    Whole,
}

impl Stored {
    pub(super) fn of(value: &Value) -> Stored {
        match value {
            Value::Delta(delta) if !delta.will_init() => Stored::Delta,
            _ => Stored::Whole,
        }
    }
}

impl Timeline {
    /// After a put at `lsn`: count the chains of the keys it stored, and
    /// replace the delta at `lsn` by the page image for each key whose
    /// chain reached the bound.
    pub(super) fn bound_delta_chains(&self, lsn: Lsn, stored: &[(Key, Stored)]) {
        let max = self.conf.max_delta_chain.max(1);
        let mut unknown = Vec::new();
        let mut full = Vec::new();
        {
            let mut chains = lock(&self.delta_chains);
            if chains.lengths.len() > MAX_TRACKED_KEYS {
                chains.lengths.clear();
            }
            for &(key, what) in stored {
                if what == Stored::Whole {
                    chains.lengths.insert(key, 0);
                    continue;
                }
                match chains.lengths.get_mut(&key) {
                    Some(length) => {
                        *length = length.saturating_add(1);
                        if *length as usize >= max {
                            full.push(key);
                        }
                    }
                    None => unknown.push(key),
                }
            }
        }
        for key in unknown {
            match self.delta_chain_len(key, lsn) {
                Ok(length) if length >= max => full.push(key),
                Ok(length) => {
                    let length = u32::try_from(length).unwrap_or(u32::MAX);
                    lock(&self.delta_chains).lengths.insert(key, length);
                }
                Err(e) => warn!(
                    "timeline {}: counting the deltas of {key:?} at {lsn}: {e}",
                    self.timeline_id
                ),
            }
        }
        for key in full {
            self.materialize(key, lsn);
        }
    }

    /// Replace the delta of `key` at `lsn` by the version it makes.
    fn materialize(&self, key: Key, lsn: Lsn) {
        let version = match self.get_version(key, lsn) {
            Ok(Some(version @ (Value::Image(_) | Value::Unreadable(_)))) => version,
            Ok(other) => {
                error!(
                    "timeline {}: {key:?} at {lsn} has a delta but reads as {:?}",
                    self.timeline_id,
                    other.map(|v| v.encoded_len())
                );
                return;
            }
            Err(e) => {
                // Reads of this version fail the same way; counting again
                // from zero keeps ingest from retrying on every delta.
                error!(
                    "timeline {}: reconstructing {key:?} at {lsn} to end its delta chain: {e}",
                    self.timeline_id
                );
                lock(&self.delta_chains).lengths.insert(key, 0);
                return;
            }
        };
        {
            let mut layers = self.layers.write().unwrap_or_else(|p| p.into_inner());
            if lsn < layers.open.start() {
                // Frozen by a flush meanwhile: the next delta tries again.
                return;
            }
            layers.open.put(key, lsn, version);
        }
        lock(&self.delta_chains).lengths.insert(key, 0);
        crate::metrics::get().delta_chains_ended.inc();
    }

    /// How many deltas a read of `key` at `lsn` applies on top of the
    /// whole version it starts from.
    pub fn delta_chain_len(&self, key: Key, lsn: Lsn) -> Result<usize, ReadError> {
        let values = self.collect_versions(key, lsn)?;
        Ok(values
            .iter()
            .filter(|(_, value)| Stored::of(value) == Stored::Delta)
            .count())
    }
}
