//! A timeline: one line of WAL history, as versioned key/values.
//!
//! `get(key, lsn)` reconstructs a value as of an LSN: the newest image at
//! or below it, with the Rust-applied deltas above that image applied in
//! LSN order. A branch is a timeline with an ancestor: reads below the
//! branch point fall through to the ancestor at the branch LSN, so
//! creating a branch copies nothing.
//!
//! Storage here is an in-memory map of versions per key; it is the
//! interface the persistent layers (open in-memory layer, delta and image
//! layer files, layer map) will implement behind.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use postgres_format::PgMajorVersion;
use tokio::sync::watch;
use utils::{Lsn, TenantId, TimelineId};

use crate::key::{Key, KeyRange};
use crate::value::{RustRecord, Value, BLCKSZ};

/// The last record ingested: where it ends, and where it began (the next
/// record's `xl_prev`, which a base backup's fabricated checkpoint needs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordLsn {
    pub last: Lsn,
    pub prev: Lsn,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{key:?} at {lsn}: deltas without a base image")]
    MissingBase { key: Key, lsn: Lsn },
    #[error("{key:?} at {lsn}: {reason}")]
    Reconstruct { key: Key, lsn: Lsn, reason: String },
    #[error("timed out after {timeout:?} waiting for WAL up to {lsn}; ingested up to {last}")]
    WaitTimeout {
        lsn: Lsn,
        last: Lsn,
        timeout: Duration,
    },
    #[error("timeline is shutting down")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error("cannot branch at {lsn}: the timeline's WAL ends at {last}")]
    BeyondEnd { lsn: Lsn, last: Lsn },
    #[error("cannot branch at {lsn}: below the GC horizon {horizon}")]
    BelowGcHorizon { lsn: Lsn, horizon: Lsn },
    #[error("cannot branch at {lsn}: before the timeline's start {start}")]
    BeforeStart { lsn: Lsn, start: Lsn },
}

#[derive(Clone)]
pub struct Ancestor {
    pub timeline: Arc<Timeline>,
    pub lsn: Lsn,
}

pub struct Timeline {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub pg_version: PgMajorVersion,
    ancestor: Option<Ancestor>,
    /// Where this timeline's own history begins (its branch point, or the
    /// bootstrap LSN).
    start_lsn: Lsn,
    versions: RwLock<BTreeMap<Key, BTreeMap<Lsn, Value>>>,
    last_record: watch::Sender<RecordLsn>,
    gc_horizon: RwLock<Lsn>,
}

impl Timeline {
    /// A timeline without ancestor whose history begins at `start`.
    pub fn new_root(
        tenant_id: TenantId,
        timeline_id: TimelineId,
        pg_version: PgMajorVersion,
        start: RecordLsn,
    ) -> Timeline {
        Timeline {
            tenant_id,
            timeline_id,
            pg_version,
            ancestor: None,
            start_lsn: start.last,
            versions: RwLock::new(BTreeMap::new()),
            last_record: watch::channel(start).0,
            gc_horizon: RwLock::new(Lsn::INVALID),
        }
    }

    /// A branch of this timeline at `lsn` (a record boundary this timeline
    /// has ingested, with the record before it at `prev`). O(1): nothing is copied.
    pub fn branch(
        self: &Arc<Self>,
        timeline_id: TimelineId,
        at: RecordLsn,
    ) -> Result<Timeline, BranchError> {
        let last = self.last_record_lsn();
        if at.last > last {
            return Err(BranchError::BeyondEnd { lsn: at.last, last });
        }
        if at.last < self.start_lsn {
            return Err(BranchError::BeforeStart {
                lsn: at.last,
                start: self.start_lsn,
            });
        }
        let horizon = self.gc_horizon();
        if at.last < horizon {
            return Err(BranchError::BelowGcHorizon {
                lsn: at.last,
                horizon,
            });
        }
        Ok(Timeline {
            tenant_id: self.tenant_id,
            timeline_id,
            pg_version: self.pg_version,
            ancestor: Some(Ancestor {
                timeline: self.clone(),
                lsn: at.last,
            }),
            start_lsn: at.last,
            versions: RwLock::new(BTreeMap::new()),
            last_record: watch::channel(at).0,
            gc_horizon: RwLock::new(Lsn::INVALID),
        })
    }

