//! neon_local: the control plane for one machine. It keeps a repository
//! directory (`.neon` by default) holding its `config`, its `state.toml`
//! (default tenant, branch names), one directory per daemon and one per
//! compute endpoint; starts the daemons and endpoints as background
//! processes with a log and a pid file each, and stops them again.
//!
//! * [`local_env`]: the repository and its config;
//! * [`local_auth`]: the repository's key pair and the tokens it signs;
//! * [`daemon_process`]: daemons as child processes;
//! * [`state`]: default tenant and branch names;
//! * [`storage_clients`]: the pageserver's and safekeepers' HTTP APIs;
//! * [`tenants`]: `tenant` and `timeline` commands;
//! * [`endpoint`]: compute endpoints (compute_ctl and its postgres);
//! * [`roles`]: `role` commands, the login roles of tenants' databases;
//! * [`lock`]: file locks that make endpoint changes safe between the
//!   control-plane service and the CLI;
//! * [`wake_service`]: the control-plane service (`control-plane run`): the
//!   wake API the proxy calls, and scale to zero.

pub mod daemon_process;
pub mod endpoint;
pub mod local_auth;
pub mod local_env;
pub mod lock;
pub mod roles;
pub mod state;
pub mod status;
pub mod storage_clients;
pub mod tenants;
pub mod wake_service;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use daemon_process::{Daemon, StopMode};
use local_env::{InitOptions, LocalEnv};

/// Creates the repository at `repo`; returns what it wrote.
pub fn init(repo: &Path, opts: &InitOptions) -> anyhow::Result<LocalEnv> {
    let env = LocalEnv::generate(opts)?;
    env.write_new_repo(repo, opts.force)?;
    Ok(env)
}

/// Starts `daemons` in order, skipping those already running. If one fails,
/// stops the ones this call started, in reverse order, and returns the error.
pub fn start_daemons(daemons: &[Daemon], timeout: Duration) -> anyhow::Result<()> {
    for daemon in daemons {
        daemon.check_binary()?;
    }
    let mut started = Vec::new();
    for daemon in daemons {
        match daemon.start(timeout) {
            Ok(Some(child)) => started.push((daemon, child)),
            Ok(None) => {}
            Err(err) => {
                for (daemon, child) in started.into_iter().rev() {
                    if let Err(stop_err) = daemon.stop(Some(child), StopMode::Fast) {
                        eprintln!("error: {stop_err:#}");
                    }
                }
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Stops `daemons` in reverse order. Tries every one even after a failure,
/// and returns the first error.
pub fn stop_daemons(daemons: &[Daemon], mode: StopMode) -> anyhow::Result<()> {
    let mut first_error = None;
    for daemon in daemons.iter().rev() {
        if let Err(err) = daemon.stop(None, mode) {
            eprintln!("error: {err:#}");
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(err) => Err(err.context("some daemons could not be stopped")),
        None => Ok(()),
    }
}

/// Prints the status of each daemon; fails if any is not running and healthy.
pub fn status_daemons(daemons: &[Daemon]) -> anyhow::Result<()> {
    let mut down = Vec::new();
    for daemon in daemons {
        if !daemon
            .print_status()
            .with_context(|| format!("checking {}", daemon.name))?
        {
            down.push(daemon.name.as_str());
        }
    }
    if !down.is_empty() {
        bail!("not running or not answering: {}", down.join(", "));
    }
    Ok(())
}
