//! Compute endpoints: a named compute_ctl (and its postgres) on a branch,
//! read-write or read-only at an LSN. Each has a directory
//! `endpoints/<name>/` holding `endpoint.toml`, the `spec.json` of its
//! last start, compute_ctl's log and pid file, and `pgdata/`; and
//! `suspended` while the control plane has stopped it for idleness.
//!
//! Changes take file locks ([`crate::lock`]), so the control-plane service
//! and CLI commands can run at the same time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context};
use auth::Scope;
use compute_api::{ComputeMode, ComputeSpec, ComputeState};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use utils::{Lsn, TenantId, TimelineId};

use crate::daemon_process::{self, is_alive, send_signal, wait_for, Daemon, StopMode};
use crate::local_env::{LocalEnv, Timeout, CONFIG_FILE};
use crate::lock::{lock_creating, lock_existing, FileLock};
use crate::state::{check_name, State};
use crate::storage_clients::{PageserverClient, SafekeeperClient};

pub const ENDPOINTS_DIR: &str = "endpoints";
const ENDPOINT_FILE: &str = "endpoint.toml";
const SPEC_FILE: &str = "spec.json";

/// Writes a file only its owner can read (a spec holds a token).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
/// Present while the endpoint is suspended (stopped by the control plane
/// for idleness; the next connection through the proxy wakes it).
const SUSPENDED_FILE: &str = "suspended";

/// `endpoint.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConf {
    pub name: String,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub pg_port: u16,
    pub http_port: u16,
    /// Read-only at this LSN; read-write when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    pub pg_version: u32,
    /// Suspend the compute after this long without client connections;
    /// never when absent (or `0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_timeout: Option<Timeout>,
    /// Backpressure bound in bytes (see compute_ctl's spec); the default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pageserver_lag: Option<u64>,
    /// Lazy data directory (see compute_ctl's spec); compute_ctl decides
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy: Option<bool>,
    /// A read replica of the branch: it streams the primary's WAL.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica: bool,
}

