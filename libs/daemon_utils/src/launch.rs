//! The life of a daemon process: logging, configuration, runtime, signals.

use std::fmt::Debug;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// Name and version of a daemon, for its logs, `/v1/status` and metrics.
/// Build it with [`service_info!`](crate::service_info).
#[derive(Clone, Copy, Debug)]
pub struct ServiceInfo {
    pub name: &'static str,
    pub version: &'static str,
}

/// Command-line flags every daemon has; `#[command(flatten)]` it.
#[derive(clap::Args, Debug)]
pub struct CommonArgs {
    /// Configuration file (TOML). Keys are the config field names; flags
    /// given on the command line override the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The connection limits of a daemon's libpq port (`pq_proto`'s
/// listener), with the config keys of the same names; `#[command(flatten)]`
/// it and apply it with `apply_overrides!(conf, cli.limits,
/// max_connections, max_unauthenticated_connections,
/// startup_timeout_seconds)`.
#[derive(clap::Args, Debug)]
pub struct ConnectionLimitArgs {
    /// Sessions at most (counted from the startup packet on); more are
    /// refused with 53300 [default: 1000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections still starting up (TLS, startup packet, authentication)
    /// at most; beyond, the oldest is closed [default: 100]
    #[arg(long, value_name = "N")]
    pub max_unauthenticated_connections: Option<usize>,
    /// Seconds a connection has to finish TLS, send its startup packet and
    /// authenticate [default: 30; the proxy's: 10]
    #[arg(long = "startup-timeout", value_name = "SECONDS")]
    pub startup_timeout_seconds: Option<f64>,
}

/// Logs to stderr, plain text with timestamps, filtered by `RUST_LOG`
/// (default `info`; invalid directives are ignored). Does nothing if a
/// subscriber is already installed.
pub fn init_tracing() {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A token cancelled on the first SIGTERM or SIGINT (logged). A second signal
/// exits the process at once, for when graceful shutdown hangs. Must be
/// called inside a tokio runtime.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!("received {name}, shutting down");
        cancel.cancel();
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        warn!("received a second signal ({name}) while shutting down, exiting now");
        std::process::exit(1);
    });
    Ok(token)
}

/// Runs a daemon from `main`: initialises logging, loads the config file (or
/// defaults), applies the command-line overrides, starts a tokio runtime and
/// runs `run(config, cancel)`, where `cancel` fires on SIGTERM/SIGINT.
/// Returns exit code 0 after a clean shutdown; on error logs it (with its
/// whole context chain, on one line) and returns 1.
pub fn launch<C, F, Fut>(
    service: ServiceInfo,
    config_path: Option<&Path>,
    apply_cli_overrides: impl FnOnce(&mut C),
    run: F,
) -> ExitCode
where
    C: DeserializeOwned + Default + Debug,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_tracing();
    let result = (|| {
        let mut config: C = crate::load_config(config_path)?;
        apply_cli_overrides(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("creating the tokio runtime")?;
        let result = runtime.block_on(async {
            let cancel = shutdown_on_signals()?;
            info!(
                "starting {} {} with {config:?}",
                service.name, service.version
            );
            run(config, cancel).await
        });
        // Do not wait forever for stuck blocking tasks.
        runtime.shutdown_timeout(Duration::from_secs(5));
        result
    })();
    match result {
        Ok(()) => {
            info!("{} shut down", service.name);
            ExitCode::SUCCESS
        }
        Err(err) => {
            error!("{} failed: {err:#}", service.name);
            ExitCode::FAILURE
        }
    }
}
