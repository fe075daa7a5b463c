//! WAL held in memory between where it comes from (PostgreSQL, or a donor
//! safekeeper) and the safekeepers that need it.

use bytes::{Bytes, BytesMut};
use utils::Lsn;

pub struct WalBuffer {
    start: Lsn,
    data: BytesMut,
}

impl WalBuffer {
    pub fn new(start: Lsn) -> Self {
        WalBuffer {
            start,
            data: BytesMut::new(),
        }
    }

    pub fn start(&self) -> Lsn {
        self.start
    }

    pub fn end(&self) -> Lsn {
        self.start + self.data.len() as u64
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Append WAL that begins at `at`; WAL we already have is skipped.
    pub fn append(&mut self, at: Lsn, bytes: &[u8]) -> anyhow::Result<()> {
        let end = self.end();
        if at > end {
            anyhow::bail!("WAL at {at} leaves a gap after {end}");
        }
        let skip = (end - at) as usize;
        if skip < bytes.len() {
            self.data.extend_from_slice(&bytes[skip..]);
        }
        Ok(())
    }

    /// Put older WAL, ending exactly where the buffer starts, in front.
    pub fn prepend(&mut self, at: Lsn, bytes: &[u8]) -> anyhow::Result<()> {
        if at + bytes.len() as u64 != self.start {
            anyhow::bail!(
                "WAL {at}+{} does not end at the buffer start {}",
                bytes.len(),
                self.start
            );
        }
        let mut data = BytesMut::with_capacity(bytes.len() + self.data.len());
        data.extend_from_slice(bytes);
        data.extend_from_slice(&self.data);
        self.data = data;
        self.start = at;
        Ok(())
    }

    /// Up to `max` bytes from `from`, if the buffer holds `from`.
    pub fn read(&self, from: Lsn, max: usize) -> Option<Bytes> {
        if from < self.start || from > self.end() {
            return None;
        }
        let offset = (from - self.start) as usize;
        let n = max.min(self.data.len() - offset);
        Some(Bytes::copy_from_slice(&self.data[offset..offset + n]))
    }

    /// Forget WAL before `lsn`.
    pub fn trim(&mut self, lsn: Lsn) {
        let lsn = lsn.min(self.end());
        if lsn > self.start {
            let _ = self.data.split_to((lsn - self.start) as usize);
            self.start = lsn;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_trim_prepend() {
        let mut b = WalBuffer::new(Lsn(100));
        b.append(Lsn(100), b"abcdef").unwrap();
        b.append(Lsn(104), b"efgh").unwrap();
        assert_eq!(b.end(), Lsn(108));
        assert!(b.append(Lsn(110), b"x").is_err());
        assert_eq!(&b.read(Lsn(102), 3).unwrap()[..], b"cde");
        assert!(b.read(Lsn(99), 1).is_none());
        b.trim(Lsn(103));
        assert_eq!(b.start(), Lsn(103));
        assert_eq!(&b.read(Lsn(103), 10).unwrap()[..], b"defgh");
        b.prepend(Lsn(100), b"abc").unwrap();
        assert_eq!(&b.read(Lsn(100), 10).unwrap()[..], b"abcdefgh");
        assert!(b.prepend(Lsn(90), b"x").is_err());
    }
}
