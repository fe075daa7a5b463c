//! A throwaway stock PostgreSQL 15 cluster for integration tests.
//!
//! The cluster lives in a fresh temporary directory, listens on TCP only
//! (127.0.0.1, a free port, no Unix socket), and is stopped and removed when
//! [`PgServer`] is dropped, also when a test panics. PostgreSQL refuses to run
//! as root, so when the tests run as root its commands run as the `postgres`
//! OS user through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs a PostgreSQL binary, as `postgres` if we are root.
fn pg_command(bin: &str, args: &[&str]) -> Output {
    let path = format!("{PG_BIN}/{bin}");
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

impl PgServer {
    /// initdb, add `conf` lines to postgresql.conf, replace pg_hba.conf with
    /// `hba` lines, start. The superuser is `postgres`.
    pub fn start(conf: &[&str], hba: &[&str]) -> PgServer {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pq_proto_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test directory");
        // From here on, Drop cleans up whatever happens.
        let server = PgServer {
            port: free_port(),
            dir,
        };
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&server.dir)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "chown test directory to postgres"
            );
        }
        let data = server.data();
        let data = data.to_str().expect("utf-8 path");
        let out = pg_command(
            "initdb",
            &[
                "-D",
                data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let mut settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = ''\nfsync = off\n",
            server.port
        );
        for line in conf {
            settings.push_str(line);
            settings.push('\n');
        }
        append(&server.data().join("postgresql.conf"), &settings);
        std::fs::write(server.data().join("pg_hba.conf"), hba.join("\n") + "\n")
            .expect("write pg_hba.conf");

        let log = server.dir.join("server.log");
        let out = pg_command(
            "pg_ctl",
            &[
                "start",
                "-D",
                data,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "60",
            ],
        );
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let data = self.data();
            pg_command(
                "pg_ctl",
                &[
                    "stop",
                    "-D",
                    data.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                ],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
