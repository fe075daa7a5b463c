use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use compute_ctl::ComputeCtlConf;
use daemon_utils::{apply_overrides, CommonArgs};

/// compute_ctl: runs and manages one stock PostgreSQL compute node.
///
/// Given a spec (--spec FILE, fetched from --control-plane-uri, or later
/// POST /configure) it syncs the
/// safekeepers, fetches a base backup from the pageserver into a fresh
/// PGDATA, starts postgres (as the postgres OS user when run as root), runs
/// the walproposer, and applies the spec's roles and databases. HTTP API:
/// GET /status, POST /configure, POST /terminate, GET /metrics. Stops
/// postgres and exits on SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "compute_ctl", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// PostgreSQL data directory of the compute (emptied on every start)
    /// [default: ./pgdata]
    #[arg(short = 'D', long)]
    pgdata: Option<PathBuf>,
    /// Compute spec (JSON file) to start the compute from
    #[arg(short = 'c', long = "spec", value_name = "FILE")]
    spec_path: Option<PathBuf>,
    /// Without --spec: fetch the spec from this control plane
    /// (GET <URI>/v1/computes/<compute-id>/spec) with the token in
    /// NEON_AUTH_TOKEN; the W3C trace context in TRACEPARENT is passed on
    /// and logged with every line of the start
    #[arg(long, value_name = "URI")]
    control_plane_uri: Option<String>,
    /// This compute's id at the control plane
    #[arg(long, value_name = "ID")]
    compute_id: Option<String>,
    /// The postgres executable [default: found in /usr/lib/postgresql/15/bin,
    /// pg_config --bindir or PATH]
    #[arg(short = 'b', long)]
    pgbin: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:3080]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
    /// OS user postgres runs as when compute_ctl is root [default: postgres]
    #[arg(long)]
    pg_os_user: Option<String>,
    /// Verify callers of the HTTP API with the Ed25519 public key(s) in this
    /// PEM file: they need a compute (or admin) token [default: none,
    /// nobody is asked]
    #[arg(long, value_name = "PATH")]
    auth_public_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        compute_ctl::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut ComputeCtlConf| {
            apply_overrides!(conf, cli, pgdata, pgbin, listen_http_addr);
            if cli.spec_path.is_some() {
                conf.spec_path = cli.spec_path;
            }
            if cli.control_plane_uri.is_some() {
                conf.control_plane_uri = cli.control_plane_uri;
            }
            if cli.compute_id.is_some() {
                conf.compute_id = cli.compute_id;
            }
            if cli.pg_os_user.is_some() {
                conf.pg_os_user = cli.pg_os_user;
            }
            if cli.auth_public_key.is_some() {
                conf.auth_public_key = cli.auth_public_key;
            }
        },
        compute_ctl::run,
    )
}
