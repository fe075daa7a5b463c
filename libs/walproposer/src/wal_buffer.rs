//! WAL held in memory, contiguous from a start LSN, between where it comes
//! from (PostgreSQL, or a donor safekeeper) and the safekeepers that need it.
//!
//! The WAL is kept as the chunks it arrived in (no copy on arrival, none
//! when a read stays within a chunk), so the memory it holds is its length
//! plus the appends still queued for sending, which share the chunks.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use utils::Lsn;

pub struct WalBuffer {
    start: Lsn,
    /// Chunks in LSN order, each beginning where the previous one ends.
    chunks: VecDeque<(Lsn, Bytes)>,
    len: usize,
}

impl WalBuffer {
    pub fn new(start: Lsn) -> Self {
        WalBuffer {
            start,
            chunks: VecDeque::new(),
            len: 0,
        }
    }

    pub fn start(&self) -> Lsn {
        self.start
    }

    pub fn end(&self) -> Lsn {
        self.start + self.len as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append WAL that begins at `at`; WAL we already have is skipped.
    pub fn append(&mut self, at: Lsn, mut bytes: Bytes) -> anyhow::Result<()> {
        let end = self.end();
        if at > end {
            anyhow::bail!("WAL at {at} leaves a gap after {end}");
        }
        let skip = (end - at) as usize;
        if skip >= bytes.len() {
            return Ok(());
        }
        let _ = bytes.split_to(skip);
        self.len += bytes.len();
        self.chunks.push_back((end, bytes));
        Ok(())
    }

    /// Up to `max` bytes from `from`, if the buffer holds `from` (empty at
    /// the end). Copies only when the range spans chunks.
    pub fn read(&self, from: Lsn, max: usize) -> Option<Bytes> {
        if from < self.start || from > self.end() {
            return None;
        }
        // The chunk holding `from`: the last one that begins at or before it.
        let first = self.chunks.partition_point(|(at, _)| *at <= from);
        if first == 0 {
            return Some(Bytes::new());
        }
        let mut pieces = self.chunks.range(first - 1..).map(|(at, chunk)| {
            let offset = from.0.saturating_sub(at.0) as usize;
            chunk.slice(offset.min(chunk.len())..)
        });
        let head = pieces.next().unwrap_or_default();
        if head.len() >= max {
            return Some(head.slice(..max));
        }
        let mut out: Option<BytesMut> = None;
        let mut total = head.len();
        for piece in pieces {
            if total >= max {
                break;
            }
            let out = out.get_or_insert_with(|| {
                let mut b = BytesMut::with_capacity(max);
                b.extend_from_slice(&head);
                b
            });
            let n = piece.len().min(max - total);
            out.extend_from_slice(&piece[..n]);
            total += n;
        }
        Some(out.map_or(head, BytesMut::freeze))
    }

    /// Forget WAL before `lsn`.
    pub fn trim(&mut self, lsn: Lsn) {
        let lsn = lsn.min(self.end());
        if lsn <= self.start {
            return;
        }
        while let Some((at, chunk)) = self.chunks.front_mut() {
            let chunk_end = *at + chunk.len() as u64;
            if chunk_end <= lsn {
                self.chunks.pop_front();
            } else {
                if *at < lsn {
                    let _ = chunk.split_to((lsn - *at) as usize);
                    *at = lsn;
                }
                break;
            }
        }
        self.len -= (lsn - self.start) as usize;
        self.start = lsn;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &WalBuffer, from: u64, max: usize) -> Option<Vec<u8>> {
        b.read(Lsn(from), max).map(|x| x.to_vec())
    }

    #[test]
    fn append_read_trim() {
        let mut b = WalBuffer::new(Lsn(100));
        b.append(Lsn(100), Bytes::from_static(b"abcdef")).unwrap();
        b.append(Lsn(104), Bytes::from_static(b"efgh")).unwrap();
        b.append(Lsn(101), Bytes::from_static(b"bc")).unwrap();
        assert_eq!(b.end(), Lsn(108));
        assert!(b.append(Lsn(110), Bytes::from_static(b"x")).is_err());
        assert_eq!(read(&b, 102, 3).unwrap(), b"cde");
        assert_eq!(read(&b, 102, 100).unwrap(), b"cdefgh");
        assert_eq!(read(&b, 106, 100).unwrap(), b"gh");
        assert_eq!(read(&b, 108, 100).unwrap(), b"");
        assert!(read(&b, 99, 1).is_none());
        assert!(read(&b, 109, 1).is_none());
        b.trim(Lsn(103));
        assert_eq!(b.start(), Lsn(103));
        assert_eq!(b.len(), 5);
        assert_eq!(read(&b, 103, 10).unwrap(), b"defgh");
        b.trim(Lsn(107));
        assert_eq!(read(&b, 107, 10).unwrap(), b"h");
        b.trim(Lsn(200));
        assert_eq!((b.start(), b.end(), b.len()), (Lsn(108), Lsn(108), 0));
        assert_eq!(read(&b, 108, 10).unwrap(), b"");
        b.append(Lsn(108), Bytes::from_static(b"ij")).unwrap();
        assert_eq!(read(&b, 108, 10).unwrap(), b"ij");
    }

    #[test]
    fn matches_a_flat_copy() {
        // Random appends, reads and trims against a plain Vec.
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut b = WalBuffer::new(Lsn(1000));
        let mut flat: Vec<u8> = Vec::new();
        let mut start = 1000u64;
        for i in 0..5000u64 {
            match next(3) {
                0 => {
                    let len = next(50) as usize + 1;
                    let back = next(5).min(flat.len() as u64);
                    let at = start + flat.len() as u64 - back;
                    let bytes: Vec<u8> = (0..len).map(|j| (at as usize + j) as u8).collect();
                    b.append(Lsn(at), Bytes::from(bytes.clone())).unwrap();
                    if len as u64 > back {
                        flat.extend_from_slice(&bytes[back as usize..]);
                    }
                }
                1 => {
                    let from = start + next(flat.len() as u64 + 1);
                    let max = next(120) as usize + 1;
                    let o = (from - start) as usize;
                    let want = &flat[o..(o + max).min(flat.len())];
                    assert_eq!(read(&b, from, max).unwrap(), want, "step {i}");
                }
                _ => {
                    let to = start + next(flat.len() as u64 + 1);
                    b.trim(Lsn(to));
                    flat.drain(..(to - start) as usize);
                    start = to;
                }
            }
            assert_eq!((b.start(), b.len()), (Lsn(start), flat.len()));
        }
    }
}
