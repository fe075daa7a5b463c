//! `compute_fs`: the lazy data directory of a compute, a FUSE filesystem
//! mounted on `PGDATA/base` and `PGDATA/global`.
//!
//! compute_ctl unpacks a lazy base backup (no relation data, each relation
//! fork's size instead) into PGDATA, moves `base/` and `global/` into the
//! local store and starts this process, which
//!
//! 1. plans every relation segment ([`store`]; each is created in the
//!    store, a sparse file of its size, when first looked up),
//! 2. fetches the system catalogs into it ([`prefetch`]),
//! 3. mounts the two directories ([`filesystem::LazyFs`]): a block not yet
//!    read or written is fetched from the pageserver ([`page_client`]: at
//!    the start LSN, or for a primary at the newest LSN, which is the same
//!    page), written into the store and served from there,
//! 4. prints [`READY`] on standard output, and
//! 5. unmounts and exits on SIGTERM, SIGINT, or when its standard input
//!    closes (compute_ctl is gone).

pub mod filesystem;
pub mod inodes;
pub mod page_client;
pub mod prefetch;
pub mod store;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use postgres_format::constants::BLCKSZ;
use tracing::{info, warn};
use utils::{Lsn, TenantId, TimelineId};

use filesystem::LazyFs;
use page_client::{PageClient, PageSource};

/// The line `compute_fs` prints once both directories are mounted.
pub const READY: &str = "compute_fs: mounted";

/// The directories of PGDATA that are mounted lazily.
pub const MOUNTS: [&str; 2] = ["base", "global"];

/// What `compute_fs` is started with.
#[derive(Debug, Clone)]
pub struct FsArgs {
    pub pgdata: PathBuf,
    /// The local store: `base/`, `global/` and the relation sizes file of
    /// the base backup.
    pub store: PathBuf,
    pub pageserver_addr: String,
    pub pageserver_user: String,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub lsn: Lsn,
    /// Read pages as of the newest WAL the pageserver has (a primary).
    pub latest: bool,
    /// The tenant's token for the pageserver.
    pub token: Option<String>,
    /// Who the files belong to, as postgres sees them.
    pub uid: u32,
    pub gid: u32,
    /// FUSE request threads per mount.
    pub threads: usize,
    /// Pageserver connections.
    pub connections: usize,
}

/// Unmounts `dir` if something is mounted there, lazily (a busy or dead
/// mount is detached and goes away when its last user does).
pub fn unmount_if_mounted(dir: &Path) -> anyhow::Result<bool> {
    if !is_mount_point(dir)? {
        return Ok(false);
    }
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
        .with_context(|| format!("unmounting {}", dir.display()))?;
    Ok(true)
}

/// Whether `dir` is a mount point (in `/proc/self/mountinfo`).
pub fn is_mount_point(dir: &Path) -> anyhow::Result<bool> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = dir.to_string_lossy();
    // Field 5 is the mount point, with spaces and the like octal-escaped.
    Ok(info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|point| unescape_mount_point(point) == wanted)
    }))
}

fn unescape_mount_point(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let code = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok());
            if let Some(code) = code {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `compute_fs` until it is told to stop.
pub fn run(args: FsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let sizes_path = args.store.join(pageserver_api::lazy::RELATION_SIZES_FILE);
    let text = std::fs::read_to_string(&sizes_path)
        .with_context(|| format!("reading {}", sizes_path.display()))?;
    let sizes = pageserver_api::lazy::parse(&text)?;
    let mut lazy = store::plan_segments(&args.store, &sizes)?;
    info!(
        forks = sizes.len(),
        blocks = sizes.iter().map(|s| s.blocks as u64).sum::<u64>(),
        lsn = %args.lsn,
        "relation sizes read"
    );
    let pages = Arc::new(PageClient::start(
        runtime.handle().clone(),
        PageSource {
            addr: args.pageserver_addr.clone(),
            user: args.pageserver_user.clone(),
            tenant_id: args.tenant_id,
            timeline_id: args.timeline_id,
            lsn: args.lsn,
            latest: args.latest,
            token: args.token.clone(),
        },
        args.connections.max(1),
    ));
    let (prefetched, created) =
        prefetch::prefetch_catalogs(&args.store, &mut lazy, &pages, args.connections.max(1))?;
    let created: std::collections::HashSet<(&str, PathBuf)> = created.into_iter().collect();
    info!(
        blocks = prefetched.blocks,
        left_for_later = prefetched.skipped,
        "fetched the system catalogs"
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("compute_fs".into()),
        fuser::MountOption::Subtype("compute_fs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    // postgres runs as another user when this runs as root.
    config.acl = if nix::unistd::geteuid().is_root() {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = args.threads > 1;
    let mut sessions = Vec::new();
    for name in MOUNTS {
        let files = lazy.remove(name).unwrap_or_default();
        let virtual_files = files
            .iter()
            .filter(|(path, _)| !created.contains(&(name, (*path).to_path_buf())))
            .map(|(path, file)| (path.clone(), file.remote_blocks as u64 * BLCKSZ as u64))
            .collect();
        let fs = LazyFs::new(
            name,
            args.store.join(name),
            files,
            virtual_files,
            pages.clone(),
            (args.uid, args.gid),
        );
        let mount_point = args.pgdata.join(name);
        let session = fuser::spawn_mount(fs, &mount_point, &config)
            .with_context(|| format!("mounting {}", mount_point.display()));
        match session {
            Ok(session) => sessions.push((mount_point, session)),
            Err(e) => {
                unmount_all(sessions);
                return Err(e);
            }
        }
    }
    println!("{READY}");
    let _ = std::io::stdout().flush();
    info!(pgdata = %args.pgdata.display(), "mounted");

    let reason = runtime.block_on(wait_for_stop());
    let counters = &pages.counters;
    info!(
        pages = counters.pages.load(std::sync::atomic::Ordering::Relaxed),
        batches = counters.batches.load(std::sync::atomic::Ordering::Relaxed),
        reconnects = counters
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        "{reason}: unmounting"
    );
    unmount_all(sessions);
    Ok(())
}

fn unmount_all(sessions: Vec<(PathBuf, fuser::BackgroundSession)>) {
    for (mount_point, session) in sessions {
        if let Err(e) = session.umount_and_join() {
            warn!("unmounting {}: {e}; detaching it", mount_point.display());
            if let Err(e) = unmount_if_mounted(&mount_point) {
                warn!("{e:#}");
            }
        }
    }
}

/// Waits for SIGTERM, SIGINT or the end of standard input.
async fn wait_for_stop() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return "cannot watch signals";
    };
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = stdin_closed => "standard input closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_point("/plain"), "/plain");
        assert_eq!(unescape_mount_point("/end\\"), "/end\\");
        assert!(!is_mount_point(Path::new("/no/such/dir")).unwrap());
    }
}
