//! Stock PostgreSQL: where it is installed, which OS user runs it, starting
//! the postmaster and stopping it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use tokio::process::Command;

use crate::child::ChildProcess;
use tokio::time::Instant;
use tracing::{info, warn};

/// Where Debian's `postgresql-15` installs the server.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The user compute_ctl and the control plane connect as.
pub const SUPERUSER: &str = compute_api::spec::SUPERUSER;

/// The `postgres` executable: `configured` if it names a path (it must
/// exist), otherwise the one in [`DEFAULT_PG_BIN_DIR`], in `pg_config
/// --bindir`, or on `PATH`.
pub fn find_postgres(configured: &Path) -> anyhow::Result<PathBuf> {
    let is_bare_name = configured.components().count() == 1 && !configured.is_absolute();
    if !is_bare_name || configured.as_os_str().is_empty() {
        if configured.is_file() {
            return Ok(configured.to_owned());
        }
        bail!(
            "PostgreSQL not found: {} does not exist (install postgresql-15 or pass --pgbin)",
            configured.display()
        );
    }
    let mut candidates = vec![Path::new(DEFAULT_PG_BIN_DIR).join(configured)];
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        if out.status.success() {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            candidates.push(Path::new(&dir).join(configured));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(configured)));
    }
    candidates.into_iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "PostgreSQL not found: no {} in {DEFAULT_PG_BIN_DIR}, pg_config --bindir or PATH (install postgresql-15 or pass --pgbin)",
            configured.display()
        )
    })
}

/// The OS account postgres runs as.
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// PostgreSQL refuses to run as root: when compute_ctl is root, postgres
/// runs as `name` (the `postgres` account by default). `None` when
/// compute_ctl is not root: postgres runs as compute_ctl's user.
pub fn pg_os_user(name: Option<&str>) -> anyhow::Result<Option<OsUser>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = name.unwrap_or("postgres");
    let user = User::from_name(name)
        .with_context(|| format!("looking up the OS user {name}"))?
        .with_context(|| {
            format!(
                "compute_ctl runs as root and PostgreSQL refuses to run as root, but there is no OS user {name:?} to run it as (create it or set pg_os_user)"
            )
        })?;
    if user.uid.is_root() {
        bail!("pg_os_user {name:?} is root, and PostgreSQL refuses to run as root");
    }
    Ok(Some(OsUser {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// Gives `path` and everything below it to `user`.
pub fn chown_recursive(path: &Path, user: &OsUser) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("changing the owner of {} to {}", path.display(), user.name))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            chown_recursive(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// Fails clearly if `user` cannot reach `dir` (an ancestor without the
/// execute bit for it, like a checkout under /root).
pub fn check_reachable(dir: &Path, user: &OsUser) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = ancestor.metadata() else {
            continue;
        };
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            bail!(
                "the OS user {} that runs postgres cannot reach {}: {} is not searchable for it (mode {:o}); put the data directory elsewhere",
                user.name,
                dir.display(),
                ancestor.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

/// How to stop postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: disconnect clients, write a shutdown checkpoint.
    Fast,
    /// SIGQUIT: exit at once.
    Immediate,
}

/// How long a fast shutdown may take before it becomes immediate.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A running postmaster, our child.
#[derive(Debug)]
pub struct Postmaster {
    process: ChildProcess,
    pub pid: u32,
}

impl Postmaster {
    /// Starts `postgres -D pgdata` as `user`; its output goes to our stderr.
    pub fn spawn(postgres: &Path, pgdata: &Path, user: Option<&OsUser>) -> anyhow::Result<Self> {
        let mut cmd = Command::new(postgres);
        cmd.arg("-D")
            .arg(pgdata)
            .env_remove(auth::TOKEN_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if let Some(user) = user {
            // std drops root's supplementary groups when it sets the uid.
            cmd.uid(user.uid).gid(user.gid);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("running {}", postgres.display()))?;
        let pid = child.id().context("postgres exited at once")?;
        info!(pid, "started postgres");
        Ok(Postmaster {
            process: ChildProcess::new(child, "postgres"),
            pid,
        })
    }

    /// The exit status once it exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.process.try_exit()
    }

    /// Waits until it exits.
    pub async fn wait(&mut self) -> ExitStatus {
        self.process.wait().await
    }

    /// Waits until postgres accepts connections as the superuser on `port`.
    pub async fn wait_ready(&mut self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                bail!("postgres exited during startup ({status}); its log is above in this log");
            }
            let problem = match connect(port, "postgres", "compute_ctl").await {
                Ok(client) => {
                    let _ = client.close().await;
                    return Ok(());
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("postgres did not accept connections on port {port} within {timeout:?}: {problem}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops it and waits for it to exit: `Fast` escalates to immediate
    /// and then SIGKILL if it takes too long.
    pub async fn stop(&mut self, mode: StopMode) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        let steps: &[(Signal, Duration)] = match mode {
            StopMode::Fast => &[
                (Signal::SIGINT, FAST_STOP_TIMEOUT),
                (Signal::SIGQUIT, KILL_TIMEOUT),
                (Signal::SIGKILL, KILL_TIMEOUT),
            ],
            StopMode::Immediate => &[
                (Signal::SIGQUIT, KILL_TIMEOUT),
                (Signal::SIGKILL, KILL_TIMEOUT),
            ],
        };
        let pid = Pid::from_raw(self.pid as i32);
        for &(signal, timeout) in steps {
            info!(pid = self.pid, "stopping postgres with {signal}");
            if let Err(e) = kill(pid, signal) {
                warn!("sending {signal} to postgres: {e}");
            }
            if let Ok(status) = tokio::time::timeout(timeout, self.wait()).await {
                info!(pid = self.pid, "postgres exited ({status})");
                return status;
            }
            warn!(
                pid = self.pid,
                "postgres still runs {timeout:?} after {signal}"
            );
        }
        self.wait().await
    }
}

/// A connection to the compute as the superuser.
pub async fn connect(
    port: u16,
    dbname: &str,
    application_name: &str,
) -> Result<pq_proto::Client, pq_proto::ClientError> {
    pq_proto::connect(
        ("127.0.0.1", port),
        &[
            ("user", SUPERUSER),
            ("database", dbname),
            ("application_name", application_name),
        ],
        None,
    )
    .await
}
