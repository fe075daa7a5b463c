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
//! All integers little-endian; 128 bytes in all; decoded with
//! [`utils::bytes_reader::Reader`]. Written to `metadata.tmp`,
//! fsynced, renamed over `metadata`, and the directory fsynced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use postgres_format::PgMajorVersion;
use utils::bytes_reader::{Malformed, Reader};
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
    pub fn decode(b: &[u8]) -> Result<TimelineMetadata, Malformed> {
        if b.len() != METADATA_SIZE {
            return Err(format!("{} bytes, expected {METADATA_SIZE} (truncated?)", b.len()).into());
        }
        let mut r = Reader::new(b, "timeline metadata");
        let covered = r.bytes(METADATA_SIZE - 4)?;
        let stored = r.u32()?;
        r.finish()?;
        let mut r = Reader::new(covered, "timeline metadata");
        if r.array()? != *MAGIC {
            return Err("bad magic".into());
        }
        let crc = crc32c::crc32c(covered);
        if stored != crc {
            return Err(
                format!("checksum mismatch (stored {stored:08X}, computed {crc:08X})").into(),
            );
        }
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(format!("unknown format version {version}").into());
        }
        let pg_version: PgMajorVersion = r.u16()?.to_string().parse()?;
        let flags = r.u32()?;
        if flags & !FLAG_ANCESTOR != 0 {
            return Err(format!("unknown flags {flags:#x}").into());
        }
        let disk_consistent = RecordLsn {
            last: Lsn(r.u64()?),
            prev: Lsn(r.u64()?),
        };
        let ancestor_id: [u8; 16] = r.array()?;
        let ancestor_lsn = Lsn(r.u64()?);
        let start_lsn = Lsn(r.u64()?);
        let gc_horizon = Lsn(r.u64()?);
        let reserved = r.rest();
        if reserved.iter().any(|x| *x != 0) {
            return Err("reserved bytes are not zero".into());
        }
        let ancestor = if flags & FLAG_ANCESTOR != 0 {
            Some((TimelineId::from_bytes(ancestor_id), ancestor_lsn))
        } else {
            if ancestor_id != [0; 16] || ancestor_lsn != Lsn(0) {
                return Err("ancestor fields set without the ancestor flag".into());
            }
            None
        };
        if disk_consistent.last < start_lsn {
            return Err(format!(
                "disk-consistent LSN {} below the start LSN {start_lsn}",
                disk_consistent.last
            )
            .into());
        }
        Ok(TimelineMetadata {
            disk_consistent,
            ancestor,
            start_lsn,
            gc_horizon,
            pg_version,
        })
    }

    /// Read `<dir>/metadata`.
    pub fn load(dir: &Path) -> Result<TimelineMetadata, MetadataError> {
        let path = dir.join(METADATA_FILE_NAME);
        let bytes = fs::read(&path).map_err(|source| MetadataError::Io {
            path: path.clone(),
            context: "reading",
            source,
        })?;
        TimelineMetadata::decode(&bytes).map_err(|e| MetadataError::Corrupt {
            path,
            reason: e.to_string(),
        })
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
