use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs, ConnectionLimitArgs};
use pageserver::PageServerConf;
use utils::NodeId;

/// The pageserver: keeps every version of every page and serves pages and
/// base backups at any LSN.
///
/// Serves base backups and pages over libpq, ingests WAL from the
/// safekeepers, and a management API over HTTP. Stops on SIGTERM or SIGINT.
#[derive(Parser, Debug)]
#[command(name = "pageserver", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Node id of this pageserver [default: 1]
    #[arg(long)]
    id: Option<NodeId>,
    /// Working directory, created if missing [default: .]
    #[arg(short = 'D', long)]
    workdir: Option<PathBuf>,
    /// libpq address for the page service [default: 127.0.0.1:64000]
    #[arg(short = 'l', long = "listen-pg", value_name = "ADDR")]
    listen_pg_addr: Option<String>,
    /// HTTP management API address [default: 127.0.0.1:9898]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
    /// Storage broker to learn which safekeepers have each timeline's WAL
    #[arg(long, value_name = "ADDR")]
    broker_endpoint: Option<String>,
    /// Directory of PostgreSQL 15's binaries [default: /usr/lib/postgresql/15/bin]
    #[arg(long, value_name = "DIR")]
    pg_bin_dir: Option<PathBuf>,
    /// Object storage for layers, as an inline TOML table:
    /// '{ local_path = "DIR" }' or '{ bucket_name = "B", bucket_region = "R",
    /// prefix_in_bucket = "P", endpoint = "URL" }' [default: none]
    #[arg(long, value_name = "TOML", value_parser = remote_storage::RemoteStorageConfig::from_inline_toml)]
    remote_storage: Option<remote_storage::RemoteStorageConfig>,
    /// Verify callers' tokens with the Ed25519 public key(s) in this PEM
    /// file [default: none, nobody is asked]
    #[arg(long, value_name = "PATH")]
    auth_public_key: Option<PathBuf>,
    #[command(flatten)]
    limits: ConnectionLimitArgs,
    /// Seconds a session may be silent between queries, 0 for ever
    /// (pagestreams are not timed) [default: 600]
    #[arg(long = "idle-timeout", value_name = "SECONDS")]
    idle_timeout_seconds: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        pageserver::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut PageServerConf| {
            apply_overrides!(
                conf,
                cli,
                id,
                workdir,
                listen_pg_addr,
                listen_http_addr,
                pg_bin_dir,
                idle_timeout_seconds
            );
            apply_overrides!(
                conf,
                cli.limits,
                max_connections,
                max_unauthenticated_connections,
                startup_timeout_seconds
            );
            if cli.broker_endpoint.is_some() {
                conf.broker_endpoint = cli.broker_endpoint.clone();
            }
            if cli.auth_public_key.is_some() {
                conf.auth_public_key = cli.auth_public_key.clone();
            }
            if cli.remote_storage.is_some() {
                conf.remote_storage = cli.remote_storage.clone();
            }
        },
        pageserver::run,
    )
}
