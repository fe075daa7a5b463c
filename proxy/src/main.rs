use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use daemon_utils::{apply_overrides, CommonArgs, ConnectionLimitArgs};
use proxy::ProxyConf;

/// The proxy: the PostgreSQL-protocol entry point that wakes computes on
/// demand and forwards client connections to them.
///
/// A client names its endpoint in the startup options (`endpoint=NAME` or
/// `branch=NAME`, also as `-c endpoint=NAME`), or by the first label of
/// its TLS SNI name; with neither it gets the default branch. The proxy
/// asks the control plane to wake that compute and then relays the
/// connection; authentication passes through to PostgreSQL, and the
/// superuser (cloud_admin) is always refused. The wake API is called with
/// the token in NEON_AUTH_TOKEN. The serverless listener takes the same
/// clients over HTTP (POST /sql, in the shape of Neon's serverless driver)
/// and WebSocket. Stops on SIGTERM or SIGINT.
#[derive(Parser, Debug)]
#[command(name = "proxy", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// PostgreSQL protocol address for clients [default: 127.0.0.1:5432]
    #[arg(long = "listen-pg", value_name = "ADDR")]
    listen_pg_addr: Option<String>,
    /// HTTP management API address [default: 127.0.0.1:7001]
    #[arg(long = "listen-http", value_name = "ADDR")]
    listen_http_addr: Option<String>,
    /// The control plane's API URL [default: http://127.0.0.1:1234]
    #[arg(long = "control-plane-api", value_name = "URL")]
    control_plane_api: Option<String>,
    /// TLS certificate chain (PEM); TLS is on when this and --tls-key are given
    #[arg(long = "tls-cert", value_name = "FILE")]
    tls_cert_path: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long = "tls-key", value_name = "FILE")]
    tls_key_path: Option<PathBuf>,
    /// Refuse clients that do not use TLS (needs --tls-cert and --tls-key)
    #[arg(long)]
    require_tls: bool,
    /// Verify tokens on the management API (/metrics needs admin) with the
    /// Ed25519 public key(s) in this PEM file [default: none]
    #[arg(long, value_name = "PATH")]
    auth_public_key: Option<PathBuf>,
    /// Address for SQL over HTTP (POST /sql) and WebSocket clients, such as
    /// Neon's serverless driver; empty for none [default: 127.0.0.1:4444]
    #[arg(long = "listen-serverless", value_name = "ADDR")]
    listen_serverless_addr: Option<String>,
    /// Seconds a statement of POST /sql may run [default: 30]
    #[arg(long = "serverless-statement-timeout", value_name = "SECONDS")]
    serverless_statement_timeout_seconds: Option<f64>,
    /// Seconds to wait for a compute to wake [default: 120]
    #[arg(long = "wake-timeout", value_name = "SECONDS")]
    wake_timeout_seconds: Option<f64>,
    #[command(flatten)]
    limits: ConnectionLimitArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::launch(
        proxy::SERVICE,
        cli.common.config.as_deref(),
        |conf: &mut ProxyConf| {
            apply_overrides!(
                conf,
                cli,
                listen_pg_addr,
                listen_http_addr,
                control_plane_api,
                wake_timeout_seconds,
            );
            apply_overrides!(
                conf,
                cli.limits,
                max_connections,
                max_unauthenticated_connections,
                startup_timeout_seconds
            );
            if cli.tls_cert_path.is_some() {
                conf.tls_cert_path = cli.tls_cert_path;
            }
            if cli.tls_key_path.is_some() {
                conf.tls_key_path = cli.tls_key_path;
            }
            if cli.require_tls {
                conf.require_tls = true;
            }
            if let Some(addr) = cli.listen_serverless_addr {
                conf.serverless.listen_addr = addr;
            }
            if let Some(seconds) = cli.serverless_statement_timeout_seconds {
                conf.serverless.statement_timeout_seconds = seconds;
            }
            if cli.auth_public_key.is_some() {
                conf.auth_public_key = cli.auth_public_key;
            }
        },
        proxy::run,
    )
}
