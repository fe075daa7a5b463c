use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use compute_ctl::lazy_fs::{self, FsArgs};
use utils::{Lsn, TenantId, TimelineId};

/// compute_fs: the lazy data directory of a compute.
///
/// Mounts PGDATA/base and PGDATA/global (FUSE) over the local store, which
/// holds the rest of a lazy base backup; relation blocks are read from the
/// pageserver at --lsn on first use. compute_ctl starts it; it prints
/// "compute_fs: mounted" when ready, and unmounts on SIGTERM, SIGINT or
/// when its standard input closes.
#[derive(Parser, Debug)]
#[command(name = "compute_fs", version)]
struct Cli {
    /// The compute's data directory (base/ and global/ are mounted)
    #[arg(long)]
    pgdata: PathBuf,
    /// The local store: base/, global/ and the base backup's relation sizes
    #[arg(long)]
    store: PathBuf,
    /// The pageserver's libpq address (host:port)
    #[arg(long)]
    pageserver: String,
    /// The user to connect to the pageserver as (its password, a token for
    /// the tenant, is read from NEON_AUTH_TOKEN when set)
    #[arg(long, default_value = "cloud_admin")]
    pageserver_user: String,
    #[arg(long)]
    tenant_id: TenantId,
    #[arg(long)]
    timeline_id: TimelineId,
    /// The LSN every page is read at (the compute's start)
    #[arg(long)]
    lsn: Lsn,
    /// Read pages as of the newest WAL the pageserver has ingested, at
    /// least --lsn (a primary, the only writer of its timeline)
    #[arg(long)]
    latest: bool,
    /// Owner of the files as postgres sees them [default: this process's]
    #[arg(long)]
    uid: Option<u32>,
    #[arg(long)]
    gid: Option<u32>,
    /// FUSE request threads per mount
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Connections to the pageserver
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    daemon_utils::init_tracing();
    let args = FsArgs {
        pgdata: cli.pgdata,
        store: cli.store,
        pageserver_addr: cli.pageserver,
        pageserver_user: cli.pageserver_user,
        tenant_id: cli.tenant_id,
        timeline_id: cli.timeline_id,
        lsn: cli.lsn,
        latest: cli.latest,
        token: auth::token_from_env(),
        uid: cli.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
        gid: cli.gid.unwrap_or_else(|| nix::unistd::getgid().as_raw()),
        threads: cli.threads,
        connections: cli.connections,
    };
    match lazy_fs::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("compute_fs failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
