use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs};
use pageserver::PageServerConf;
use utils::NodeId;

/// The pageserver: keeps every version of every page and serves pages and
/// base backups at any LSN.
///
/// Skeleton: only the HTTP management API (/v1/status, /metrics) is served
/// so far; the libpq page service is not implemented yet. Stops on SIGTERM
/// or SIGINT.
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
    /// libpq address for the page service (not served yet) [default: 127.0.0.1:64000]
    #[arg(short = 'l', long = "listen-pg", value_name = "ADDR")]
    listen_pg_addr: Option<String>,
    /// HTTP management API address [default: 127.0.0.1:9898]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        pageserver::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut PageServerConf| {
            apply_overrides!(conf, cli, id, workdir, listen_pg_addr, listen_http_addr)
        },
        pageserver::run,
    )
}
