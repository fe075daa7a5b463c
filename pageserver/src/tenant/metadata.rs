//! A timeline's metadata file, `metadata` in its directory: what the layer
//! files hold up to, and where the timeline comes from.
//!
//! ```text
//! offset size field
//!      0    8 magic "PSTLMETA"
//!      8    2 format version (1)
//!     10    2 PostgreSQL major version
//!     12    4 flags: bit 0 = has an ancestor; other bits zero
//!     16    8 disk-consistent LSN (end of the last record in layer files)
//!     24    8 prev-record LSN (start of that record)
//!     32   16 ancestor timeline id (zero without ancestor)
//!     48    8 ancestor LSN (branch point; zero without ancestor)
//!     56    8 start LSN
//!     64    8 GC horizon
//!     72   52 reserved, zero
//!    124    4 CRC-32C of bytes 0..124
//! ```
//!
//! All integers little-endian; 128 bytes in all. Written to `metadata.tmp`,
//! fsynced, renamed over `metadata`, and the directory fsynced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use postgres_format::PgMajorVersion;
use utils::{Lsn, TimelineId};

/// The last record ingested: where it ends, and where it began (the next
/// record's `xl_prev`, which a base backup's fabricated checkpoint needs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordLsn {
    pub last: Lsn,
    pub prev: Lsn,
}

pub const METADATA_FILE_NAME: &str = "metadata";
const MAGIC: &[u8; 8] = b"PSTLMETA";
const FORMAT_VERSION: u16 = 1;
pub const METADATA_SIZE: usize = 128;
const FLAG_ANCESTOR: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineMetadata {
    /// The last record whose effects are all in layer files.
    pub disk_consistent: RecordLsn,
    /// Ancestor timeline and branch LSN.
    pub ancestor: Option<(TimelineId, Lsn)>,
    pub start_lsn: Lsn,
    pub gc_horizon: Lsn,
    pub pg_version: PgMajorVersion,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("timeline metadata {}: {context}: {source}", .path.display())]
    Io {
        path: PathBuf,
        context: &'static str,
        source: io::Error,
    },
    #[error("timeline metadata {} is corrupt: {reason}", .path.display())]
    Corrupt { path: PathBuf, reason: String },
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl TimelineMetadata {
    pub fn encode(&self) -> [u8; METADATA_SIZE] {
        let mut b = [0u8; METADATA_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let pg: u16 = self.pg_version.as_str().parse().unwrap_or(0);
        b[10..12].copy_from_slice(&pg.to_le_bytes());
        let flags = if self.ancestor.is_some() {
            FLAG_ANCESTOR
        } else {
            0
        };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.disk_consistent.last.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.disk_consistent.prev.0.to_le_bytes());
        if let Some((id, lsn)) = self.ancestor {
            b[32..48].copy_from_slice(id.as_bytes());
            b[48..56].copy_from_slice(&lsn.0.to_le_bytes());
        }
        b[56..64].copy_from_slice(&self.start_lsn.0.to_le_bytes());
        b[64..72].copy_from_slice(&self.gc_horizon.0.to_le_bytes());
        let crc = crc32c::crc32c(&b[..124]);
        b[124..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check; `Err` is a reason why the bytes are not metadata.
    pub fn decode(b: &[u8]) -> Result<TimelineMetadata, String> {
        if b.len() != METADATA_SIZE {
            return Err(format!(
                "{} bytes, expected {METADATA_SIZE} (truncated?)",
                b.len()
            ));
        }
        if &b[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        let stored = u32::from_le_bytes(b[124..128].try_into().expect("4 bytes"));
        let crc = crc32c::crc32c(&b[..124]);
        if stored != crc {
            return Err(format!(
                "checksum mismatch (stored {stored:08X}, computed {crc:08X})"
            ));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION {
            return Err(format!("unknown format version {version}"));
        }
        let pg = u16::from_le_bytes([b[10], b[11]]);
        let pg_version: PgMajorVersion = pg.to_string().parse()?;
        let flags = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if flags & !FLAG_ANCESTOR != 0 {
            return Err(format!("unknown flags {flags:#x}"));
        }
        if b[72..124].iter().any(|x| *x != 0) {
            return Err("reserved bytes are not zero".into());
        }
        let ancestor = if flags & FLAG_ANCESTOR != 0 {
            let id = TimelineId::from_bytes(b[32..48].try_into().expect("16 bytes"));
            Some((id, Lsn(u64_at(b, 48))))
        } else {
            if b[32..56].iter().any(|x| *x != 0) {
                return Err("ancestor fields set without the ancestor flag".into());
            }
            None
        };
        let md = TimelineMetadata {
            disk_consistent: RecordLsn {
                last: Lsn(u64_at(b, 16)),
                prev: Lsn(u64_at(b, 24)),
            },
            ancestor,
            start_lsn: Lsn(u64_at(b, 56)),
            gc_horizon: Lsn(u64_at(b, 64)),
            pg_version,
        };
        if md.disk_consistent.last < md.start_lsn {
            return Err(format!(
                "disk-consistent LSN {} below the start LSN {}",
                md.disk_consistent.last, md.start_lsn
            ));
        }
        Ok(md)
    }

    /// Read `<dir>/metadata`.
    pub fn load(dir: &Path) -> Result<TimelineMetadata, MetadataError> {
        let path = dir.join(METADATA_FILE_NAME);
        let bytes = fs::read(&path).map_err(|source| MetadataError::Io {
            path: path.clone(),
            context: "reading",
            source,
        })?;
        TimelineMetadata::decode(&bytes).map_err(|reason| MetadataError::Corrupt { path, reason })
    }

    /// Write `<dir>/metadata` atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), MetadataError> {
        let path = dir.join(METADATA_FILE_NAME);
        let tmp = dir.join(format!("{METADATA_FILE_NAME}.tmp"));
        let io = |context: &'static str, p: &Path| {
            let p = p.to_owned();
            move |source| MetadataError::Io {
                path: p,
                context,
                source,
            }
        };
        let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&self.encode()).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        fsync_dir(dir).map_err(io("fsync of the directory", dir))
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let md = TimelineMetadata {
            disk_consistent: RecordLsn {
                last: Lsn(0x2000),
                prev: Lsn(0x1F00),
            },
            ancestor: Some((TimelineId::generate(), Lsn(0x1000))),
            start_lsn: Lsn(0x1000),
            gc_horizon: Lsn(0x800),
            pg_version: PgMajorVersion::V15,
        };
        let b = md.encode();
        assert_eq!(TimelineMetadata::decode(&b).unwrap(), md);
        for i in 0..METADATA_SIZE {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(TimelineMetadata::decode(&c).is_err(), "byte {i}");
        }
        assert!(TimelineMetadata::decode(&b[..100]).is_err());
        let root = TimelineMetadata {
            ancestor: None,
            ..md
        };
        assert_eq!(TimelineMetadata::decode(&root.encode()).unwrap(), root);
    }
}
