use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs, ConnectionLimitArgs};
use remote_storage::RemoteStorageConfig;
use safekeeper::SafeKeeperConf;
use utils::NodeId;

/// The safekeeper: one acceptor of the quorum-replicated WAL service.
///
/// Serves the WAL service (libpq) and the HTTP management API; offloads full
/// WAL segments to remote storage when it is configured. Stops on SIGTERM or
/// SIGINT.
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
    /// libpq address for the WAL service [default: 127.0.0.1:5454]
    #[arg(short = 'l', long = "listen-pg", value_name = "ADDR")]
    listen_pg_addr: Option<String>,
    /// HTTP management API address [default: 127.0.0.1:7676]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
    /// Storage broker to publish active timelines to, host:port or
    /// http://host:port [default: none, timelines are not published]
    #[arg(long = "broker-endpoint", value_name = "ENDPOINT")]
    broker_endpoint: Option<String>,
    /// libpq address published to the broker for pageservers
    /// [default: the --listen-pg address]
    #[arg(long = "advertise-pg", value_name = "ADDR")]
    advertise_pg_addr: Option<String>,
    /// HTTP address published to the broker [default: the --listen-http address]
    #[arg(long = "advertise-http", value_name = "ADDR")]
    advertise_http_addr: Option<String>,
    /// Remote storage to offload full WAL segments to, as a TOML inline
    /// table: '{ local_path = "/x" }' or '{ bucket_name = "b", bucket_region
    /// = "r", prefix_in_bucket = "p", endpoint = "http://..." }'
    /// [default: none, WAL stays local and is never removed]
    #[arg(long = "remote-storage", value_name = "TOML", value_parser = safekeeper::parse_remote_storage)]
    remote_storage: Option<RemoteStorageConfig>,
    /// For tests only: acknowledge WAL no faster than this many bytes a
    /// second, as a slow disk would [default: full speed]
    #[arg(long = "testing-wal-write-rate", value_name = "BYTES_PER_SEC",
          value_parser = clap::value_parser!(u64).range(1..))]
    testing_wal_write_bytes_per_second: Option<u64>,
    /// Verify callers' tokens with the Ed25519 public key(s) in this PEM
    /// file [default: none, nobody is asked]
    #[arg(long, value_name = "PATH")]
    auth_public_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    limits: ConnectionLimitArgs,
    /// Seconds a session may be silent between queries, 0 for ever
    /// (streams are not timed) [default: 600]
    #[arg(long = "idle-timeout", value_name = "SECONDS")]
    idle_timeout_seconds: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        safekeeper::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut SafeKeeperConf| {
            apply_overrides!(
                conf,
                cli,
                id,
                datadir,
                listen_pg_addr,
                listen_http_addr,
                idle_timeout_seconds
            );
            apply_overrides!(
                conf,
                cli.limits,
                max_connections,
                max_unauthenticated_connections,
                startup_timeout_seconds
            );
            if cli.testing_wal_write_bytes_per_second.is_some() {
                conf.testing_wal_write_bytes_per_second = cli.testing_wal_write_bytes_per_second;
            }
            if cli.remote_storage.is_some() {
                conf.remote_storage = cli.remote_storage;
            }
            if cli.auth_public_key.is_some() {
                conf.auth_public_key = cli.auth_public_key;
            }
            for (value, field) in [
                (cli.broker_endpoint, &mut conf.broker_endpoint),
                (cli.advertise_pg_addr, &mut conf.advertise_pg_addr),
                (cli.advertise_http_addr, &mut conf.advertise_http_addr),
            ] {
                if value.is_some() {
                    *field = value;
                }
            }
        },
        safekeeper::run,
    )
}
