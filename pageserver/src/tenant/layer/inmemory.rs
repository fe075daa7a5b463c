//! The open in-memory layer: the values a timeline has ingested since its
//! last flush, every version of every key at LSNs `>= start`.
//!
//! The timeline writes into one open layer. When it grows past a size, or
//! on demand, the timeline freezes it at a record boundary `end`
//! ([`InMemoryLayer::freeze`]): values below `end` become an immutable
//! frozen layer covering `[start, end)` that is written out as a delta
//! layer file, and values at `end` and above stay in a new open layer
//! starting at `end`.

use std::collections::BTreeMap;

use utils::Lsn;

use crate::key::{Key, KeyRange};
use crate::value::Value;

/// Bytes an entry costs besides its value: the key, the LSN and map overhead.
const ENTRY_OVERHEAD: usize = Key::SIZE + 8 + 32;

/// Versions per key, at LSNs `>= start` (and `< end` once frozen).
#[derive(Debug)]
pub struct InMemoryLayer {
    start: Lsn,
    end: Option<Lsn>,
    versions: BTreeMap<Key, BTreeMap<Lsn, Value>>,
    size: usize,
    entries: usize,
}

fn entry_size(value: &Value) -> usize {
    ENTRY_OVERHEAD + value.encoded_len()
}

impl InMemoryLayer {
    /// An empty open layer for values at LSNs `>= start`.
    pub fn new(start: Lsn) -> InMemoryLayer {
        InMemoryLayer {
            start,
            end: None,
            versions: BTreeMap::new(),
            size: 0,
            entries: 0,
        }
    }

    pub fn start(&self) -> Lsn {
        self.start
    }

    /// Where a frozen layer ends (exclusive); `None` while open.
    pub fn end(&self) -> Option<Lsn> {
        self.end
    }

    /// The LSN range the layer covers: `[start, end)`, or up to `Lsn::MAX`
    /// while open.
    pub fn lsn_range(&self) -> std::ops::Range<Lsn> {
        self.start..self.end.unwrap_or(Lsn::MAX)
    }

    /// Approximate memory used by the values, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn entry_count(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The smallest range holding every key of the layer (`None` if empty).
    pub fn key_range(&self) -> Option<KeyRange> {
        let first = self.versions.keys().next()?;
        let last = self.versions.keys().next_back()?;
        Some(KeyRange::new(*first, last.next()))
    }

    /// Store `value` for `key` at `lsn`, replacing a value at the same
    /// (key, LSN). Panics if the layer is frozen or `lsn` is below its
    /// start: the timeline checks both first.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: Value) {
        assert!(self.end.is_none(), "put into a frozen in-memory layer");
        assert!(
            lsn >= self.start,
            "put at {lsn} below the layer start {}",
            self.start
        );
        let size = entry_size(&value);
        match self.versions.entry(key).or_default().insert(lsn, value) {
            Some(old) => self.size -= entry_size(&old),
            None => self.entries += 1,
        }
        self.size += size;
    }

    /// The values of `key` at LSNs `<= lsn`, newest first, ending with (and
    /// including) the newest image if there is one.
    pub fn get_values(&self, key: Key, lsn: Lsn) -> Vec<(Lsn, Value)> {
        let mut out = Vec::new();
        if let Some(history) = self.versions.get(&key) {
            for (at, value) in history.range(..=lsn).rev() {
                out.push((*at, value.clone()));
                if value.will_init() {
                    break;
                }
            }
        }
        out
    }

    /// Every key with a value in `range`.
    pub fn keys(&self, range: KeyRange) -> impl Iterator<Item = Key> + '_ {
        let r = if range.is_empty() {
            None
        } else {
            Some(self.versions.range(range.start..range.end))
        };
        r.into_iter().flatten().map(|(k, _)| *k)
    }

    /// Every (key, LSN, value) in (key, LSN) order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Lsn, &Value)> + '_ {
        self.versions
            .iter()
            .flat_map(|(k, h)| h.iter().map(move |(l, v)| (*k, *l, v)))
    }

    /// Split at `end`: the values below `end` are returned as a frozen
    /// layer covering `[start, end)`; this layer keeps the values at `end`
    /// and above and starts at `end`. `end` must not be below the start.
    pub fn freeze(&mut self, end: Lsn) -> InMemoryLayer {
        assert!(self.end.is_none(), "freezing a frozen layer");
        assert!(
            end >= self.start,
            "freezing at {end} below the start {}",
            self.start
        );
        let mut frozen = BTreeMap::new();
        let mut kept = BTreeMap::new();
        let (mut frozen_size, mut frozen_entries) = (0, 0);
        for (key, mut history) in std::mem::take(&mut self.versions) {
            let above = history.split_off(&end);
            if !history.is_empty() {
                frozen_entries += history.len();
                frozen_size += history.values().map(entry_size).sum::<usize>();
                frozen.insert(key, history);
            }
            if !above.is_empty() {
                kept.insert(key, above);
            }
        }
        let layer = InMemoryLayer {
            start: self.start,
            end: Some(end),
            versions: frozen,
            size: frozen_size,
            entries: frozen_entries,
        };
        self.versions = kept;
        self.size -= frozen_size;
        self.entries -= frozen_entries;
        self.start = end;
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn img(b: u8) -> Value {
        Value::Image(Bytes::from(vec![b; 10]))
    }

    #[test]
    fn get_freeze_and_size() {
        let k = Key::db_dir();
        let mut l = InMemoryLayer::new(Lsn(10));
        l.put(k, Lsn(10), img(1));
        l.put(k, Lsn(20), img(2));
        l.put(k, Lsn(30), img(3));
        assert_eq!(l.entry_count(), 3);
        let size = l.size();
        assert_eq!(l.get_values(k, Lsn(25)), vec![(Lsn(20), img(2))]);
        assert!(l.get_values(k, Lsn(9)).is_empty());
        let frozen = l.freeze(Lsn(21));
        assert_eq!(frozen.lsn_range(), Lsn(10)..Lsn(21));
        assert_eq!(frozen.entry_count(), 2);
        assert_eq!(l.entry_count(), 1);
        assert_eq!(l.start(), Lsn(21));
        assert_eq!(frozen.size() + l.size(), size);
        assert_eq!(frozen.key_range(), Some(KeyRange::singleton(k)));
        assert_eq!(l.get_values(k, Lsn(100)), vec![(Lsn(30), img(3))]);
        // Replacing a value keeps the accounting right.
        l.put(k, Lsn(30), img(4));
        assert_eq!(l.entry_count(), 1);
        assert_eq!(l.size(), frozen.size() / 2);
    }
}
