//! The local store under a lazy mount: a directory with the real tree
//! (what the base backup brought, and what postgres creates). A relation
//! segment of the base backup's size list is *virtual* until first looked
//! up: the mount shows it with its size, and creates it in the store as a
//! sparse file of that size when something first uses it ([`materialize`];
//! creating a thousand files would cost a start about 90 ms). Which of its
//! blocks still live only in the pageserver is a [`LazyFile`].
//!
//! Nothing here needs to survive a crash: every start of a compute is from
//! a fresh data directory, so the store is rebuilt each time.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pageserver_api::lazy::RelationSize;
use pageserver_api::pagestream::RelSpec;
use postgres_format::constants::{
    BLCKSZ, DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID, RELSEG_SIZE,
};

/// A relation segment whose first blocks are still in the pageserver.
#[derive(Debug, Clone)]
pub struct LazyFile {
    pub rel: RelSpec,
    /// The relation block number of this segment's block 0.
    pub first_block: u32,
    /// Blocks below this one not yet present are read from the
    /// pageserver; only ever lowered (a truncation), so blocks written
    /// after a truncation are never mistaken for remote ones.
    pub remote_blocks: u32,
    present: Vec<u64>,
}

impl LazyFile {
    pub fn new(rel: RelSpec, first_block: u32, remote_blocks: u32) -> Self {
        LazyFile {
            rel,
            first_block,
            remote_blocks,
            present: vec![0; (remote_blocks as usize).div_ceil(64)],
        }
    }

    /// Whether `block` (of this segment) must still be read from the
    /// pageserver.
    pub fn is_remote(&self, block: u32) -> bool {
        block < self.remote_blocks && self.present[block as usize / 64] & (1 << (block % 64)) == 0
    }

    /// `block` is now in the local file.
    pub fn set_present(&mut self, block: u32) {
        if block < self.remote_blocks {
            self.present[block as usize / 64] |= 1 << (block % 64);
        }
    }

    /// The file was truncated to `size` bytes.
    pub fn truncate(&mut self, size: u64) {
        let blocks = size.div_ceil(BLCKSZ as u64).min(u32::MAX as u64) as u32;
        self.remote_blocks = self.remote_blocks.min(blocks);
    }

    /// The blocks of the byte range `[offset, offset + len)` still remote.
    pub fn remote_in(&self, offset: u64, len: u64) -> Vec<u32> {
        if len == 0 {
            return Vec::new();
        }
        let first = offset / BLCKSZ as u64;
        let last = (offset + len - 1) / BLCKSZ as u64;
        let end = (last + 1).min(self.remote_blocks as u64);
        (first..end)
            .map(|b| b as u32)
            .filter(|&b| self.is_remote(b))
            .collect()
    }

    /// How many blocks are still remote.
    pub fn remote_count(&self) -> u64 {
        (0..self.remote_blocks)
            .filter(|&b| self.is_remote(b))
            .count() as u64
    }
}

/// Which mount a relation lives under, and its path there.
pub fn mount_path(rel: &RelSpec, segno: u32) -> anyhow::Result<(&'static str, PathBuf)> {
    let mut name = rel.rel_node.to_string();
    match rel.fork {
        0 => {}
        1 => name.push_str("_fsm"),
        2 => name.push_str("_vm"),
        3 => name.push_str("_init"),
        fork => anyhow::bail!("fork {fork} is not 0 to 3"),
    }
    if segno > 0 {
        name.push_str(&format!(".{segno}"));
    }
    match rel.spc_oid {
        GLOBALTABLESPACE_OID => Ok(("global", PathBuf::from(name))),
        DEFAULTTABLESPACE_OID => Ok(("base", Path::new(&rel.db_oid.to_string()).join(name))),
        spc => anyhow::bail!(
            "relation {} is in tablespace {spc}: tablespaces are not supported",
            rel.rel_node
        ),
    }
}

