//! The repository directory and its `config` file.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use utils::NodeId;

use auth::{Claims, Scope};

use crate::daemon_process::{find_running_pid_file, Daemon, DaemonToken};
use crate::local_auth::{write_key_pair, RepoAuth, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE};

/// Name of the configuration file inside the repository directory.
pub const CONFIG_FILE: &str = "config";

/// The repository's `config`. `neon_local init --config FILE` takes the same
/// format; keys it leaves out get the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalEnv {
    pub broker: BrokerConf,
    pub pageserver: PageserverConf,
    pub safekeepers: Vec<SafekeeperConf>,
    pub endpoints: EndpointsConf,
    pub control_plane: ControlPlaneConf,
    pub proxy: ProxyConf,
    pub binaries: Binaries,
    /// Object storage of the pageserver's layers, as an inline TOML table
    /// (`{ local_path = "DIR" }` or an S3 bucket, see the daemons'
    /// `--remote-storage`); unset: the directory `remote_storage` in the
    /// repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_storage: Option<String>,
    /// The repository this config was loaded from (not in the file).
    #[serde(skip)]
    pub repo: PathBuf,
    /// Its key pair, read once.
    #[serde(skip)]
    auth: std::sync::OnceLock<std::sync::Arc<RepoAuth>>,
}

/// The control-plane service (`neon_local control-plane run`, started by
/// `neon_local start`): the wake API the proxy calls, and scale to zero.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConf {
    /// Its HTTP API: `POST /v1/wake_compute`, `GET /v1/status`.
    pub listen_http_addr: String,
    /// The suspend timeout of the endpoints it creates for branches
    /// (`10s`, `5m`, `1h`; `0` never suspends them).
    pub default_suspend_timeout: Timeout,
}

impl Default for ControlPlaneConf {
    fn default() -> Self {
        Self {
            listen_http_addr: "127.0.0.1:1234".into(),
            default_suspend_timeout: Timeout(Duration::from_secs(300)),
        }
    }
}

/// The proxy, the PostgreSQL entry point that wakes computes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConf {
    pub listen_pg_addr: String,
    pub listen_http_addr: String,
    /// TLS certificate chain (PEM); with `tls_key_path`, clients may use
    /// TLS, and the first label of their SNI name picks the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_path: Option<PathBuf>,
    /// Refuse clients that do not use TLS (needs the certificate and key).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
    /// SQL over HTTP and WebSocket (Neon's serverless driver); empty for
    /// none.
    pub listen_serverless_addr: String,
    /// How long a statement of `POST /sql` may run (the proxy's default
    /// when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serverless_statement_timeout: Option<Timeout>,
}

impl Default for ProxyConf {
    fn default() -> Self {
        Self {
            listen_pg_addr: "127.0.0.1:5432".into(),
            listen_http_addr: "127.0.0.1:7001".into(),
            tls_cert_path: None,
            tls_key_path: None,
            require_tls: false,
            listen_serverless_addr: "127.0.0.1:4444".into(),
            serverless_statement_timeout: None,
        }
    }
}

/// A duration written `250ms`, `10s`, `5m`, `1h` or as plain seconds
/// (`300`); `0` means never (for suspend timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TimeoutRepr", into = "String")]
pub struct Timeout(pub Duration);

#[derive(Deserialize)]
#[serde(untagged)]
enum TimeoutRepr {
    Seconds(u64),
    Text(String),
}

impl TryFrom<TimeoutRepr> for Timeout {
    type Error = String;
    fn try_from(repr: TimeoutRepr) -> Result<Self, String> {
        match repr {
            TimeoutRepr::Seconds(s) => Ok(Timeout(Duration::from_secs(s))),
            TimeoutRepr::Text(t) => t.parse(),
        }
    }
}

impl From<Timeout> for String {
    fn from(t: Timeout) -> String {
        t.to_string()
    }
}

