use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs};
use proxy::ProxyConf;

/// The proxy: the PostgreSQL-protocol entry point that wakes computes on
/// demand and forwards client connections to them.
///
/// Skeleton: only the HTTP management API (/v1/status, /metrics) is served
/// so far; client connections are not accepted yet. Stops on SIGTERM or
/// SIGINT.
#[derive(Parser, Debug)]
#[command(name = "proxy", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// PostgreSQL protocol address for clients (not served yet) [default: 127.0.0.1:5432]
    #[arg(long = "listen-pg", value_name = "ADDR")]
    listen_pg_addr: Option<String>,
    /// HTTP management API address [default: 127.0.0.1:7001]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        proxy::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut ProxyConf| apply_overrides!(conf, cli, listen_pg_addr, listen_http_addr),
        proxy::run,
    )
}
