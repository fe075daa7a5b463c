use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use compute_ctl::ComputeCtlConf;
use daemon_utils::{apply_overrides, CommonArgs};

/// compute_ctl: runs and manages one stock PostgreSQL compute node.
///
/// Skeleton: without a spec it serves its HTTP API (/v1/status reports an
/// empty compute, /metrics). Starting a compute from a spec is not
/// implemented yet: with --spec it exits with an error. Stops on SIGTERM or
/// SIGINT.
#[derive(Parser, Debug)]
#[command(name = "compute_ctl", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// PostgreSQL data directory of the compute
    #[arg(short = 'D', long)]
    pgdata: Option<PathBuf>,
    /// Compute spec (JSON file) to start the compute from (not implemented yet)
    #[arg(short = 'c', long = "spec", value_name = "FILE")]
    spec_path: Option<PathBuf>,
    /// The postgres executable [default: postgres]
    #[arg(long)]
    pgbin: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:3080]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        compute_ctl::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut ComputeCtlConf| {
            apply_overrides!(conf, cli, pgbin, listen_http_addr);
            if cli.pgdata.is_some() {
                conf.pgdata = cli.pgdata;
            }
            if cli.spec_path.is_some() {
                conf.spec_path = cli.spec_path;
            }
        },
        compute_ctl::run,
    )
}