impl std::str::FromStr for Timeout {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let bad = || format!("invalid duration '{text}': use e.g. 250ms, 10s, 5m, 1h or 0");
        let n: u64 = number.parse().map_err(|_| bad())?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" | "min" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(bad()),
        }
        .ok_or_else(bad)?;
        Ok(Timeout(Duration::from_millis(ms)))
    }
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Timeout {
    /// `None` for `0` (never).
    pub fn as_option(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

/// Compute endpoints: ports are picked from `base_port` up (postgres, then
/// compute_ctl's HTTP API), skipping those taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointsConf {
    pub base_port: u16,
}

impl Default for EndpointsConf {
    fn default() -> Self {
        Self { base_port: 55432 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConf {
    pub listen_addr: String,
}

impl Default for BrokerConf {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:50051".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageserverConf {
    pub id: NodeId,
    pub listen_pg_addr: String,
    pub listen_http_addr: String,
}

impl Default for PageserverConf {
    fn default() -> Self {
        Self {
            id: NodeId(1),
            listen_pg_addr: "127.0.0.1:64000".into(),
            listen_http_addr: "127.0.0.1:9898".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafekeeperConf {
    pub id: NodeId,
    pub listen_pg_addr: String,
    pub listen_http_addr: String,
}

impl SafekeeperConf {
    /// Safekeeper `n` (from 1) on the default ports shifted by `n - 1`.
    fn numbered(n: u16) -> Self {
        Self {
            id: NodeId(n.into()),
            listen_pg_addr: format!("127.0.0.1:{}", 5454 + n - 1),
            listen_http_addr: format!("127.0.0.1:{}", 7676 + n - 1),
        }
    }
}

/// Paths of the daemon executables; `init` fills those left empty with the
/// ones next to the neon_local executable, and `pg_bin_dir` with
/// PostgreSQL 15's (`$PG_BIN`, /usr/lib/postgresql/15/bin or
/// `pg_config --bindir`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Binaries {
    pub storage_broker: PathBuf,
    pub pageserver: PathBuf,
    pub safekeeper: PathBuf,
    pub compute_ctl: PathBuf,
    pub proxy: PathBuf,
    pub pg_bin_dir: PathBuf,
}

/// Where PostgreSQL 15's server binaries are, if they can be found.
pub fn find_pg_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let default = Path::new("/usr/lib/postgresql/15/bin");
    if default.join("postgres").is_file() {
        return Some(default.to_owned());
    }
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && dir.join("postgres").is_file()).then_some(dir)
}

/// Options of `neon_local init`.
#[derive(Debug, Default)]
pub struct InitOptions {
    pub num_safekeepers: Option<u16>,
    pub config: Option<PathBuf>,
    pub force: bool,
}

impl LocalEnv {
    /// The configuration `init` writes: the `--config` file or defaults,
    /// completed with safekeepers and binary paths, and checked.
    pub fn generate(opts: &InitOptions) -> anyhow::Result<Self> {
        let mut env: LocalEnv = daemon_utils::load_config(opts.config.as_deref())?;
        match (env.safekeepers.len(), opts.num_safekeepers) {
            (0, n) => env.safekeepers = (1..=n.unwrap_or(1)).map(SafekeeperConf::numbered).collect(),
            (listed, Some(n)) if listed != usize::from(n) => bail!(
                "--num-safekeepers {n} contradicts the {listed} safekeepers listed in the --config file"
            ),
            _ => {}
        }
        if env.safekeepers.is_empty() {
            bail!("at least one safekeeper is needed");
        }
        let mut ids = HashSet::new();
        if let Some(sk) = env.safekeepers.iter().find(|sk| !ids.insert(sk.id)) {
            bail!("safekeeper id {} is listed twice", sk.id);
        }
        let exe = std::env::current_exe().context("finding the neon_local executable")?;
        let bin_dir = exe.parent().unwrap_or(Path::new("."));
        let b = &mut env.binaries;
        for (name, path) in [
            ("storage_broker", &mut b.storage_broker),
            ("pageserver", &mut b.pageserver),
            ("safekeeper", &mut b.safekeeper),
            ("compute_ctl", &mut b.compute_ctl),
            ("proxy", &mut b.proxy),
        ] {
            if path.as_os_str().is_empty() {
                *path = bin_dir.join(name);
            }
            if !path.is_file() {
                eprintln!(
                    "warning: {} not found; build it (cargo build --bins) before `neon_local start`",
                    path.display()
                );
            }
        }
        if b.pg_bin_dir.as_os_str().is_empty() {
            match find_pg_bin_dir() {
                Some(dir) => b.pg_bin_dir = dir,
                None => {
                    b.pg_bin_dir = PathBuf::from("/usr/lib/postgresql/15/bin");
                    eprintln!(
                        "warning: PostgreSQL 15 not found (install postgresql-15, or set PG_BIN or binaries.pg_bin_dir)"
                    );
                }
            }
        } else if !b.pg_bin_dir.join("postgres").is_file() {
            eprintln!(
                "warning: PostgreSQL not found: {} does not exist",
                b.pg_bin_dir.join("postgres").display()
            );
        }
        Ok(env)
    }

    /// The `postgres` executable.
    pub fn postgres_binary(&self) -> PathBuf {
        self.binaries.pg_bin_dir.join("postgres")
    }

    /// Fails clearly when PostgreSQL is not where the config says.
    pub fn check_postgres(&self, repo: &Path) -> anyhow::Result<()> {
        let postgres = self.postgres_binary();
        if !postgres.is_file() {
            bail!(
                "PostgreSQL not found: {} does not exist (install postgresql-15, or set binaries.pg_bin_dir in {})",
                postgres.display(),
                repo.join(CONFIG_FILE).display()
            );
        }
        Ok(())
    }

    /// Reads the config of the repository at `repo`.
    pub fn load(repo: &Path) -> anyhow::Result<Self> {
        let path = repo.join(CONFIG_FILE);
        if !path.exists() {
            bail!(
                "{} does not exist: create the repository with `neon_local init` first",
                path.display()
            );
        }
        let mut env: LocalEnv = daemon_utils::load_config(Some(&path))?;
        env.repo = repo.to_owned();
        if !repo.join(PRIVATE_KEY_FILE).exists() {
            // A repository from before authentication: it gets its keys
            // before anything is started with them.
            env.auth()?;
        }
        Ok(env)
    }

    /// The repository's key pair, to sign tokens with (read on first use).
    pub fn auth(&self) -> anyhow::Result<std::sync::Arc<RepoAuth>> {
        if let Some(auth) = self.auth.get() {
            return Ok(auth.clone());
        }
        let auth = std::sync::Arc::new(RepoAuth::load(&self.repo)?);
        Ok(self.auth.get_or_init(|| auth).clone())
    }

    /// The token a daemon presents to others, signed when it starts.
    fn daemon_token(repo: &Path, scope: Scope) -> Option<DaemonToken> {
        Some(DaemonToken {
            repo: repo.to_owned(),
            claims: Claims::new(scope),
        })
    }

    /// `--auth-public-key <the repository's public key>`.
    fn auth_args(repo: &Path) -> [OsString; 2] {
        let key = std::path::absolute(repo.join(PUBLIC_KEY_FILE))
            .unwrap_or_else(|_| repo.join(PUBLIC_KEY_FILE));
        ["--auth-public-key".into(), key.into()]
    }

    /// Writes a new repository at `repo` holding only this config. Refuses
    /// to touch an initialised repository unless `force`, where the old one
    /// is removed whole (after checking that none of its daemons runs), and
    /// refuses a non-empty directory that is no repository. The repository
    /// is built in a temporary sibling directory and renamed into place, so
    /// a failure leaves nothing behind.
    pub fn write_new_repo(&self, repo: &Path, force: bool) -> anyhow::Result<()> {
        let config_path = repo.join(CONFIG_FILE);
        let replace = config_path.exists();
        if replace {
            if !force {
                bail!(
                    "{} already exists: the repository is initialized already (use --force to overwrite it)",
                    config_path.display()
                );
            }
            if let Some((pid, pid_file)) = find_running_pid_file(repo)? {
                bail!(
                    "cannot overwrite {}: a daemon is running (pid {pid}, {}); run `neon_local stop` first",
                    repo.display(),
                    pid_file.display()
                );
            }
        } else if repo.exists() {
            let mut entries = repo
                .read_dir()
                .with_context(|| format!("reading directory {}", repo.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} exists, is not empty and has no {CONFIG_FILE} file: refusing to use it as the repository",
                    repo.display()
                );
            }
        }

        let (Some(parent), Some(name)) = (repo.parent(), repo.file_name()) else {
            bail!("invalid repository path {}", repo.display());
        };
        let sibling = |tag: &str| {
            let mut file_name = OsString::from(".");
            file_name.push(name);
            file_name.push(format!(".{tag}-{}", std::process::id()));
            parent.join(file_name)
        };
        let tmp = sibling("init");
        let text = format!(
            "# neon_local repository configuration, written by `neon_local init`.\n\n{}",
            toml::to_string_pretty(self).context("serializing the configuration")?
        );
        let built = std::fs::create_dir(&tmp)
            .with_context(|| format!("creating directory {}", tmp.display()))
            .and_then(|()| {
                std::fs::write(tmp.join(CONFIG_FILE), text)
                    .with_context(|| format!("writing {}", tmp.join(CONFIG_FILE).display()))
            })
            .and_then(|()| write_key_pair(&tmp));
        if let Err(err) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(err);
        }

        let old = sibling("old");
        if replace {
            if let Err(err) = std::fs::rename(repo, &old) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(err)
                    .with_context(|| format!("moving the old repository {} away", repo.display()));
            }
        }
        if let Err(err) = std::fs::rename(&tmp, repo) {
            let _ = std::fs::remove_dir_all(&tmp);
            if replace {
                let _ = std::fs::rename(&old, repo);
            }
            return Err(err).with_context(|| format!("creating {}", repo.display()));
        }
        if replace {
            std::fs::remove_dir_all(&old).with_context(|| {
                format!("removing the old repository, moved to {}", old.display())
            })?;
        }
        Ok(())
    }

    /// The remote storage setting the daemons get (an inline TOML table).
    pub fn remote_storage_toml(&self, repo: &Path) -> String {
        match &self.remote_storage {
            Some(text) => text.clone(),
            None => {
                let dir = std::path::absolute(repo.join("remote_storage"))
                    .unwrap_or_else(|_| repo.join("remote_storage"));
                let quoted = toml::Value::String(dir.to_string_lossy().into_owned()).to_string();
                format!("{{ local_path = {quoted} }}")
            }
        }
    }

    pub fn broker_daemon(&self, repo: &Path) -> Daemon {
        Daemon {
            name: "storage_broker".into(),
            description: format!("neon broker at {}", self.broker.listen_addr),
            service: "storage_broker",
            binary: self.binaries.storage_broker.clone(),
            args: [
                vec![
                    "--listen-addr".into(),
                    self.broker.listen_addr.clone().into(),
                ],
                Self::auth_args(repo).to_vec(),
            ]
            .concat(),
            dir: repo.join("storage_broker"),
            http_addr: self.broker.listen_addr.clone(),
            announce: true,
            token: None,
        }
    }

    pub fn pageserver_daemon(&self, repo: &Path) -> Daemon {
        let ps = &self.pageserver;
        let dir = repo.join(format!("pageserver_{}", ps.id));
        Daemon {
            name: "pageserver".into(),
            description: format!(
                "pageserver node {} at '{}' in {:?}",
                ps.id,
                ps.listen_pg_addr,
                repo_name(repo)
            ),
            service: "pageserver",
            binary: self.binaries.pageserver.clone(),
            args: vec![
                "--id".into(),
                ps.id.to_string().into(),
                "--workdir".into(),
                dir.clone().into(),
                "--listen-pg".into(),
                ps.listen_pg_addr.clone().into(),
                "--listen-http".into(),
                ps.listen_http_addr.clone().into(),
                "--broker-endpoint".into(),
                self.broker.listen_addr.clone().into(),
                "--pg-bin-dir".into(),
                self.binaries.pg_bin_dir.clone().into(),
                "--remote-storage".into(),
                self.remote_storage_toml(repo).into(),
            ]
            .into_iter()
            .chain(Self::auth_args(repo))
            .collect(),
            dir,
            http_addr: ps.listen_http_addr.clone(),
            announce: true,
            token: Self::daemon_token(repo, Scope::Pageserver),
        }
    }

    pub fn safekeeper_daemon(&self, repo: &Path, sk: &SafekeeperConf) -> Daemon {
        let dir = repo.join("safekeepers").join(format!("sk{}", sk.id));
        Daemon {
            name: format!("safekeeper {}", sk.id),
            description: format!(
                "safekeeper at '{}' in '{}'",
                sk.listen_pg_addr,
                Path::new(&repo_name(repo))
                    .join("safekeepers")
                    .join(format!("sk{}", sk.id))
                    .display()
            ),
            service: "safekeeper",
            binary: self.binaries.safekeeper.clone(),
            args: vec![
                "--id".into(),
                sk.id.to_string().into(),
                "--datadir".into(),
                dir.clone().into(),
                "--listen-pg".into(),
                sk.listen_pg_addr.clone().into(),
                "--listen-http".into(),
                sk.listen_http_addr.clone().into(),
                "--broker-endpoint".into(),
                self.broker.listen_addr.clone().into(),
                "--remote-storage".into(),
                self.remote_storage_toml(repo).into(),
            ]
            .into_iter()
            .chain(Self::auth_args(repo))
            .collect(),
            dir,
            http_addr: sk.listen_http_addr.clone(),
            announce: true,
            token: Self::daemon_token(repo, Scope::Safekeeper),
        }
    }

    /// The safekeeper with `id`, or all of them.
    pub fn safekeeper_daemons(
        &self,
        repo: &Path,
        id: Option<NodeId>,
    ) -> anyhow::Result<Vec<Daemon>> {
        let selected: Vec<Daemon> = self
            .safekeepers
            .iter()
            .filter(|sk| id.is_none_or(|id| sk.id == id))
            .map(|sk| self.safekeeper_daemon(repo, sk))
            .collect();
        if let (Some(id), true) = (id, selected.is_empty()) {
            let ids: Vec<String> = self
                .safekeepers
                .iter()
                .map(|sk| sk.id.to_string())
                .collect();
            bail!(
                "there is no safekeeper {id}; the configured ids are {}",
                ids.join(", ")
            );
        }
        Ok(selected)
    }

    /// The control-plane service: neon_local itself, `control-plane run`;
    /// `suspend_timeout` overrides `default_suspend_timeout` for this run.
    pub fn control_plane_daemon(&self, repo: &Path, suspend_timeout: Option<Timeout>) -> Daemon {
        let binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("neon_local"));
        let mut args: Vec<OsString> = vec![
            "--repo-dir".into(),
            repo.into(),
            "control-plane".into(),
            "run".into(),
        ];
        if let Some(timeout) = suspend_timeout {
            args.push("--suspend-timeout".into());
            args.push(timeout.to_string().into());
        }
        Daemon {
            name: "control_plane".into(),
            description: format!(
                "control plane at http://{}",
                self.control_plane.listen_http_addr
            ),
            service: "control_plane",
            binary,
            args,
            dir: repo.join("control_plane"),
            http_addr: self.control_plane.listen_http_addr.clone(),
            announce: true,
            token: None,
        }
    }

    pub fn proxy_daemon(&self, repo: &Path) -> Daemon {
        let p = &self.proxy;
        let mut args: Vec<OsString> = vec![
            "--listen-pg".into(),
            p.listen_pg_addr.clone().into(),
            "--listen-http".into(),
            p.listen_http_addr.clone().into(),
            "--control-plane-api".into(),
            format!("http://{}", self.control_plane.listen_http_addr).into(),
        ];
        if let Some(cert) = &p.tls_cert_path {
            args.push("--tls-cert".into());
            args.push(cert.into());
        }
        if let Some(key) = &p.tls_key_path {
            args.push("--tls-key".into());
            args.push(key.into());
        }
        if p.require_tls {
            args.push("--require-tls".into());
        }
        args.push("--listen-serverless".into());
        args.push(p.listen_serverless_addr.clone().into());
        if let Some(timeout) = p.serverless_statement_timeout {
            args.push("--serverless-statement-timeout".into());
            args.push(timeout.0.as_secs_f64().to_string().into());
        }
        args.extend(Self::auth_args(repo));
        Daemon {
            name: "proxy".into(),
            description: if p.listen_serverless_addr.is_empty() {
                format!("proxy at '{}'", p.listen_pg_addr)
            } else {
                format!(
                    "proxy at '{}' (SQL over HTTP and WebSocket at '{}')",
                    p.listen_pg_addr, p.listen_serverless_addr
                )
            },
            service: "proxy",
            binary: self.binaries.proxy.clone(),
            args,
            dir: repo.join("proxy"),
            http_addr: p.listen_http_addr.clone(),
            announce: true,
            token: Self::daemon_token(repo, Scope::Proxy),
        }
    }

    /// The storage daemons, in start order: broker, pageserver, safekeepers.
    pub fn storage_daemons(&self, repo: &Path) -> Vec<Daemon> {
        let mut daemons = vec![self.broker_daemon(repo), self.pageserver_daemon(repo)];
        daemons.extend(
            self.safekeepers
                .iter()
                .map(|sk| self.safekeeper_daemon(repo, sk)),
        );
        daemons
    }

    /// The daemons in front of the computes, in start order: the control
    /// plane, then the proxy that calls it.
    pub fn front_daemons(&self, repo: &Path, suspend_timeout: Option<Timeout>) -> Vec<Daemon> {
        vec![
            self.control_plane_daemon(repo, suspend_timeout),
            self.proxy_daemon(repo),
        ]
    }

    /// Every daemon, in start order.
    pub fn all_daemons(&self, repo: &Path) -> Vec<Daemon> {
        let mut daemons = self.storage_daemons(repo);
        daemons.extend(self.front_daemons(repo, None));
        daemons
    }
}

