use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs};
use storage_broker::BrokerConf;

/// The storage broker: safekeepers publish each timeline's state, and
/// pageservers learn from it which safekeeper to follow.
///
/// Serves the gRPC service storage_broker.BrokerService, gRPC health, and
/// the HTTP management API (/v1/status, /metrics) on one address. Stops on
/// SIGTERM or SIGINT.
#[derive(Parser, Debug)]
#[command(name = "storage_broker", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Listen address for gRPC and HTTP [default: 127.0.0.1:50051]
    #[arg(short = 'l', long = "listen-addr", value_name = "ADDR")]
    listen_addr: Option<String>,
    /// Publish and subscribe streams served at once [default: 10000]
    #[arg(long, value_name = "N")]
    max_concurrent_streams: Option<usize>,
    /// Verify callers' tokens with the Ed25519 public key(s) in this PEM
    /// file [default: none, nobody is asked]
    #[arg(long, value_name = "PATH")]
    auth_public_key: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        storage_broker::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut BrokerConf| {
            apply_overrides!(conf, cli, listen_addr, max_concurrent_streams);
            if cli.auth_public_key.is_some() {
                conf.auth_public_key = cli.auth_public_key.clone();
            }
        },
        storage_broker::run,
    )
}
