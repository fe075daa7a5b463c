//! compute_ctl's side of the lazy data directory: whether a start is lazy,
//! the local store beside PGDATA, and the `compute_fs` process, which it
//! starts before postgres, watches while the compute runs and stops (with
//! the mounts) on every way out.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use compute_api::ComputeSpec;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tracing::{info, warn};
use utils::Lsn;

use crate::child::ChildProcess;
use crate::lazy_fs::{self, MOUNTS, READY};
use crate::pg::OsUser;
use crate::ComputeCtlConf;

/// How long `compute_fs` may take to mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to unmount and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a start makes its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirectory {
    /// Relation blocks read from the pageserver on first use.
    Lazy,
    /// Every relation copied by the base backup.
    Full,
}

impl DataDirectory {
    pub fn name(self) -> &'static str {
        match self {
            DataDirectory::Lazy => "lazy",
            DataDirectory::Full => "full",
        }
    }
}

/// Picks the data directory for `spec`: what it asks for, or lazy where
/// FUSE can be mounted (saying why not in one line otherwise).
pub fn choose(spec: &ComputeSpec, conf: &ComputeCtlConf) -> anyhow::Result<DataDirectory> {
    match spec.lazy {
        Some(false) => Ok(DataDirectory::Full),
        Some(true) => {
            check_available(conf).context("the spec asks for a lazy data directory")?;
            Ok(DataDirectory::Lazy)
        }
        None => match check_available(conf) {
            Ok(()) => Ok(DataDirectory::Lazy),
            Err(e) => {
                info!("no lazy data directory ({e:#}): starting from a full base backup");
                Ok(DataDirectory::Full)
            }
        },
    }
}

/// Whether `compute_fs` can mount here.
fn check_available(conf: &ComputeCtlConf) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&conf.fuse_device)
        .with_context(|| format!("cannot open {}", conf.fuse_device.display()))?;
    let binary = compute_fs_binary(conf);
    if !binary.is_file() {
        bail!("{} does not exist", binary.display());
    }
    if !nix::unistd::geteuid().is_root() && find_in_path("fusermount3").is_none() {
        bail!("fusermount3 is not installed (Debian's fuse3), and compute_ctl is not root");
    }
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The `compute_fs` executable: as configured, a bare name beside this
/// executable.
pub fn compute_fs_binary(conf: &ComputeCtlConf) -> PathBuf {
    let configured = &conf.compute_fs;
    if configured.components().count() == 1 && !configured.is_absolute() {
        if let Ok(exe) = std::env::current_exe() {
            return exe.with_file_name(configured);
        }
    }
    configured.clone()
}

/// The local store of a lazy PGDATA: beside it.
pub fn store_path(pgdata: &Path) -> PathBuf {
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgdata".into());
    pgdata.with_file_name(format!("{name}.store"))
}

/// Unmounts what a previous start may have left mounted under `pgdata`
/// (a crashed `compute_fs`), so the directory can be removed.
pub fn clean_stale_mounts(pgdata: &Path) -> anyhow::Result<()> {
    for name in MOUNTS {
        let dir = pgdata.join(name);
        if lazy_fs::unmount_if_mounted(&dir)? {
            warn!("unmounted a stale lazy mount at {}", dir.display());
        }
    }
    Ok(())
}

/// Moves `base/`, `global/` and the relation sizes of a freshly unpacked
/// lazy base backup from `pgdata` into `store`, leaving empty mount points.
pub fn move_into_store(pgdata: &Path, store: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(store).with_context(|| format!("creating {}", store.display()))?;
    let sizes = pageserver_api::lazy::RELATION_SIZES_FILE;
    for name in MOUNTS.iter().chain([&sizes]) {
        let (from, to) = (pgdata.join(name), store.join(name));
        std::fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    for name in MOUNTS {
        let dir = pgdata.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// A running `compute_fs`: PGDATA's lazy mounts.
pub struct LazyMount {
    process: ChildProcess,
    /// Closing it tells `compute_fs` to stop (also when compute_ctl dies).
    stdin: Option<ChildStdin>,
    pgdata: PathBuf,
}

impl LazyMount {
    /// Starts `compute_fs` on `pgdata` and `store` and waits until it has
    /// mounted.
    pub async fn start(
        conf: &ComputeCtlConf,
        spec: &ComputeSpec,
        lsn: Lsn,
        store: &Path,
        owner: Option<&OsUser>,
    ) -> anyhow::Result<Self> {
        let binary = compute_fs_binary(conf);
        let (addr, user) = spec.pageserver_pg_addr()?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--pgdata")
            .arg(&conf.pgdata)
            .arg("--store")
            .arg(store)
            .args(["--pageserver", &addr, "--pageserver-user", &user])
            .args(["--tenant-id", &spec.tenant_id.to_string()])
            .args(["--timeline-id", &spec.timeline_id.to_string()])
            .args(["--lsn", &lsn.to_string()])
            .env_remove(auth::TOKEN_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if spec.mode == compute_api::ComputeMode::Primary {
            cmd.arg("--latest");
        }
        if let Some(token) = &spec.storage_auth_token {
            cmd.env(auth::TOKEN_ENV, token);
        }
        if let Some(owner) = owner {
            cmd.args(["--uid", &owner.uid.to_string()])
                .args(["--gid", &owner.gid.to_string()]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("compute_fs has no stdout")?;
        let mut mount = LazyMount {
            process: ChildProcess::new(child, "compute_fs"),
            stdin,
            pgdata: conf.pgdata.clone(),
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(MOUNT_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if line.trim() == READY {
                    return Ok(true);
                }
            }
            anyhow::Ok(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => {
                info!(
                    pid = mount.process.id(),
                    "compute_fs mounted the lazy data directory"
                );
                Ok(mount)
            }
            outcome => {
                let status = mount.stop().await;
                match outcome {
                    Err(_) => bail!("compute_fs did not mount within {MOUNT_TIMEOUT:?}"),
                    Ok(Err(e)) => Err(e.context("reading compute_fs's output")),
                    _ => bail!("compute_fs exited before mounting ({status}); its log is above"),
                }
            }
        }
    }

    /// Waits until `compute_fs` exits.
    pub async fn wait(&mut self) -> ExitStatus {
        self.process.wait().await
    }

    /// Unmounts: SIGTERM, then SIGKILL if it does not exit in time, and
    /// whatever is still mounted is detached.
    pub async fn stop(&mut self) -> ExitStatus {
        self.stdin.take();
        if self.process.try_exit().is_none() {
            if let Some(pid) = self.process.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                warn!("compute_fs did not exit within {STOP_TIMEOUT:?}: killing it");
                self.process.start_kill();
                self.wait().await
            }
        };
        self.detach_mounts();
        status
    }

    fn detach_mounts(&self) {
        if let Err(e) = clean_stale_mounts(&self.pgdata) {
            warn!("{e:#}");
        }
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        self.process.start_kill();
        self.detach_mounts();
    }
}