/// The repository as messages name it: `.neon` when it is `.neon` in the
/// current directory, else its path.
pub fn repo_name(repo: &Path) -> String {
    let cwd_repo = std::env::current_dir().map(|d| d.join(".neon"));
    if cwd_repo.is_ok_and(|d| d == repo) {
        ".neon".to_owned()
    } else {
        repo.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("neon_local_test_{tag}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generates_numbered_safekeepers() {
        let opts = InitOptions {
            num_safekeepers: Some(3),
            ..Default::default()
        };
        let env = LocalEnv::generate(&opts).unwrap();
        let addrs: Vec<_> = env
            .safekeepers
            .iter()
            .map(|sk| sk.listen_http_addr.as_str())
            .collect();
        assert_eq!(
            addrs,
            ["127.0.0.1:7676", "127.0.0.1:7677", "127.0.0.1:7678"]
        );
        assert_eq!(env.safekeepers[2].id, NodeId(3));
        assert!(env.binaries.pageserver.ends_with("pageserver"));
        let zero = InitOptions {
            num_safekeepers: Some(0),
            ..Default::default()
        };
        assert!(LocalEnv::generate(&zero).is_err());
    }

    #[test]
    fn init_writes_once_and_force_replaces() {
        let dir = temp_dir("init");
        let repo = dir.join(".neon");
        let env = LocalEnv::generate(&InitOptions::default()).unwrap();
        env.write_new_repo(&repo, false).unwrap();
        let loaded = LocalEnv::load(&repo).unwrap();
        assert_eq!(loaded.pageserver.listen_http_addr, "127.0.0.1:9898");
        assert_eq!(loaded.safekeepers.len(), 1);

        let err = env.write_new_repo(&repo, false).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        std::fs::write(repo.join("marker"), "").unwrap();
        env.write_new_repo(&repo, true).unwrap();
        assert!(!repo.join("marker").exists());
        // Nothing but the repository is left in the parent.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from(".neon")]);

        let other = dir.join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("data"), "").unwrap();
        let err = env.write_new_repo(&other, true).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn timeouts() {
        for (text, ms, shown) in [
            ("10s", 10_000, "10s"),
            ("5m", 300_000, "5m"),
            ("1h", 3_600_000, "1h"),
            ("300", 300_000, "5m"),
            ("250ms", 250, "250ms"),
            ("0", 0, "0"),
            ("90s", 90_000, "90s"),
        ] {
            let t: Timeout = text.parse().unwrap();
            assert_eq!(t.0, Duration::from_millis(ms), "{text}");
            assert_eq!(t.to_string(), shown);
        }
        for bad in ["", "s", "10x", "-1s", "1.5s"] {
            assert!(bad.parse::<Timeout>().is_err(), "{bad}");
        }
        assert_eq!("0".parse::<Timeout>().unwrap().as_option(), None);
        let env: LocalEnv = toml::from_str(
            "[control_plane]\ndefault_suspend_timeout = \"10s\"\n[proxy]\nlisten_pg_addr = \"127.0.0.1:6432\"\n",
        )
        .unwrap();
        assert_eq!(
            env.control_plane.default_suspend_timeout.0,
            Duration::from_secs(10)
        );
        assert_eq!(env.proxy.listen_http_addr, "127.0.0.1:7001");
        let env: LocalEnv =
            toml::from_str("[control_plane]\ndefault_suspend_timeout = 60\n").unwrap();
        assert_eq!(
            env.control_plane.default_suspend_timeout.0,
            Duration::from_secs(60)
        );
        let text = toml::to_string(&LocalEnv::default()).unwrap();
        assert!(text.contains("default_suspend_timeout = \"5m\""), "{text}");
    }

    #[test]
    fn load_requires_init() {
        let dir = temp_dir("load");
        let err = LocalEnv::load(&dir).unwrap_err().to_string();
        assert!(err.contains("neon_local init"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
