//! The inode table of one mount: inode numbers for paths relative to the
//! backing directory. A path keeps its number until it is unlinked or
//! replaced; a rename moves the number (and what hangs on it) to the new
//! path, with every path below it when it is a directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The root's inode number (FUSE's).
pub const ROOT: u64 = 1;

#[derive(Debug)]
pub struct Inodes {
    paths: HashMap<u64, PathBuf>,
    numbers: HashMap<PathBuf, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut inodes = Inodes {
            paths: HashMap::new(),
            numbers: HashMap::new(),
            next: ROOT + 1,
        };
        inodes.paths.insert(ROOT, PathBuf::new());
        inodes.numbers.insert(PathBuf::new(), ROOT);
        inodes
    }
}

impl Inodes {
    /// The path of `ino`; `None` once unlinked (or never known).
    pub fn path(&self, ino: u64) -> Option<&Path> {
        self.paths.get(&ino).map(PathBuf::as_path)
    }

    /// The number of `path`, given one if it has none.
    pub fn number(&mut self, path: &Path) -> u64 {
        if let Some(&ino) = self.numbers.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, path.to_owned());
        self.numbers.insert(path.to_owned(), ino);
        ino
    }

    /// The number of `path` if it has one.
    pub fn existing(&self, path: &Path) -> Option<u64> {
        self.numbers.get(path).copied()
    }

    /// Forgets `path` (unlinked); returns the number it had.
    pub fn remove(&mut self, path: &Path) -> Option<u64> {
        let ino = self.numbers.remove(path)?;
        self.paths.remove(&ino);
        Some(ino)
    }

    /// `from` now lives at `to`, and so does everything below it. Returns
    /// the number `to` had before, which is gone now.
    pub fn rename(&mut self, from: &Path, to: &Path) -> Option<u64> {
        let replaced = self.remove(to);
        let moved: Vec<(PathBuf, u64)> = self
            .numbers
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, &ino)| (path.clone(), ino))
            .collect();
        for (old, ino) in moved {
            let Ok(rest) = old.strip_prefix(from) else {
                continue;
            };
            let new = if rest.as_os_str().is_empty() {
                to.to_owned()
            } else {
                to.join(rest)
            };
            self.numbers.remove(&old);
            self.numbers.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
        replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_renames_and_end_with_unlinks() {
        let mut inodes = Inodes::default();
        assert_eq!(inodes.path(ROOT), Some(Path::new("")));
        let dir = inodes.number(Path::new("5"));
        let file = inodes.number(Path::new("5/16384"));
        let other = inodes.number(Path::new("6/1"));
        assert_eq!(inodes.number(Path::new("5/16384")), file);
        assert_eq!(inodes.rename(Path::new("5"), Path::new("7")), None);
        assert_eq!(inodes.path(dir), Some(Path::new("7")));
        assert_eq!(inodes.path(file), Some(Path::new("7/16384")));
        assert_eq!(inodes.existing(Path::new("5/16384")), None);
        // A rename over an existing file ends that file's number.
        assert_eq!(
            inodes.rename(Path::new("7/16384"), Path::new("6/1")),
            Some(other)
        );
        assert_eq!(inodes.path(other), None);
        assert_eq!(inodes.path(file), Some(Path::new("6/1")));
        assert_eq!(inodes.remove(Path::new("6/1")), Some(file));
        let again = inodes.number(Path::new("6/1"));
        assert_ne!(again, file, "a new file gets a new number");
        // "51" is not below "5".
        let sibling = inodes.number(Path::new("51"));
        inodes.rename(Path::new("7"), Path::new("8"));
        assert_eq!(inodes.path(sibling), Some(Path::new("51")));
    }
}
