//! The read path: a value as of an LSN, collected newest first from the
//! open layer, the frozen layers, the layer files down to an image, then
//! the ancestor at the branch LSN, with the Rust-applied deltas above the
//! image applied in LSN order.

use std::time::Duration;

use bytes::Bytes;
use utils::Lsn;

use crate::key::Key;
use crate::tenant::layer::map::collect_values;
use crate::value::{RustRecord, Value, BLCKSZ};

use super::{ReadError, Timeline};

impl Timeline {
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

    /// Refuse a read at `lsn` below the GC horizon: GC may have removed
    /// what it needs, and an older image would answer it stale. GC raises
    /// the horizon before it removes anything, so a read checked again
    /// after it completed was not affected by any removal.
    pub fn check_readable_at(&self, lsn: Lsn) -> Result<(), ReadError> {
        let horizon = self.gc_horizon();
        if lsn < horizon {
            return Err(ReadError::BelowGcHorizon { lsn, horizon });
        }
        Ok(())
    }

    /// This timeline's own values of `key` at LSNs `<= lsn`, newest first,
    /// appended to `out` down to an image; `true` if an image was reached.
    fn collect_own(
        &self,
        key: Key,
        lsn: Lsn,
        out: &mut Vec<(Lsn, Value)>,
    ) -> Result<bool, ReadError> {
        let candidates = {
            let layers = self.layers.read().unwrap_or_else(|p| p.into_inner());
            let in_memory =
                std::iter::once(&layers.open).chain(layers.frozen.iter().rev().map(|f| &f.layer));
            for layer in in_memory {
                for (at, value) in layer.get_values(key, lsn) {
                    let image = value.will_init();
                    out.push((at, value));
                    if image {
                        return Ok(true);
                    }
                }
            }
            layers.files.candidates(key, lsn)
        };
        if candidates.is_empty() {
            return Ok(false);
        }
        Ok(collect_values(&candidates, key, lsn, out)?)
    }

    /// The values of `key` at LSNs `<= lsn`, newest first, down to a whole
    /// version: this timeline's, then its ancestors' at their branch points.
    pub(super) fn collect_versions(
        &self,
        key: Key,
        lsn: Lsn,
    ) -> Result<Vec<(Lsn, Value)>, ReadError> {
        let mut values: Vec<(Lsn, Value)> = Vec::new();
        let mut timeline = self;
        let mut at = lsn;
        loop {
            if timeline.collect_own(key, at, &mut values)? {
                break;
            }
            match &timeline.ancestor {
                Some(ancestor) => {
                    at = at.min(ancestor.lsn);
                    timeline = &ancestor.timeline;
                }
                None => break,
            }
        }
        Ok(values)
    }

    /// The value of `key` as of `lsn`, `None` if it has none. A version
    /// made unreadable by a record without image or redo is an error
    /// ([`ReadError::Unreadable`]), counted in the metrics.
    pub fn get(&self, key: Key, lsn: Lsn) -> Result<Option<Bytes>, ReadError> {
        match self.get_version(key, lsn)? {
            None => Ok(None),
            Some(Value::Image(image)) => Ok(Some(image)),
            Some(Value::Unreadable(record)) => {
                crate::metrics::get().unreadable_page_reads.inc();
                Err(ReadError::Unreadable { key, lsn, record })
            }
            Some(Value::Delta(_)) => unreachable!("get_version returns whole versions"),
        }
    }

    /// The version of `key` as of `lsn`: an image, or the unreadable
    /// version that stands at `lsn`; `None` if the key has none.
    pub fn get_version(&self, key: Key, lsn: Lsn) -> Result<Option<Value>, ReadError> {
        let mut values = self.collect_versions(key, lsn)?;
        let base = match values.pop() {
            None => return Ok(None),
            Some((_, Value::Image(image))) => image,
            // Deltas above it cannot make it readable again.
            Some((_, unreadable @ Value::Unreadable(_))) => return Ok(Some(unreadable)),
            // A record that initialises the page starts from zeroes; so does
            // a WAL record on a block with no earlier version (a page the
            // relation was extended by without WAL, such as a new
            // visibility-map page: PostgreSQL's redo sees it as new too).
            Some((at, Value::Delta(delta)))
                if delta.will_init() || matches!(delta, RustRecord::WalRecord { .. }) =>
            {
                values.push((at, Value::Delta(delta)));
                Bytes::from_static(&ZERO_PAGE)
            }
            Some((_, Value::Delta(_))) => return Err(ReadError::MissingBase { key, lsn }),
        };
        if values.is_empty() {
            return Ok(Some(Value::Image(base)));
        }
        let deltas = values.into_iter().rev().map(|(_, v)| match v {
            Value::Delta(d) => d,
            Value::Image(_) | Value::Unreadable(_) => {
                unreachable!("whole versions end the collected values")
            }
        });
        apply_deltas(key, lsn, &base, deltas).map(|page| Some(Value::Image(page)))
    }
}

/// The page a record that initialises a page starts from.
pub(super) static ZERO_PAGE: [u8; BLCKSZ] = [0; BLCKSZ];

pub(super) fn apply_deltas(
    key: Key,
    lsn: Lsn,
    image: &[u8],
    deltas: impl Iterator<Item = RustRecord>,
) -> Result<Bytes, ReadError> {
    let mut page: [u8; BLCKSZ] = image.try_into().map_err(|_| ReadError::Reconstruct {
        key,
        lsn,
        reason: format!("deltas on a value of {} bytes, not a page", image.len()),
    })?;
    for delta in deltas {
        delta.apply(&mut page).map_err(|e| ReadError::Reconstruct {
            key,
            lsn,
            reason: e.to_string(),
        })?;
    }
    Ok(Bytes::copy_from_slice(&page))
}