impl EndpointConf {
    /// Read-write (neither at a fixed LSN nor a replica).
    pub fn is_primary(&self) -> bool {
        self.lsn.is_none() && !self.replica
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub conf: EndpointConf,
    pub dir: PathBuf,
}

/// What `endpoint create` is asked for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub name: String,
    pub tenant_id: Option<TenantId>,
    pub branch_name: String,
    pub pg_port: Option<u16>,
    pub http_port: Option<u16>,
    pub lsn: Option<Lsn>,
    pub pg_version: u32,
    pub suspend_timeout: Option<Timeout>,
    pub max_pageserver_lag: Option<u64>,
    pub lazy: Option<bool>,
    pub replica: bool,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Endpoint {
    pub fn dir_of(repo: &Path, name: &str) -> PathBuf {
        repo.join(ENDPOINTS_DIR).join(name)
    }

    pub fn load(repo: &Path, name: &str) -> anyhow::Result<Endpoint> {
        let dir = Self::dir_of(repo, name);
        let path = dir.join(ENDPOINT_FILE);
        if !path.exists() {
            bail!("there is no endpoint named '{name}' (see `neon_local endpoint list`)");
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let conf: EndpointConf =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Endpoint { conf, dir })
    }

    /// Every endpoint, by name.
    pub fn list(repo: &Path) -> anyhow::Result<Vec<Endpoint>> {
        let dir = repo.join(ENDPOINTS_DIR);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            // `.NAME.creating`: an endpoint being created (renamed into
            // place when complete); endpoint names never start with a dot.
            .filter(|name| !name.starts_with('.'))
            .filter(|name| dir.join(name).join(ENDPOINT_FILE).is_file())
            .collect();
        names.sort();
        names.iter().map(|name| Self::load(repo, name)).collect()
    }

    /// Takes the lock under which endpoints are created (on the
    /// repository's `config`).
    pub fn lock_creation(repo: &Path) -> anyhow::Result<FileLock> {
        lock_existing(&repo.join(CONFIG_FILE))
    }

    /// Creates an endpoint: checks the name, the branch, the ports and the
    /// LSN, then writes `endpoint.toml`. Nothing is written on failure.
    pub fn create(
        repo: &Path,
        env: &LocalEnv,
        state: &State,
        opts: &CreateOptions,
    ) -> anyhow::Result<Endpoint> {
        let lock = Self::lock_creation(repo)?;
        Self::create_locked(repo, env, state, opts, &lock)
    }

    /// [`create`](Self::create) with the creation lock held already.
    pub fn create_locked(
        repo: &Path,
        env: &LocalEnv,
        state: &State,
        opts: &CreateOptions,
        _lock: &FileLock,
    ) -> anyhow::Result<Endpoint> {
        check_name("endpoint", &opts.name)?;
        let dir = Self::dir_of(repo, &opts.name);
        if dir.exists() {
            bail!("endpoint '{}' already exists", opts.name);
        }
        let tenant_id = state.tenant(opts.tenant_id)?;
        let timeline_id = state.require_timeline(tenant_id, &opts.branch_name)?;
        let others = Self::list(repo)?;
        let mut taken: HashSet<u16> = others
            .iter()
            .flat_map(|e| [e.conf.pg_port, e.conf.http_port])
            .collect();
        for (port, what) in [(opts.pg_port, "--pg-port"), (opts.http_port, "--http-port")] {
            let Some(port) = port else { continue };
            if let Some(other) = others
                .iter()
                .find(|e| e.conf.pg_port == port || e.conf.http_port == port)
            {
                bail!(
                    "{what} {port} is already used by endpoint '{}'",
                    other.conf.name
                );
            }
        }
        if opts.pg_port.is_some() && opts.pg_port == opts.http_port {
            bail!("--pg-port and --http-port must differ");
        }
        taken.extend(opts.pg_port);
        taken.extend(opts.http_port);
        let mut next_free = |from: u16| -> anyhow::Result<u16> {
            let mut port = from;
            while taken.contains(&port) || !port_free(port) {
                port = port
                    .checked_add(1)
                    .context("no free port left for the endpoint")?;
            }
            taken.insert(port);
            Ok(port)
        };
        let base = env.endpoints.base_port;
        let pg_port = match opts.pg_port {
            Some(port) => port,
            None => next_free(base)?,
        };
        let http_port = match opts.http_port {
            Some(port) => port,
            None => next_free(pg_port.max(base))?,
        };
        if let Some(lsn) = opts.lsn {
            if opts.replica {
                bail!("a replica follows its branch: it cannot also be at a fixed LSN");
            }
            check_static_lsn(env, tenant_id, timeline_id, &opts.branch_name, lsn)?;
        }
        let conf = EndpointConf {
            name: opts.name.clone(),
            tenant_id,
            timeline_id,
            pg_port,
            http_port,
            lsn: opts.lsn,
            pg_version: opts.pg_version,
            suspend_timeout: opts.suspend_timeout,
            max_pageserver_lag: opts.max_pageserver_lag,
            lazy: opts.lazy,
            replica: opts.replica,
        };
        let text = toml::to_string_pretty(&conf).context("serializing the endpoint")?;
        let tmp = dir.with_file_name(format!(".{}.creating", opts.name));
        let _ = std::fs::remove_dir_all(&tmp);
        let written = std::fs::create_dir_all(&tmp)
            .and_then(|()| std::fs::write(tmp.join(ENDPOINT_FILE), text))
            .and_then(|()| std::fs::rename(&tmp, &dir))
            .with_context(|| format!("creating {}", dir.display()));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Endpoint { conf, dir })
    }