/// The segments of `sizes`: the lazy files per mount (`"base"`,
/// `"global"`), keyed by path in it. Only their directories are created
/// (when missing); the files are created by [`materialize`].
pub fn plan_segments(
    store: &Path,
    sizes: &[RelationSize],
) -> anyhow::Result<HashMap<&'static str, HashMap<PathBuf, LazyFile>>> {
    let mut mounts: HashMap<&'static str, HashMap<PathBuf, LazyFile>> = HashMap::new();
    for size in sizes {
        let segments = size.blocks.div_ceil(RELSEG_SIZE).max(1);
        for segno in 0..segments {
            let first_block = segno * RELSEG_SIZE;
            let blocks = size.blocks.saturating_sub(first_block).min(RELSEG_SIZE);
            let (mount, path) = mount_path(&size.rel, segno)?;
            let full = store.join(mount).join(&path);
            if let Some(dir) = full.parent() {
                if !dir.is_dir() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
            }
            if full.symlink_metadata().is_ok() {
                anyhow::bail!("{} exists already", full.display());
            }
            mounts
                .entry(mount)
                .or_default()
                .insert(path, LazyFile::new(size.rel, first_block, blocks));
        }
    }
    Ok(mounts)
}

/// Creates a virtual segment in the store: a sparse file of `len` bytes.
pub fn materialize(full: &Path, len: u64) -> std::io::Result<()> {
    let file = File::create_new(full)?;
    file.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REL: RelSpec = RelSpec {
        spc_oid: DEFAULTTABLESPACE_OID,
        db_oid: 5,
        rel_node: 16384,
        fork: 0,
    };

    #[test]
    fn remote_blocks_end_when_present_or_truncated() {
        let mut file = LazyFile::new(REL, 0, 130);
        assert_eq!(file.remote_in(0, 3 * BLCKSZ as u64), vec![0, 1, 2]);
        assert_eq!(file.remote_in(BLCKSZ as u64 - 1, 2), vec![0, 1]);
        file.set_present(1);
        assert_eq!(file.remote_in(0, 3 * BLCKSZ as u64), vec![0, 2]);
        assert_eq!(file.remote_count(), 129);
        // Beyond the remote blocks: local (zeros or what was written).
        assert_eq!(
            file.remote_in(129 * BLCKSZ as u64, 4 * BLCKSZ as u64),
            vec![129]
        );
        file.truncate(10 * BLCKSZ as u64 + 1);
        assert_eq!(file.remote_blocks, 11);
        file.truncate(0);
        assert!(file.remote_in(0, 100 * BLCKSZ as u64).is_empty());
        // Growing again does not make blocks remote.
        file.truncate(50 * BLCKSZ as u64);
        assert_eq!(file.remote_blocks, 0);
    }

    #[test]
    fn segments_become_sparse_files_of_their_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("base/5")).unwrap();
        std::fs::create_dir_all(dir.path().join("global")).unwrap();
        let sizes = [
            RelationSize {
                rel: REL,
                blocks: RELSEG_SIZE + 3,
            },
            RelationSize {
                rel: RelSpec {
                    spc_oid: GLOBALTABLESPACE_OID,
                    db_oid: 0,
                    rel_node: 1262,
                    fork: 2,
                },
                blocks: 0,
            },
        ];
        let mounts = plan_segments(dir.path(), &sizes).unwrap();
        assert!(
            !dir.path().join("base/5/16384").exists(),
            "planned, not created"
        );
        for (mount, files) in &mounts {
            for (path, file) in files {
                materialize(
                    &dir.path().join(mount).join(path),
                    file.remote_blocks as u64 * BLCKSZ as u64,
                )
                .unwrap();
            }
        }
        let base = &mounts["base"];
        let seg0 = &base[Path::new("5/16384")];
        let seg1 = &base[Path::new("5/16384.1")];
        assert_eq!((seg0.first_block, seg0.remote_blocks), (0, RELSEG_SIZE));
        assert_eq!((seg1.first_block, seg1.remote_blocks), (RELSEG_SIZE, 3));
        let len = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().len();
        assert_eq!(len("base/5/16384"), RELSEG_SIZE as u64 * BLCKSZ as u64);
        assert_eq!(len("base/5/16384.1"), 3 * BLCKSZ as u64);
        assert_eq!(len("global/1262_vm"), 0);
        assert_eq!(mounts["global"][Path::new("1262_vm")].remote_blocks, 0);
        // An existing file is an error, not overwritten; a missing
        // directory is made.
        assert!(plan_segments(dir.path(), &sizes).is_err());
        std::fs::remove_dir_all(dir.path().join("base/5")).unwrap();
        assert!(plan_segments(dir.path(), &sizes[..1]).is_ok());
        assert!(dir.path().join("base/5").is_dir());
    }
}
