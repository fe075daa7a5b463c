//! Advisory file locks (`flock`) that keep endpoint changes safe when the
//! control-plane service and CLI commands run at the same time:
//!
//! * the repository's `config` while endpoints are created (names and
//!   ports are picked, a branch's endpoint is looked up or made);
//! * an endpoint's `endpoint.toml` while it is started, stopped,
//!   suspended or destroyed;
//! * `locks/timeline-<id>` while a read-write endpoint of that timeline
//!   starts, so two primaries never start on one timeline at once.
//!
//! Locks are released when the guard is dropped or the process exits;
//! files are opened close-on-exec, so computes started meanwhile do not
//! inherit them.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// An exclusive lock, held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _flock: Flock<File>,
}

fn lock(file: File, path: &Path) -> anyhow::Result<FileLock> {
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(flock) => return Ok(FileLock { _flock: flock }),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// Locks an existing file (waiting for other holders).
pub fn lock_existing(path: &Path) -> anyhow::Result<FileLock> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    lock(file, path)
}

/// Locks `path`, creating it (and its directory) if needed.
pub fn lock_creating(path: &Path) -> anyhow::Result<FileLock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    lock(file, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn excludes_other_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks").join("x");
        let held = lock_creating(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let _l = lock_existing(&p).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(held);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }
}