    pub fn ancestor(&self) -> Option<&Ancestor> {
        self.ancestor.as_ref()
    }

    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    pub fn gc_horizon(&self) -> Lsn {
        *self.gc_horizon.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_record(&self) -> RecordLsn {
        *self.last_record.borrow()
    }

    pub fn last_record_lsn(&self) -> Lsn {
        self.last_record().last
    }

    /// Wait until WAL up to `lsn` is ingested.
    pub async fn wait_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<(), ReadError> {
        let mut rx = self.last_record.subscribe();
        let result = tokio::time::timeout(timeout, async {
            rx.wait_for(|r| r.last >= lsn).await.map(|_| ())
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ReadError::ShuttingDown),
            Err(_) => Err(ReadError::WaitTimeout {
                lsn,
                last: self.last_record_lsn(),
                timeout,
            }),
        }
    }

    /// The value of `key` as of `lsn`, `None` if it has none.
    pub fn get(&self, key: Key, lsn: Lsn) -> Result<Option<Bytes>, ReadError> {
        let mut deltas: Vec<RustRecord> = Vec::new();
        let mut timeline = self;
        let mut at = lsn;
        let base = loop {
            {
                let versions = timeline.versions.read().unwrap_or_else(|p| p.into_inner());
                if let Some(history) = versions.get(&key) {
                    let mut found = None;
                    for (_, value) in history.range(..=at).rev() {
                        match value {
                            Value::Image(image) => {
                                found = Some(image.clone());
                                break;
                            }
                            Value::Delta(delta) => deltas.push(delta.clone()),
                        }
                    }
                    if found.is_some() {
                        break found;
                    }
                }
            }
            match &timeline.ancestor {
                Some(ancestor) => {
                    at = at.min(ancestor.lsn);
                    timeline = &ancestor.timeline;
                }
                None => break None,
            }
        };
        match (base, deltas.is_empty()) {
            (base, true) => Ok(base),
            (None, false) => Err(ReadError::MissingBase { key, lsn }),
            (Some(image), false) => {
                let mut page: [u8; BLCKSZ] =
                    image
                        .as_ref()
                        .try_into()
                        .map_err(|_| ReadError::Reconstruct {
                            key,
                            lsn,
                            reason: format!(
                                "deltas on a value of {} bytes, not a page",
                                image.len()
                            ),
                        })?;
                for delta in deltas.iter().rev() {
                    delta.apply(&mut page).map_err(|e| ReadError::Reconstruct {
                        key,
                        lsn,
                        reason: e.to_string(),
                    })?;
                }
                Ok(Some(Bytes::copy_from_slice(&page)))
            }
        }
    }

    /// Store values at `lsn`. Several values for one key at one LSN are
    /// applied in order: an image replaces, a delta applies on top.
    pub fn put_batch(&self, lsn: Lsn, values: Vec<(Key, Value)>) -> Result<(), ReadError> {
        let mut folded: BTreeMap<Key, Value> = BTreeMap::new();
        for (key, value) in values {
            match (folded.remove(&key), value) {
                (None, value) | (Some(_), value @ Value::Image(_)) => {
                    folded.insert(key, value);
                }
                (Some(Value::Image(image)), Value::Delta(delta)) => {
                    let mut page: [u8; BLCKSZ] =
                        image
                            .as_ref()
                            .try_into()
                            .map_err(|_| ReadError::Reconstruct {
                                key,
                                lsn,
                                reason: "a delta on a value that is not a page".into(),
                            })?;
                    delta.apply(&mut page).map_err(|e| ReadError::Reconstruct {
                        key,
                        lsn,
                        reason: e.to_string(),
                    })?;
                    folded.insert(key, Value::Image(Bytes::copy_from_slice(&page)));
                }
                (Some(Value::Delta(first)), Value::Delta(second)) => {
                    // Two deltas at one LSN: materialise the page.
                    let base = self
                        .get(key, Lsn(lsn.0.saturating_sub(1)))?
                        .ok_or(ReadError::MissingBase { key, lsn })?;
                    let mut page: [u8; BLCKSZ] =
                        base.as_ref()
                            .try_into()
                            .map_err(|_| ReadError::Reconstruct {
                                key,
                                lsn,
                                reason: "a delta on a value that is not a page".into(),
                            })?;
                    for delta in [first, second] {
                        delta.apply(&mut page).map_err(|e| ReadError::Reconstruct {
                            key,
                            lsn,
                            reason: e.to_string(),
                        })?;
                    }
                    folded.insert(key, Value::Image(Bytes::copy_from_slice(&page)));
                }
            }
        }
        let mut versions = self.versions.write().unwrap_or_else(|p| p.into_inner());
        for (key, value) in folded {
            versions.entry(key).or_default().insert(lsn, value);
        }
        Ok(())
    }

    /// The record ending at `record.last` is fully ingested.
    pub fn advance_last_record(&self, record: RecordLsn) {
        self.last_record.send_if_modified(|current| {
            if record.last > current.last {
                *current = record;
                true
            } else {
                false
            }
        });
    }

    /// Keys in `range` that have a value stored on this timeline itself
    /// (not its ancestors), for diagnostics and tests.
    pub fn own_keys(&self, range: KeyRange) -> Vec<Key> {
        let versions = self.versions.read().unwrap_or_else(|p| p.into_inner());
        versions
            .range(range.start..range.end)
            .map(|(k, _)| *k)
            .collect()
    }
}
