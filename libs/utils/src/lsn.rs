//! Log sequence numbers.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in the write-ahead log: a byte offset into the infinite WAL
/// stream, printed as PostgreSQL prints it (`16/B374D848`).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Returned when a string is not of the form `X/Y` with hexadecimal halves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 0/16B5A50")]
pub struct LsnParseError(String);

impl Lsn {
    /// The invalid LSN (PostgreSQL's `InvalidXLogRecPtr`).
    pub const INVALID: Lsn = Lsn(0);
    /// The greatest LSN.
    pub const MAX: Lsn = Lsn(u64::MAX);

    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }

    /// Offset of this LSN inside a block of `block_size` bytes (a power of two).
    pub fn block_offset(self, block_size: u64) -> u64 {
        debug_assert!(block_size.is_power_of_two());
        self.0 & (block_size - 1)
    }

    /// Offset of this LSN inside its WAL segment.
    pub fn segment_offset(self, segment_size: u64) -> u64 {
        debug_assert!(segment_size.is_power_of_two());
        self.0 & (segment_size - 1)
    }

    /// Number of the WAL segment that holds this LSN.
    pub fn segment_number(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }

    /// Round up to a multiple of `alignment` (a power of two); `None` if
    /// that lies past the greatest LSN.
    pub fn checked_align_up(self, alignment: u64) -> Option<Lsn> {
        debug_assert!(alignment.is_power_of_two());
        let mask = alignment.checked_sub(1)?;
        Some(Lsn(self.0.checked_add(mask)? & !mask))
    }

    /// Add, returning `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// Subtract another LSN, returning `None` if it is greater.
    pub fn checked_sub(self, other: Lsn) -> Option<u64> {
        self.0.checked_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_owned());
        let (high, low) = s.split_once('/').ok_or_else(err)?;
        if high.is_empty() || low.is_empty() || high.len() > 8 || low.len() > 8 {
            return Err(err());
        }
        let high = u32::from_str_radix(high, 16).map_err(|_| err())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| err())?;
        Ok(Lsn(((high as u64) << 32) | low as u64))
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(value: Lsn) -> Self {
        value.0
    }
}

impl Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, rhs: u64) -> Lsn {
        Lsn(self.0.checked_add(rhs).expect("LSN overflow"))
    }
}

impl AddAssign<u64> for Lsn {
    fn add_assign(&mut self, rhs: u64) {
        *self = *self + rhs;
    }
}

impl Sub<Lsn> for Lsn {
    type Output = u64;
    fn sub(self, rhs: Lsn) -> u64 {
        self.0
            .checked_sub(rhs.0)
            .expect("LSN subtraction underflow")
    }
}

impl Sub<u64> for Lsn {
    type Output = Lsn;
    fn sub(self, rhs: u64) -> Lsn {
        Lsn(self.0.checked_sub(rhs).expect("LSN subtraction underflow"))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for value in [0u64, 0x16B5A50, 0x1_0000_0000, u64::MAX] {
            let lsn = Lsn(value);
            assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
        assert_eq!(Lsn(0x16B5A50).to_string(), "0/16B5A50");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "0", "/1", "1/", "x/1", "1/2/3", "123456789/0", " 0/1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn arithmetic() {
        let lsn = Lsn(0x0100_2010);
        assert_eq!(lsn.block_offset(8192), 0x10);
        assert_eq!(lsn.segment_offset(16 << 20), 0x2010);
        assert_eq!(lsn.segment_number(16 << 20), 1);
        assert_eq!(Lsn(9).checked_align_up(8), Some(Lsn(16)));
        assert_eq!(Lsn(16).checked_align_up(8), Some(Lsn(16)));
        // Near the top of the LSN space rounding up has nowhere to go.
        assert_eq!(Lsn(u64::MAX - 3).checked_align_up(8), None);
        assert_eq!(
            Lsn(u64::MAX - 7).checked_align_up(8),
            Some(Lsn(u64::MAX - 7))
        );
        assert_eq!(Lsn(5).checked_sub(Lsn(6)), None);
        assert_eq!(Lsn::MAX.checked_add(1), None);
    }

    #[test]
    fn serde_as_string() {
        let json = serde_json::to_string(&Lsn(0x16B5A50)).unwrap();
        assert_eq!(json, "\"0/16B5A50\"");
        assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), Lsn(0x16B5A50));
    }
}
