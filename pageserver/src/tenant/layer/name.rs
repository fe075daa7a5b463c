//! Layer file names: the kind, key range and LSN range, parseable back.
//!
//! ```text
//! delta: <key start>-<key end>__<lsn start>-<lsn end>
//! image: <key start>-<key end>__<lsn>
//! ```
//!
//! Keys are 38 upper-case hexadecimal digits ([`Key`]'s `Display`), LSNs 16
//! upper-case hexadecimal digits; both ranges are half-open and not empty.
//! The parser accepts only this canonical form, so a layer has exactly one
//! name and temporary files (`….tmp`) are never mistaken for layers.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use utils::Lsn;

use crate::key::{Key, KeyRange};

/// What a layer file's name says about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LayerName {
    Delta {
        key_range: KeyRange,
        lsn_range: Range<Lsn>,
    },
    Image {
        key_range: KeyRange,
        lsn: Lsn,
    },
}

impl LayerName {
    /// (kind, key range, LSN range start, end): the order of [`Ord`].
    fn sort_key(&self) -> (u8, KeyRange, Lsn, Lsn) {
        match self {
            LayerName::Delta {
                key_range,
                lsn_range,
            } => (0, *key_range, lsn_range.start, lsn_range.end),
            LayerName::Image { key_range, lsn } => (1, *key_range, *lsn, *lsn),
        }
    }
}

impl Ord for LayerName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for LayerName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A string that is not a layer file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a layer file name: {reason}")]
pub struct LayerNameError {
    pub name: String,
    pub reason: &'static str,
}

impl LayerName {
    pub fn key_range(&self) -> KeyRange {
        match self {
            LayerName::Delta { key_range, .. } | LayerName::Image { key_range, .. } => *key_range,
        }
    }

    /// The LSN range of the layer's content; an image layer at `lsn` covers
    /// `[lsn, lsn + 1)`.
    pub fn lsn_range(&self) -> Range<Lsn> {
        match self {
            LayerName::Delta { lsn_range, .. } => lsn_range.clone(),
            LayerName::Image { lsn, .. } => *lsn..Lsn(lsn.0.saturating_add(1)),
        }
    }

    pub fn is_delta(&self) -> bool {
        matches!(self, LayerName::Delta { .. })
    }
}

impl fmt::Display for LayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerName::Delta {
                key_range,
                lsn_range,
            } => write!(
                f,
                "{}-{}__{:016X}-{:016X}",
                key_range.start, key_range.end, lsn_range.start.0, lsn_range.end.0
            ),
            LayerName::Image { key_range, lsn } => {
                write!(f, "{}-{}__{:016X}", key_range.start, key_range.end, lsn.0)
            }
        }
    }
}

fn upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
}

fn parse_key(s: &str) -> Option<Key> {
    if upper_hex(s) {
        s.parse().ok()
    } else {
        None
    }
}

fn parse_lsn(s: &str) -> Option<Lsn> {
    if s.len() == 16 && upper_hex(s) {
        u64::from_str_radix(s, 16).ok().map(Lsn)
    } else {
        None
    }
}

impl FromStr for LayerName {
    type Err = LayerNameError;

    fn from_str(name: &str) -> Result<LayerName, LayerNameError> {
        let err = |reason| LayerNameError {
            name: name.to_owned(),
            reason,
        };
        let (keys, lsns) = name
            .split_once("__")
            .ok_or_else(|| err("no \"__\" between key range and LSNs"))?;
        let (ks, ke) = keys
            .split_once('-')
            .ok_or_else(|| err("no '-' in the key range"))?;
        let start = parse_key(ks).ok_or_else(|| err("bad start key"))?;
        let end = parse_key(ke).ok_or_else(|| err("bad end key"))?;
        if start >= end {
            return Err(err("empty key range"));
        }
        let key_range = KeyRange::new(start, end);
        match lsns.split_once('-') {
            Some((ls, le)) => {
                let ls = parse_lsn(ls).ok_or_else(|| err("bad start LSN"))?;
                let le = parse_lsn(le).ok_or_else(|| err("bad end LSN"))?;
                if ls >= le {
                    return Err(err("empty LSN range"));
                }
                Ok(LayerName::Delta {
                    key_range,
                    lsn_range: ls..le,
                })
            }
            None => {
                let lsn = parse_lsn(lsns).ok_or_else(|| err("bad LSN"))?;
                if lsn == Lsn::MAX {
                    return Err(err("image LSN is the greatest LSN"));
                }
                Ok(LayerName::Image { key_range, lsn })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let kr = KeyRange::new(Key::db_dir(), Key::MAX);
        let d = LayerName::Delta {
            key_range: kr,
            lsn_range: Lsn(0x16B5A50)..Lsn(0x1_0000_0000),
        };
        let s = d.to_string();
        assert_eq!(
            s,
            format!(
                "{}-{}__00000000016B5A50-0000000100000000",
                Key::db_dir(),
                Key::MAX
            )
        );
        assert_eq!(s.parse::<LayerName>().unwrap(), d);
        let i = LayerName::Image {
            key_range: kr,
            lsn: Lsn(42),
        };
        assert_eq!(i.to_string().parse::<LayerName>().unwrap(), i);
        assert_eq!(i.lsn_range(), Lsn(42)..Lsn(43));

        let good = d.to_string();
        let bad = [
            String::new(),
            format!("{good}.tmp"),
            good.to_lowercase(),
            good.replacen("__", "_", 1),
            good.replacen('-', "+", 1),
            format!("{}-{}__{:016X}-{:016X}", Key::MAX, Key::db_dir(), 1, 2),
            format!("{}-{}__{:016X}-{:016X}", Key::MIN, Key::MAX, 2, 2),
            format!("{}-{}__{:015X}", Key::MIN, Key::MAX, 2),
            format!("{}-{}__{:016X}", Key::MIN, Key::MAX, u64::MAX),
            format!("{}-{}__{:016X}-", Key::MIN, Key::MAX, 2),
            format!("{}0-{}__{:016X}", Key::MIN, Key::MAX, 2),
            format!("x{good}"),
        ];
        for b in bad {
            assert!(b.parse::<LayerName>().is_err(), "{b}");
        }
    }
}
