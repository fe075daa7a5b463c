//! A bounds-checked little-endian cursor over untrusted bytes.
//!
//! [`Reader`] is what every decoder of bytes from disk or from the network
//! uses: WAL records, control files, layer files, metadata files, stored
//! values and protocol messages. Every read checks the length first and
//! returns [`ShortInput`] (naming the structure, the offset and how many
//! bytes were needed and left) instead of panicking; a failed read consumes
//! nothing. [`Reader::finish`] checks that nothing is left over
//! ([`TrailingBytes`]).
//!
//! Integers are little-endian, the byte order of PostgreSQL's on-disk
//! formats on the platforms it runs on and of this system's own formats.
//! A decoder converts the two errors into its own error type with `From`
//! or `map_err`; one whose other errors are plain reasons can use
//! [`Malformed`].
//!
//! ```
//! use utils::bytes_reader::Reader;
//!
//! let mut r = Reader::new(&[1, 0x34, 0x12, 7], "example");
//! assert_eq!(r.u8(), Ok(1));
//! assert_eq!(r.u16(), Ok(0x1234));
//! assert_eq!(r.u32().unwrap_err().to_string(),
//!            "example: needed 4 more bytes at offset 3, only 1 left");
//! assert_eq!(r.u8(), Ok(7));
//! assert!(r.finish().is_ok());
//! ```

/// Returned when a structure is shorter than its format requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: needed {needed} more bytes at offset {offset}, only {available} left")]
pub struct ShortInput {
    /// The structure being read, as given to [`Reader::new`].
    pub what: &'static str,
    /// Where the read started.
    pub offset: usize,
    /// How many bytes it needed.
    pub needed: usize,
    /// How many bytes were left.
    pub available: usize,
}

/// Returned by [`Reader::finish`] when bytes are left after a structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {extra} bytes left over at offset {offset}")]
pub struct TrailingBytes {
    /// The structure being read, as given to [`Reader::new`].
    pub what: &'static str,
    /// Where the structure ended.
    pub offset: usize,
    /// How many bytes follow it.
    pub extra: usize,
}

