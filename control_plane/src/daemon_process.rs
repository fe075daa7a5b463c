//! Daemons run as background processes: each has a directory holding its
//! log (`<service>.log`, appended to) and, while it runs, a pid file
//! (`<service>.pid`).
//!
//! A pid file is trusted only while its process is alive, is not a zombie
//! and runs the daemon's executable (checked through `/proc`), so a stale
//! file whose pid was reused never gets an unrelated process signalled.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a daemon gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the kernel to remove a killed process.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a start or stop is checked on.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Lines of the log shown when a daemon fails to start.
const LOG_TAIL_LINES: usize = 20;

/// How to stop daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StopMode {
    /// SIGTERM, then SIGKILL if the daemon has not exited in time.
    Fast,
    /// SIGKILL at once.
    Immediate,
}

/// One daemon process managed by neon_local.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// For messages: "pageserver 1".
    pub name: String,
    /// The `service` its `/v1/status` reports; also names its files.
    pub service: &'static str,
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    pub dir: PathBuf,
    /// host:port of its HTTP API.
    pub http_addr: String,
    /// Print a line when it starts and when it has started.
    pub announce: bool,
    /// What the line before starting says after "Starting ", e.g.
    /// `pageserver node 1 at '127.0.0.1:64000' in ".neon"`.
    pub description: String,
    /// The token it presents to other daemons (`NEON_AUTH_TOKEN`), if any.
    pub token: Option<DaemonToken>,
}

/// A token signed with a repository's key when its daemon starts.
#[derive(Debug, Clone)]
pub struct DaemonToken {
    pub repo: PathBuf,
    pub claims: auth::Claims,
}

/// Decides from a `/v1/status` document of the spawned process whether it
/// is ready (`Ok(true)`), not yet (`Ok(false)`), or failed (`Err`).
pub type ReadyCheck<'a> = &'a mut dyn FnMut(&Value) -> anyhow::Result<bool>;

impl Daemon {
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join(format!("{}.pid", self.service))
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.service))
    }

    fn status_url(&self) -> String {
        format!("http://{}/v1/status", self.http_addr)
    }

    pub fn check_binary(&self) -> anyhow::Result<()> {
        if !self.binary.is_file() {
            bail!(
                "{} not found: build the daemons with `cargo build --bins`",
                self.binary.display()
            );
        }
        Ok(())
    }

    /// The pid of this daemon if it is running.
    pub fn running_pid(&self) -> anyhow::Result<Option<Pid>> {
        let path = self.pid_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            eprintln!("warning: ignoring {}: it holds no pid", path.display());
            return Ok(None);
        };
        let pid = Pid::from_raw(pid);
        Ok((is_alive(pid) && runs_binary(pid, &self.binary)).then_some(pid))
    }

    /// Starts the daemon in the background and waits until its
    /// `/v1/status` answers, for at most `timeout`. Returns `None` if it
    /// was running already. On failure prints the end of its log, and leaves
    /// no process nor pid file behind.
    pub fn start(&self, timeout: Duration) -> anyhow::Result<Option<Child>> {
        self.start_checked(timeout, &mut |_| Ok(true))
    }

    /// [`start`](Self::start), ready only once `ready` says so as well.
    pub fn start_checked(
        &self,
        timeout: Duration,
        ready: ReadyCheck<'_>,
    ) -> anyhow::Result<Option<Child>> {
        if let Some(pid) = self.running_pid()? {
            println!("{} is already running (pid {pid})", self.name);
            return Ok(None);
        }
        self.check_binary()?;
        if self.announce {
            println!("Starting {}.", self.description);
        }
        let (child, log_start) = self
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        let pid = child.id();
        let mut child = Some(child);
        match self.wait_until_ready(&mut child, timeout, ready) {
            Ok(()) => {
                if self.announce {
                    println!("{} started, pid: {pid}", self.name);
                }
                Ok(child)
            }
            Err(err) => {
                let cleanup = match child {
                    Some(child) => self.stop(Some(child), StopMode::Fast).map(drop),
                    None => self.remove_pid_file(),
                };
                self.print_log_tail(log_start);
                cleanup?;
                Err(err.context(format!("starting {}", self.name)))
            }
        }
    }

    /// Returns the child and the offset in its log where its output starts.
    fn spawn(&self) -> anyhow::Result<(Child, u64)> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating directory {}", self.dir.display()))?;
        let log_path = self.log_file();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log_start = log
            .metadata()
            .with_context(|| format!("reading the size of {}", log_path.display()))?
            .len();
        let mut command = Command::new(&self.binary);
        command.env_remove(auth::TOKEN_ENV);
        if let Some(token) = &self.token {
            let signed = crate::local_auth::RepoAuth::load(&token.repo)?.issue(&token.claims);
            command.env(auth::TOKEN_ENV, signed);
        }
        let mut child = command
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            // Its own process group: a Ctrl-C in neon_local's terminal
            // does not reach it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("running {}", self.binary.display()))?;
        let pid_path = self.pid_file();
        if let Err(err) = write_atomically(&pid_path, &format!("{}\n", child.id())) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
        Ok((child, log_start))
    }

    /// Polls `/v1/status` until this very process answers. Sets `child` to
    /// `None` once it has been reaped.
    fn wait_until_ready(
        &self,
        child: &mut Option<Child>,
        timeout: Duration,
        ready: ReadyCheck<'_>,
    ) -> anyhow::Result<()> {
        let client = http_client()?;
        let url = self.status_url();
        let deadline = Instant::now() + timeout;
        while let Some(process) = child.as_mut() {
            if let Some(status) = process.try_wait().context("checking the daemon process")? {
                *child = None;
                bail!("{} exited during startup ({status})", self.name);
            }
            let problem = match get_status(&client, &url) {
                Ok(doc) if doc["pid"] == process.id() => {
                    if ready(&doc)? {
                        return Ok(());
                    }
                    format!("not ready yet: {doc}")
                }
                Ok(doc) => format!("another process answers there: {doc}"),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer on {url} within {timeout:?}: {problem}",
                    self.name
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        bail!("{} is not running", self.name)
    }

    /// Prints the last lines its latest run wrote to its log, from `start`.
    fn print_log_tail(&self, start: u64) {
        let path = self.log_file();
        let Ok(mut file) = std::fs::File::open(&path) else {
            return;
        };
        if file.seek(SeekFrom::Start(start)).is_err() {
            return;
        }
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        if tail.is_empty() {
            eprintln!("{} is empty", path.display());
            return;
        }
        eprintln!("last lines of {}:", path.display());
        for line in tail {
            eprintln!("  {line}");
        }
    }

    fn remove_pid_file(&self) -> anyhow::Result<()> {
        let path = self.pid_file();
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Stops the daemon (given as `child` if this process started it) and
    /// removes its pid file. Returns whether it was running.
    pub fn stop(&self, mut child: Option<Child>, mode: StopMode) -> anyhow::Result<bool> {
        let pid = match &child {
            Some(child) => Some(Pid::from_raw(child.id() as i32)),
            None => self.running_pid()?,
        };
        let Some(pid) = pid else {
            self.remove_pid_file()?;
            if self.announce {
                println!("{} is not running", self.name);
            }
            return Ok(false);
        };
        let mut exited = || match child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => !is_alive(pid),
        };
        let first = match mode {
            StopMode::Fast => Signal::SIGTERM,
            StopMode::Immediate => Signal::SIGKILL,
        };
        send_signal(pid, first, &self.name)?;
        if !wait_for(&mut exited, STOP_TIMEOUT) {
            eprintln!(
                "{} (pid {pid}) did not exit within {STOP_TIMEOUT:?} of {first}; sending SIGKILL",
                self.name
            );
            send_signal(pid, Signal::SIGKILL, &self.name)?;
            if !wait_for(&mut exited, KILL_TIMEOUT) {
                bail!("{} (pid {pid}) is still running after SIGKILL", self.name);
            }
        }
        self.remove_pid_file()?;
        if self.announce {
            println!("{} stopped (pid {pid})", self.name);
        }
        Ok(true)
    }

    /// Prints one line about the daemon; returns whether it runs and answers.
    pub fn print_status(&self) -> anyhow::Result<bool> {
        let Some(pid) = self.running_pid()? else {
            println!("{}: not running", self.name);
            return Ok(false);
        };
        let url = self.status_url();
        match get_status(&http_client()?, &url) {
            Ok(doc) => {
                println!("{}: running (pid {pid}), {url}: {doc}", self.name);
                Ok(true)
            }
            Err(err) => {
                println!(
                    "{}: running (pid {pid}) but {url} fails: {err:#}",
                    self.name
                );
                Ok(false)
            }
        }
    }
}

pub fn http_client() -> anyhow::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        // Only local daemons are asked: never through a proxy from the env.
        .no_proxy()
        .build()
        .context("creating the HTTP client")
}