    pub fn pgdata(&self) -> PathBuf {
        self.dir.join("pgdata")
    }

    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.conf.http_port)
    }

    pub fn mode(&self) -> ComputeMode {
        match self.conf.lsn {
            Some(lsn) => ComputeMode::Static(lsn),
            None if self.conf.replica => ComputeMode::Replica,
            None => ComputeMode::Primary,
        }
    }

    /// compute_ctl as a background process.
    pub fn daemon(&self, env: &LocalEnv) -> Daemon {
        Daemon {
            name: format!("endpoint {}", self.conf.name),
            description: format!("compute_ctl of endpoint {}", self.conf.name),
            service: "compute_ctl",
            binary: env.binaries.compute_ctl.clone(),
            args: vec![
                "--pgdata".into(),
                self.pgdata().into(),
                "--spec".into(),
                self.dir.join(SPEC_FILE).into(),
                "--listen-http".into(),
                self.http_addr().into(),
                "--pgbin".into(),
                env.postgres_binary().into(),
                "--auth-public-key".into(),
                std::path::absolute(env.repo.join(crate::local_auth::PUBLIC_KEY_FILE))
                    .unwrap_or_else(|_| env.repo.join(crate::local_auth::PUBLIC_KEY_FILE))
                    .into(),
            ],
            dir: self.dir.clone(),
            http_addr: self.http_addr(),
            announce: false,
            token: None,
        }
    }

    /// The spec compute_ctl starts from: the storage's addresses and a
    /// token for the tenant, and the tenant's login roles (those deleted
    /// with `role delete` are dropped).
    pub fn spec(&self, env: &LocalEnv) -> anyhow::Result<ComputeSpec> {
        let state = crate::state::State::load(&env.repo)?;
        let tenant_id = self.conf.tenant_id;
        Ok(ComputeSpec {
            format_version: compute_api::spec::FORMAT_VERSION,
            tenant_id: self.conf.tenant_id,
            timeline_id: self.conf.timeline_id,
            pageserver_connstring: format!(
                "postgresql://{}@{}",
                compute_api::spec::SUPERUSER,
                env.pageserver.listen_pg_addr
            ),
            pageserver_http: env.pageserver.listen_http_addr.clone(),
            safekeepers: match self.mode() {
                ComputeMode::Primary | ComputeMode::Replica => env
                    .safekeepers
                    .iter()
                    .map(|sk| sk.listen_pg_addr.clone())
                    .collect(),
                ComputeMode::Static(_) => Vec::new(),
            },
            pg_port: self.conf.pg_port,
            listen_addresses: "127.0.0.1".into(),
            pg_version: self.conf.pg_version,
            mode: self.mode(),
            roles: state.roles_of(tenant_id),
            databases: Vec::new(),
            delta_operations: state.dropped_roles_of(tenant_id),
            settings: Default::default(),
            suspend_timeout_seconds: self.suspend_timeout().map(|t| t.as_secs()),
            max_pageserver_lag_bytes: self.conf.max_pageserver_lag,
            lazy: self.conf.lazy,
            storage_auth_token: Some(env.auth()?.tenant(tenant_id)),
        })
    }

    /// compute_ctl's `/status`, asked with a compute token; `None` if it
    /// does not answer.
    fn compute_state(&self, env: &LocalEnv) -> Option<ComputeState> {
        let token = env.auth().ok()?.scope(Scope::Compute);
        daemon_process::http_client()
            .ok()?
            .get(format!("http://{}/status", self.http_addr()))
            .bearer_auth(token)
            .send()
            .ok()?
            .json()
            .ok()
    }

    /// Sends the current spec to the running compute (`POST /configure`):
    /// roles and settings are applied without a restart.
    pub fn reconfigure(&self, env: &LocalEnv) -> anyhow::Result<()> {
        let spec = self.spec(env)?;
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .context("creating the HTTP client")?;
        let response = client
            .post(format!("http://{}/configure", self.http_addr()))
            .bearer_auth(env.auth()?.scope(Scope::Compute))
            .json(&spec)
            .send()
            .with_context(|| format!("asking compute_ctl of endpoint '{}'", self.conf.name))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().unwrap_or_default();
            bail!(
                "compute_ctl of endpoint '{}' refused the new spec ({status}): {body}",
                self.conf.name
            );
        }
        Ok(())
    }

    pub fn connstr(&self) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/postgres",
            compute_api::spec::SUPERUSER,
            self.conf.pg_port
        )
    }

    /// The suspend timeout, if the endpoint is ever suspended.
    pub fn suspend_timeout(&self) -> Option<Duration> {
        self.conf.suspend_timeout.and_then(Timeout::as_option)
    }

    pub fn is_suspended(&self) -> bool {
        self.dir.join(SUSPENDED_FILE).exists()
    }

    /// Locks the endpoint for a change (waiting for other holders); fails
    /// if it has been destroyed meanwhile.
    pub fn lock(&self) -> anyhow::Result<FileLock> {
        let path = self.dir.join(ENDPOINT_FILE);
        let missing = || {
            anyhow::anyhow!(
                "there is no endpoint named '{}' (see `neon_local endpoint list`)",
                self.conf.name
            )
        };
        let lock = lock_existing(&path).map_err(|_| missing())?;
        if !path.exists() {
            return Err(missing());
        }
        Ok(lock)
    }

    /// compute_ctl's pid if it runs.
    pub fn running_pid(&self, env: &LocalEnv) -> anyhow::Result<Option<Pid>> {
        self.daemon(env).running_pid()
    }

    /// Starts compute_ctl and waits until postgres runs with the spec
    /// applied. Checks first what can be checked, so that a refused start
    /// changes nothing; a failed one leaves no process.
    pub fn start(&self, repo: &Path, env: &LocalEnv, timeout: Duration) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        self.start_locked(repo, env, timeout).map(drop)
    }

    /// [`start`](Self::start) with the endpoint's lock held already;
    /// returns compute_ctl's process, for the caller to reap.
    pub fn start_locked(
        &self,
        repo: &Path,
        env: &LocalEnv,
        timeout: Duration,
    ) -> anyhow::Result<Option<Child>> {
        let name = &self.conf.name;
        let daemon = self.daemon(env);
        // No other primary may start on the timeline meanwhile.
        let _timeline_lock = match self.conf.is_primary() {
            true => Some(lock_creating(
                &repo
                    .join("locks")
                    .join(format!("timeline-{}", self.conf.timeline_id)),
            )?),
            false => None,
        };
        if let Some(pid) = daemon.running_pid()? {
            bail!("endpoint '{name}' is already running (compute_ctl pid {pid})");
        }
        daemon.check_binary()?;
        env.check_postgres(repo)?;
        if self.conf.is_primary() {
            for other in Self::list(repo)? {
                if other.conf.name != *name
                    && other.conf.is_primary()
                    && other.conf.tenant_id == self.conf.tenant_id
                    && other.conf.timeline_id == self.conf.timeline_id
                    && other.running_pid(env)?.is_some()
                {
                    bail!(
                        "endpoint '{}' already runs read-write on timeline {}: stop it first (two primaries on one timeline would fence each other)",
                        other.conf.name,
                        self.conf.timeline_id
                    );
                }
            }
        }
        for (port, what) in [
            (self.conf.pg_port, "postgres"),
            (self.conf.http_port, "compute_ctl HTTP"),
        ] {
            if !port_free(port) {
                bail!("cannot start endpoint '{name}': port {port} ({what}) is already in use");
            }
        }
        let pageserver = PageserverClient::new(env)?;
        pageserver
            .timeline(self.conf.tenant_id, self.conf.timeline_id)
            .with_context(|| {
                format!(
                    "checking timeline {} on the pageserver",
                    self.conf.timeline_id
                )
            })?;
        if self.conf.is_primary() {
            self.ensure_safekeeper_timelines(env)?;
        }
        let spec_path = self.dir.join(SPEC_FILE);
        let spec =
            serde_json::to_string_pretty(&self.spec(env)?).context("serializing the spec")?;
        write_private(&spec_path, &spec)?;

        let mut ready = |doc: &serde_json::Value| -> anyhow::Result<bool> {
            match doc["status"].as_str() {
                Some("running") => Ok(true),
                Some("failed" | "terminated") => {
                    let state = self.compute_state(env);
                    let error = state
                        .and_then(|s| s.error)
                        .unwrap_or_else(|| "no error recorded".into());
                    bail!("the compute failed: {error}")
                }
                _ => Ok(false),
            }
        };
        let started = daemon.start_checked(timeout, &mut ready);
        match started {
            Ok(child) => {
                self.set_suspended(false)?;
                Ok(child)
            }
            Err(e) => {
                self.kill_postgres();
                Err(e)
            }
        }
    }

    /// Points a stopped endpoint at another timeline (a branch reset): its
    /// next start makes its data directory from that timeline. The caller
    /// holds the endpoint's lock.
    pub fn set_timeline(&mut self, timeline_id: TimelineId) -> anyhow::Result<()> {
        let mut conf = self.conf.clone();
        conf.timeline_id = timeline_id;
        let text = toml::to_string_pretty(&conf).context("serializing the endpoint")?;
        let path = self.dir.join(ENDPOINT_FILE);
        let tmp = self.dir.join(format!(".{ENDPOINT_FILE}.new"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))?;
        self.conf = conf;
        Ok(())
    }

    fn set_suspended(&self, suspended: bool) -> anyhow::Result<()> {
        let path = self.dir.join(SUSPENDED_FILE);
        let result = if suspended {
            std::fs::write(&path, "")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        result.with_context(|| format!("updating {}", path.display()))
    }

    /// Stops compute_ctl (which stops postgres), then makes sure no
    /// postgres of this endpoint is left. Returns whether it was running.
    /// A suspended endpoint stays suspended; a running one becomes stopped.
    pub fn stop(&self, env: &LocalEnv, mode: StopMode) -> anyhow::Result<bool> {
        let _lock = self.lock()?;
        self.stop_locked(env, mode)
    }

    /// [`stop`](Self::stop) with the endpoint's lock held already.
    pub fn stop_locked(&self, env: &LocalEnv, mode: StopMode) -> anyhow::Result<bool> {
        let was_running = self.daemon(env).stop(None, mode)?;
        self.kill_postgres();
        if was_running {
            self.set_suspended(false)?;
        }
        Ok(was_running)
    }

    /// Stops the endpoint and deletes its directory. Returns whether it
    /// was running.
    pub fn destroy(&self, env: &LocalEnv, mode: StopMode) -> anyhow::Result<bool> {
        let _lock = self.lock()?;
        let was_running = self.stop_locked(env, mode)?;
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()))?;
        Ok(was_running)
    }

    /// The control plane's scale to zero: under the endpoint's lock, if it
    /// runs and `still_idle` agrees, stops it (fast) and marks it
    /// suspended. Returns whether it did.
    pub fn suspend(
        &self,
        env: &LocalEnv,
        still_idle: impl FnOnce() -> bool,
    ) -> anyhow::Result<bool> {
        let _lock = self.lock()?;
        if self.running_pid(env)?.is_none() || !still_idle() {
            return Ok(false);
        }
        self.daemon(env).stop(None, StopMode::Fast)?;
        self.kill_postgres();
        self.set_suspended(true)?;
        Ok(true)
    }

    /// Kills a postgres left in the endpoint's PGDATA (compute_ctl was
    /// killed, say), as `postmaster.pid` names it.
    fn kill_postgres(&self) {
        let pid_file = self.pgdata().join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            .map(Pid::from_raw)
        else {
            return;
        };
        let is_postgres = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
            argv0.ends_with(b"postgres")
        });
        if !is_alive(pid) || !is_postgres {
            return;
        }
        for signal in [Signal::SIGQUIT, Signal::SIGKILL] {
            if send_signal(pid, signal, "postgres").is_err() {
                return;
            }
            if wait_for(|| !is_alive(pid), Duration::from_secs(5)) {
                return;
            }
        }
        eprintln!(
            "warning: postgres (pid {pid}) of endpoint '{}' survived SIGKILL",
            self.conf.name
        );
    }

    /// The timeline on every safekeeper that answers. A quorum suffices,
    /// as for commits: the others are named in a warning and get the
    /// timeline when they start again (see [`ensure_timelines_on`]).
    /// Creates the timeline on the safekeepers where it is missing (a
    /// quorum must answer).
    pub fn ensure_safekeeper_timelines(&self, env: &LocalEnv) -> anyhow::Result<()> {
        let mut unreachable = Vec::new();
        for sk in &env.safekeepers {
            let created = SafekeeperClient::new(env, &sk.listen_http_addr).and_then(|client| {
                client.ensure_timeline(
                    self.conf.tenant_id,
                    self.conf.timeline_id,
                    self.conf.pg_version,
                )
            });
            if let Err(e) = created {
                unreachable.push(format!("safekeeper {}: {e:#}", sk.id));
            }
        }
        let quorum = env.safekeepers.len() / 2 + 1;
        let reached = env.safekeepers.len() - unreachable.len();
        if reached < quorum {
            bail!(
                "cannot start endpoint '{}': only {reached} of {} safekeepers answer, a quorum is {quorum} ({})",
                self.conf.name,
                env.safekeepers.len(),
                unreachable.join("; ")
            );
        }
        for reason in &unreachable {
            eprintln!(
                "warning: {reason}; the endpoint starts with the other safekeepers (start it with `neon_local safekeeper start`)"
            );
        }
        Ok(())
    }

    /// `running`, `stopped`, `suspended`, or what compute_ctl reports
    /// (`init`, `failed`, …); `running (commits stuck for Ns)` when commits
    /// have waited for the safekeepers that long (compute_ctl's `/status`
    /// says what for), `running (throttled: pageserver N MiB behind)` while
    /// backpressure holds commits back.
    pub fn status(&self, env: &LocalEnv) -> String {
        match self.running_pid(env) {
            Ok(Some(_)) => {}
            _ if self.is_suspended() => return "suspended".into(),
            _ => return "stopped".into(),
        }
        match self.compute_state(env) {
            Some(ComputeState {
                commits: Some(commits),
                ..
            }) if commits.is_stuck() => {
                format!("running (commits stuck for {}s)", commits.stalled_seconds)
            }
            Some(ComputeState {
                commits: Some(commits),
                ..
            }) if commits.throttled => format!(
                "running (throttled: pageserver {} MiB behind)",
                commits.pageserver_lag_bytes().unwrap_or(0) / (1024 * 1024)
            ),
            Some(state) => state.status.to_string(),
            None => "unknown".into(),
        }
    }
}

