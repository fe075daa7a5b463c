use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs};
use safekeeper::SafeKeeperConf;
use utils::NodeId;

/// The safekeeper: one acceptor of the quorum-replicated WAL service.
///
/// Skeleton: only the HTTP management API (/v1/status, /metrics) is served
/// so far; the WAL service (libpq) is not implemented yet. Stops on SIGTERM
/// or SIGINT.
#[derive(Parser, Debug)]
#[command(name = "safekeeper", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Node id of this safekeeper, unique in the cluster [default: 1]
    #[arg(long)]
    id: Option<NodeId>,
    /// Data directory, created if missing [default: .]
    #[arg(short = 'D', long)]
    datadir: Option<PathBuf>,
    /// libpq address for the WAL service (not served yet) [default: 127.0.0.1:5454]
    #[arg(short = 'l', long = "listen-pg", value_name = "ADDR")]
    listen_pg_addr: Option<String>,
    /// HTTP management API address [default: 127.0.0.1:7676]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        safekeeper::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut SafeKeeperConf| {
            apply_overrides!(conf, cli, id, datadir, listen_pg_addr, listen_http_addr)
        },
        safekeeper::run,
    )
}
