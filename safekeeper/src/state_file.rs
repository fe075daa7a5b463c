//! The per-timeline control file, `safekeeper.control`: the acceptor's
//! durable state.
//!
//! Layout: magic (u32), format version (u32), payload length (u32), the
//! payload (the state as JSON), CRC-32C (u32) of everything before it; all
//! little-endian. It is replaced atomically: written to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use utils::bytes_reader::Reader;

use crate::acceptor::{ControlStore, PersistentState};

pub const CONTROL_FILE_NAME: &str = "safekeeper.control";
const MAGIC: u32 = 0x5afe_c0de;
const FORMAT_VERSION: u32 = 1;
/// A control file larger than this is corrupt.
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

pub struct FileControlStore {
    path: PathBuf,
}

impl FileControlStore {
    pub fn new(timeline_dir: &Path) -> Self {
        FileControlStore {
            path: timeline_dir.join(CONTROL_FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read and check the control file.
    pub fn load(&self) -> anyhow::Result<PersistentState> {
        let bytes =
            fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        decode(&bytes).with_context(|| format!("decoding {}", self.path.display()))
    }
}

pub fn encode(state: &PersistentState) -> anyhow::Result<Vec<u8>> {
    let payload = serde_json::to_vec(state).context("serialising the control state")?;
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> anyhow::Result<PersistentState> {
    let Some((covered, stored)) = bytes.split_last_chunk::<4>() else {
        bail!("truncated: {} bytes", bytes.len());
    };
    let mut r = Reader::new(covered, "safekeeper control file");
    let magic = r.u32()?;
    if magic != MAGIC {
        bail!("bad magic {magic:#010x}: not a safekeeper control file");
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        bail!("unsupported control file format version {version}, expected {FORMAT_VERSION}");
    }
    let len = r.u32()? as usize;
    if len > MAX_PAYLOAD || r.remaining() != len {
        bail!(
            "payload of {len} bytes does not match the file size {}",
            bytes.len()
        );
    }
    let payload = r.bytes(len)?;
    let stored = u32::from_le_bytes(*stored);
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        bail!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}");
    }
    let state: PersistentState =
        serde_json::from_slice(payload).context("parsing the control state")?;
    state
        .term_history
        .validate()
        .context("checking the term history")?;
    Ok(state)
}

/// Durably replace `path` with `contents`.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("fsyncing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsyncing {}", dir.display()))?;
    }
    Ok(())
}

impl ControlStore for FileControlStore {
    fn persist(&mut self, state: &PersistentState) -> anyhow::Result<()> {
        write_atomically(&self.path, &encode(state)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acceptor::ServerInfo;
    use safekeeper_api::{TermHistory, TermLsn};
    use utils::{Lsn, TenantId, TimelineId};

    fn sample() -> PersistentState {
        let mut state = PersistentState::new(
            TenantId::generate(),
            TimelineId::generate(),
            ServerInfo {
                pg_version: 150018,
                system_id: 7,
                wal_seg_size: 16 << 20,
            },
        );
        state.term = 5;
        state.term_history = TermHistory(vec![TermLsn {
            term: 5,
            lsn: Lsn(0x100),
        }]);
        state
    }

    #[test]
    fn round_trip_and_corruption() {
        let state = sample();
        let bytes = encode(&state).unwrap();
        assert_eq!(decode(&bytes).unwrap(), state);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn persist_replaces_atomically() {
        let dir = std::env::temp_dir().join(format!("sk-control-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut store = FileControlStore::new(&dir);
        let mut state = sample();
        store.persist(&state).unwrap();
        state.term = 6;
        store.persist(&state).unwrap();
        assert_eq!(store.load().unwrap().term, 6);
        assert!(!dir.join("safekeeper.partial").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