/// A static endpoint's LSN must lie on its branch, above the GC horizon.
fn check_static_lsn(
    env: &LocalEnv,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    branch: &str,
    lsn: Lsn,
) -> anyhow::Result<()> {
    let pageserver = PageserverClient::new(env)?;
    let mut info = pageserver
        .timeline(tenant_id, timeline_id)
        .with_context(|| format!("checking --lsn {lsn} on the pageserver"))?;
    if lsn > info.last_record_lsn {
        // Committed WAL the pageserver has not ingested yet is on its way.
        let flushed = crate::storage_clients::quorum_flush_lsn(env, tenant_id, timeline_id)?;
        if flushed.is_some_and(|f| lsn <= f) {
            pageserver.wait_for_lsn(tenant_id, timeline_id, lsn, Duration::from_secs(30))?;
            info = pageserver.timeline(tenant_id, timeline_id)?;
        }
    }
    if lsn > info.last_record_lsn {
        bail!(
            "--lsn {lsn} is beyond the end of branch '{branch}' ({})",
            info.last_record_lsn
        );
    }
    if let Some(start) = info.ancestor_lsn.filter(|&a| lsn < a) {
        bail!("--lsn {lsn} is before branch '{branch}' starts ({start})");
    }
    if lsn < info.gc_cutoff_lsn {
        bail!(
            "--lsn {lsn} is below the GC horizon of branch '{branch}' ({}): its pages are gone",
            info.gc_cutoff_lsn
        );
    }
    Ok(())
}

