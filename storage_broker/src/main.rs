use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs};
use storage_broker::BrokerConf;

/// The storage broker: safekeepers publish each timeline's state, and
/// pageservers learn from it which safekeeper to follow.
///
/// Skeleton: only the HTTP management API (/v1/status, /metrics) is served
/// so far; the gRPC pub/sub service is not implemented yet. Stops on SIGTERM
/// or SIGINT.
#[derive(Parser, Debug)]
#[command(name = "storage_broker", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Listen address for HTTP (and gRPC, later) [default: 127.0.0.1:50051]
    #[arg(short = 'l', long = "listen-addr", value_name = "ADDR")]
    listen_addr: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        storage_broker::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut BrokerConf| apply_overrides!(conf, cli, listen_addr),
        storage_broker::run,
    )
}
