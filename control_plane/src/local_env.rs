//! The repository directory and its `config` file.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use utils::NodeId;

use crate::background_process::{find_running_pid_file, Daemon};

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
    pub binaries: Binaries,
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
        daemon_utils::load_config(Some(&path))
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
            });
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

    pub fn broker_daemon(&self, repo: &Path) -> Daemon {
        Daemon {
            name: "storage_broker".into(),
            service: "storage_broker",
            binary: self.binaries.storage_broker.clone(),
            args: vec![
                "--listen-addr".into(),
                self.broker.listen_addr.clone().into(),
            ],
            dir: repo.join("storage_broker"),
            http_addr: self.broker.listen_addr.clone(),
            announce: true,
        }
    }

    pub fn pageserver_daemon(&self, repo: &Path) -> Daemon {
        let ps = &self.pageserver;
        let dir = repo.join(format!("pageserver_{}", ps.id));
        Daemon {
            name: format!("pageserver {}", ps.id),
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
            ],
            dir,
            http_addr: ps.listen_http_addr.clone(),
            announce: true,
        }
    }

    pub fn safekeeper_daemon(&self, repo: &Path, sk: &SafekeeperConf) -> Daemon {
        let dir = repo.join("safekeepers").join(format!("sk{}", sk.id));
        Daemon {
            name: format!("safekeeper {}", sk.id),
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
            ],
            dir,
            http_addr: sk.listen_http_addr.clone(),
            announce: true,
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

    /// Every daemon, in start order.
    pub fn all_daemons(&self, repo: &Path) -> Vec<Daemon> {
        let mut daemons = vec![self.broker_daemon(repo), self.pageserver_daemon(repo)];
        daemons.extend(
            self.safekeepers
                .iter()
                .map(|sk| self.safekeeper_daemon(repo, sk)),
        );
        daemons
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
    fn load_requires_init() {
        let dir = temp_dir("load");
        let err = LocalEnv::load(&dir).unwrap_err().to_string();
        assert!(err.contains("neon_local init"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