/// Creates the timeline of every primary endpoint on the safekeeper at
/// `http_addr` where it is missing, so that a safekeeper that was down
/// when an endpoint started joins its quorum once it is back.
pub fn ensure_timelines_on(repo: &Path, http_addr: &str) -> anyhow::Result<()> {
    let env = LocalEnv::load(repo)?;
    let client = SafekeeperClient::new(&env, http_addr)?;
    let mut done = HashSet::new();
    for endpoint in Endpoint::list(repo)? {
        let c = &endpoint.conf;
        if c.is_primary() && done.insert((c.tenant_id, c.timeline_id)) {
            client
                .ensure_timeline(c.tenant_id, c.timeline_id, c.pg_version)
                .with_context(|| {
                    format!(
                        "creating timeline {} of endpoint '{}' on the safekeeper at {http_addr}",
                        c.timeline_id, c.name
                    )
                })?;
        }
    }
    Ok(())
}

/// Stops every running endpoint.
pub fn stop_all(repo: &Path, env: &LocalEnv, mode: StopMode) -> anyhow::Result<()> {
    let mut first_error = None;
    for endpoint in Endpoint::list(repo)? {
        match endpoint.stop(env, mode) {
            Ok(true) => println!("Stopped endpoint {}", endpoint.conf.name),
            Ok(false) => {}
            Err(e) => {
                eprintln!("error: {e:#}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e.context("some endpoints could not be stopped")),
        None => Ok(()),
    }
}

/// `endpoint list`: a table with the endpoints (of one tenant, if given).
pub fn list_table(
    repo: &Path,
    env: &LocalEnv,
    tenant_id: Option<TenantId>,
) -> anyhow::Result<String> {
    let state = State::load(repo)?;
    let endpoints: Vec<Endpoint> = Endpoint::list(repo)?
        .into_iter()
        .filter(|e| tenant_id.is_none_or(|t| e.conf.tenant_id == t))
        .collect();
    // A primary's LSN is where its timeline ends on the pageserver ("?"
    // if the pageserver does not answer within a few seconds).
    let pageserver = PageserverClient::with_timeout(env, Duration::from_secs(3))?;
    let mut last_lsn = std::collections::HashMap::new();
    for e in &endpoints {
        if e.conf.lsn.is_none() && !last_lsn.contains_key(&e.conf.timeline_id) {
            let lsn = pageserver
                .timeline(e.conf.tenant_id, e.conf.timeline_id)
                .map(|t| t.last_record_lsn.to_string())
                .unwrap_or_else(|_| "?".into());
            last_lsn.insert(e.conf.timeline_id, lsn);
        }
    }
    let mut rows = vec![[
        "ENDPOINT".to_owned(),
        "ADDRESS".to_owned(),
        "TIMELINE".to_owned(),
        "BRANCH NAME".to_owned(),
        "LSN".to_owned(),
        "STATUS".to_owned(),
    ]];
    for e in &endpoints {
        let lsn = match e.conf.lsn {
            Some(lsn) => lsn.to_string(),
            None => last_lsn[&e.conf.timeline_id].clone(),
        };
        rows.push([
            e.conf.name.clone(),
            format!("127.0.0.1:{}", e.conf.pg_port),
            e.conf.timeline_id.to_string(),
            state
                .branch_name(e.conf.tenant_id, e.conf.timeline_id)
                .unwrap_or("<no name>")
                .to_owned(),
            lsn,
            if e.conf.replica {
                format!("{} (replica)", e.status(env))
            } else {
                e.status(env)
            },
        ]);
    }
    Ok(format_table(&rows))
}

/// Left-aligned columns, two spaces apart.
pub fn format_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