fn get_status(client: &reqwest::blocking::Client, url: &str) -> anyhow::Result<Value> {
    let response = client.get(url).send()?.error_for_status()?;
    Ok(response.json()?)
}

pub fn wait_for(mut condition: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

pub fn send_signal(pid: Pid, signal: Signal, name: &str) -> anyhow::Result<()> {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("sending {signal} to {name} (pid {pid})")),
    }
}

/// Whether `pid` exists and is not a zombie (an exited process nobody has
/// reaped yet, e.g. when the reaper of orphans is slow).
pub fn is_alive(pid: Pid) -> bool {
    match kill(pid, None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may
        // itself hold parentheses.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(err) => err.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Whether `pid` runs `binary`, judged by the file name of its first
/// argument; true where `/proc` cannot tell.
fn runs_binary(pid: Pid, binary: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return true;
    };
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let argv0 = Path::new(std::str::from_utf8(argv0).unwrap_or_default());
    argv0.file_name().is_some() && argv0.file_name() == binary.file_name()
}

/// Writes `path` through a temporary file and a rename.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// A pid file under `dir` (searched three levels deep) whose process is
/// alive: `(pid, pid file)`.
pub fn find_running_pid_file(dir: &Path) -> anyhow::Result<Option<(Pid, PathBuf)>> {
    fn search(dir: &Path, depth: usize) -> anyhow::Result<Option<(Pid, PathBuf)>> {
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading {}", dir.display()))?
                .path();
            if path.is_dir() && depth > 0 {
                if let Some(found) = search(&path, depth - 1)? {
                    return Ok(Some(found));
                }
            } else if path.extension().is_some_and(|ext| ext == "pid") {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .map(Pid::from_raw);
                if let Some(pid) = pid.filter(|&pid| is_alive(pid)) {
                    return Ok(Some((pid, path)));
                }
            }
        }
        Ok(None)
    }
    search(dir, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_processes() {
        let me = Pid::from_raw(std::process::id() as i32);
        assert!(is_alive(me));
        let exe = std::env::current_exe().unwrap();
        assert!(runs_binary(me, &exe));
        assert!(!runs_binary(me, Path::new("/usr/bin/pageserver")));

        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert!(is_alive(pid));
        kill(pid, Signal::SIGKILL).unwrap();
        // Killed but not reaped yet: a zombie counts as dead.
        assert!(wait_for(|| !is_alive(pid), Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!is_alive(pid));
    }
}