/// Why bytes are not the structure a decoder expected, for decoders whose
/// other errors are plain reasons: `?` converts [`ShortInput`],
/// [`TrailingBytes`] and a `String` or `&str` reason into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error(transparent)]
    Short(#[from] ShortInput),
    #[error(transparent)]
    Trailing(#[from] TrailingBytes),
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for Malformed {
    fn from(reason: String) -> Self {
        Malformed::Invalid(reason)
    }
}

impl From<&str> for Malformed {
    fn from(reason: &str) -> Self {
        Malformed::Invalid(reason.to_owned())
    }
}

/// `pub fn u32(&mut self) -> Result<u32, ShortInput>` and the like: a
/// little-endian value of each type.
macro_rules! le_reads {
    ($($t:ident)*) => {$(
        #[doc = concat!("A little-endian `", stringify!($t), "`.")]
        pub fn $t(&mut self) -> Result<$t, ShortInput> {
            Ok($t::from_le_bytes(self.array()?))
        }
    )*};
}

/// A cursor over a byte slice whose reads never go past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
    /// How many bytes have been read.
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`; `what` names the structure in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader {
            rest: buf,
            pos: 0,
            what,
        }
    }

    /// Bytes read so far: the offset of the next read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn short(&self, needed: usize) -> ShortInput {
        ShortInput {
            what: self.what,
            offset: self.pos,
            needed,
            available: self.rest.len(),
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ShortInput> {
        if n > self.rest.len() {
            return Err(self.short(n));
        }
        let (out, rest) = self.rest.split_at(n);
        self.rest = rest;
        self.pos += n;
        Ok(out)
    }

    /// Everything not read yet (possibly nothing).
    pub fn rest(&mut self) -> &'a [u8] {
        let out = std::mem::take(&mut self.rest);
        self.pos += out.len();
        out
    }

    /// Skip `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), ShortInput> {
        self.bytes(n).map(|_| ())
    }

    /// The next `N` bytes, as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ShortInput> {
        let Some((out, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(self.short(N));
        };
        self.rest = rest;
        self.pos += N;
        Ok(*out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, ShortInput> {
        let [b] = self.array()?;
        Ok(b)
    }

    le_reads! {
        u16 u32 i32 u64 i64 f64
    }

    /// A byte; any non-zero value is `true`. Formats that allow only 0 and
    /// 1 read a [`Reader::u8`] and check it.
    pub fn bool(&mut self) -> Result<bool, ShortInput> {
        Ok(self.u8()? != 0)
    }

    /// `count` little-endian u32 values. The length is checked before
    /// anything is allocated, so a huge `count` is an error, not an
    /// allocation.
    pub fn u32_vec(&mut self, count: usize) -> Result<Vec<u32>, ShortInput> {
        let needed = count.saturating_mul(4);
        if needed > self.rest.len() {
            return Err(self.short(needed));
        }
        (0..count).map(|_| self.u32()).collect()
    }

    /// A little-endian u32 count of items of `item_size` bytes each that
    /// must follow it: an error, with the count consumed, when the bytes
    /// left cannot hold that many. The result is safe to allocate for.
    pub fn u32_count(&mut self, item_size: usize) -> Result<usize, ShortInput> {
        let count = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        let needed = count.saturating_mul(item_size);
        if needed > self.rest.len() {
            return Err(self.short(needed));
        }
        Ok(count)
    }

    /// Check that everything has been read.
    pub fn finish(self) -> Result<(), TrailingBytes> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(TrailingBytes {
                what: self.what,
                offset: self.pos,
                extra: self.rest.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes holding one of each kind of read in [`read_all`].
    fn sample() -> Vec<u8> {
        let mut b = vec![7u8];
        b.extend_from_slice(&0x1234u16.to_le_bytes());
        b.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        b.extend_from_slice(&(-5i32).to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&(-9i64).to_le_bytes());
        b.extend_from_slice(&1.5f64.to_le_bytes());
        b.push(2);
        b.extend_from_slice(&[0xAA, 0xBB, 0xCC]);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&10u32.to_le_bytes());
        b.extend_from_slice(&11u32.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        b.extend_from_slice(&[9, 9]);
        b
    }

    type All = (u8, u16, u32, i32, u64, i64, f64, bool, [u8; 2], Vec<u32>);

    fn read_all(r: &mut Reader<'_>) -> Result<All, ShortInput> {
        let fixed = (
            r.u8()?,
            r.u16()?,
            r.u32()?,
            r.i32()?,
            r.u64()?,
            r.i64()?,
            r.f64()?,
            r.bool()?,
        );
        r.skip(1)?;
        let arr = r.array::<2>()?;
        let n = r.u32_count(4)?;
        let mut v = r.u32_vec(n)?;
        v.extend_from_slice(&r.u32_vec(2)?);
        let (a, b, c, d, e, f, g, h) = fixed;
        Ok((a, b, c, d, e, f, g, h, arr, v))
    }

    #[test]
    fn reads_little_endian() {
        let b = sample();
        let mut r = Reader::new(&b, "sample");
        let all = read_all(&mut r).unwrap();
        assert_eq!(
            all,
            (
                7,
                0x1234,
                0xDEAD_BEEF,
                -5,
                u64::MAX,
                -9,
                1.5,
                true,
                [0xBB, 0xCC],
                vec![10, 11, 1, 2]
            )
        );
        assert_eq!(r.position(), b.len() - 2);
        assert_eq!(r.remaining(), 2);
        assert_eq!(
            r.clone().finish(),
            Err(TrailingBytes {
                what: "sample",
                offset: b.len() - 2,
                extra: 2
            })
        );
        assert_eq!(r.rest(), &[9, 9]);
        assert_eq!(r.rest(), &[] as &[u8]);
        assert_eq!(r.position(), b.len());
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn short_input_names_what_offset_needed_available() {
        let mut r = Reader::new(&[1, 2, 3], "tiny header");
        r.u8().unwrap();
        let e = r.u32().unwrap_err();
        assert_eq!(
            e,
            ShortInput {
                what: "tiny header",
                offset: 1,
                needed: 4,
                available: 2
            }
        );
        assert_eq!(
            e.to_string(),
            "tiny header: needed 4 more bytes at offset 1, only 2 left"
        );
        // A failed read consumes nothing.
        assert_eq!(r.position(), 1);
        assert_eq!(r.u16(), Ok(0x0302));
        assert_eq!(r.bytes(1).unwrap_err().offset, 3);
        assert_eq!(r.skip(0), Ok(()));
    }

    #[test]
    fn huge_counts_are_errors_not_allocations() {
        let mut r = Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0], "counted");
        let e = r.u32_count(8).unwrap_err();
        assert_eq!((e.offset, e.available), (4, 2));
        assert_eq!(e.needed, u32::MAX as usize * 8);
        let e = r.u32_vec(usize::MAX).unwrap_err();
        assert_eq!(e.needed, usize::MAX);
        assert_eq!(r.bytes(usize::MAX).unwrap_err().available, 2);
        assert_eq!(r.remaining(), 2);
    }

    #[test]
    fn no_panic_on_any_truncation() {
        let b = sample();
        for len in 0..b.len() {
            let mut r = Reader::new(&b[..len], "prefix");
            match read_all(&mut r) {
                Ok(_) => assert!(len >= b.len() - 2, "len {len}"),
                Err(e) => {
                    assert_eq!(e.what, "prefix");
                    assert!(e.available < e.needed, "len {len}: {e}");
                    assert_eq!(e.offset + e.available, len, "len {len}: {e}");
                    assert_eq!(r.position(), e.offset);
                }
            }
            // Every kind of read at every offset of every prefix.
            for start in 0..=len {
                let mut r = Reader::new(&b[..len], "prefix");
                r.skip(start).unwrap();
                let _ = (r.clone().u8(), r.clone().u16(), r.clone().u32());
                let _ = (r.clone().i32(), r.clone().u64(), r.clone().i64());
                let _ = (r.clone().f64(), r.clone().bool(), r.clone().array::<3>());
                let _ = (r.clone().u32_vec(3), r.clone().u32_count(1));
                let _ = (r.clone().bytes(5), r.clone().skip(2), r.clone().finish());
                assert_eq!(r.rest().len(), len - start);
            }
        }
    }
}
