//! Real PostgreSQL 15 clusters for the pageserver's integration tests.
//!
//! PostgreSQL refuses to run as root: when the tests run as root (CI does),
//! `initdb` and `pg_ctl` run as the `postgres` OS user through `runuser`,
//! and the data directories are owned by it. Servers listen on 127.0.0.1
//! on a free port, without a Unix socket, and are stopped when dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where PostgreSQL 15's binaries are (`PG_BIN_DIR` overrides).
pub fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PG_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    dir.join(name)
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command that runs PostgreSQL's binary `name` as a user that may run it.
pub fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        cmd
    } else {
        Command::new(pg_bin(name))
    }
}

pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Give `path` (recursively) to the postgres user when running as root.
pub fn give_to_postgres(path: &Path) -> anyhow::Result<()> {
    if is_root() {
        run(Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(path))?;
    }
    Ok(())
}

/// A temporary directory that the postgres user can use.
pub fn pg_tempdir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("pageserver-test-")
        .tempdir()?;
    give_to_postgres(dir.path())?;
    Ok(dir)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port on 127.0.0.1")
}

/// `initdb` a new cluster at `pgdata` (superuser `postgres`, trust auth).
pub fn initdb(pgdata: &Path) -> anyhow::Result<()> {
    run(pg_command("initdb").arg("-D").arg(pgdata).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]))?;
    Ok(())
}

/// Append settings to `postgresql.conf`.
pub fn configure(pgdata: &Path, settings: &[(&str, &str)]) -> anyhow::Result<()> {
    use std::io::Write;
    let path = pgdata.join("postgresql.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    for (k, v) in settings {
        writeln!(f, "{k} = {v}")?;
    }
    drop(f);
    give_to_postgres(&path)?;
    Ok(())
}

/// Extract a tar into a new data directory owned by postgres, mode 0700.
pub fn extract_tar(tar_bytes: &[u8], pgdata: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(pgdata)?;
    let mut archive = tar::Archive::new(tar_bytes);
    archive.set_preserve_permissions(true);
    archive
        .unpack(pgdata)
        .with_context(|| format!("extracting into {}", pgdata.display()))?;
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))?;
    give_to_postgres(pgdata)?;
    Ok(())
}

/// A running PostgreSQL server, stopped (immediately) when dropped.
pub struct PgServer {
    pub pgdata: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
}

impl PgServer {
    /// Start postgres on `pgdata` listening on a free port of 127.0.0.1.
    pub fn start(pgdata: &Path, log: &Path) -> anyhow::Result<PgServer> {
        let port = free_port();
        configure(
            pgdata,
            &[
                ("port", &port.to_string()),
                ("listen_addresses", "'127.0.0.1'"),
                ("unix_socket_directories", "''"),
            ],
        )?;
        if let Some(parent) = log.parent() {
            give_to_postgres(parent)?;
        }
        let mut server = PgServer {
            pgdata: pgdata.to_owned(),
            port,
            log: log.to_owned(),
            running: true,
        };
        let result = run(pg_command("pg_ctl")
            .arg("-D")
            .arg(pgdata)
            .arg("-l")
            .arg(log)
            .args(["-w", "-t", "60", "start"]));
        if let Err(e) = result {
            server.running = false;
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(e.context(format!("server log:\n{log}")));
        }
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.query("postgres", "select 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.context("server not ready")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Run SQL with psql, returning unaligned tuples-only output.
    pub fn query(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        use std::io::Write;
        use std::process::Stdio;
        // Through standard input, so that each statement runs on its own
        // (VACUUM cannot run in the transaction `-c` makes of several).
        let mut cmd = Command::new(pg_bin("psql"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                db,
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
        child
            .stdin
            .take()
            .context("psql's standard input")?
            .write_all(format!("{sql}\n;\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "psql on {db} failed ({}) running:\n{sql}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A clean (fast) shutdown.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.running = false;
        run(pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-w", "-t", "60", "-m", "fast", "stop"]))?;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .output();
        }
    }
}
