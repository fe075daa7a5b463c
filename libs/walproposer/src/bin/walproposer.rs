//! A small CLI over the walproposer library, for tests and operators.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use utils::{Lsn, TenantId, TimelineId};
use walproposer::driver::{self, PostgresSource, WalproposerConfig};
use walproposer::pump::PumpLimits;

/// Elect a term among the safekeepers and sync them, or stream a compute's
/// WAL to them. A token for the tenant (when the safekeepers ask for one)
/// is read from NEON_AUTH_TOKEN.
#[derive(Parser)]
#[command(name = "walproposer", version)]
struct Cli {
    /// Safekeeper libpq addresses, comma separated (host:port,...)
    #[arg(long, value_delimiter = ',', required = true)]
    safekeepers: Vec<String>,
    #[arg(long)]
    tenant_id: TenantId,
    #[arg(long)]
    timeline_id: TimelineId,
    /// PG_VERSION_NUM of the compute
    #[arg(long, default_value_t = 150000)]
    pg_version: u32,
    /// WAL segment size in bytes
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    wal_seg_size: u32,
    /// WAL kept in memory at most, in bytes; reading from PostgreSQL pauses
    /// while the buffer is full [default: 64 MiB]
    #[arg(long)]
    max_buffered_bytes: Option<usize>,
    /// Hold commits back while the pageserver lags the commit LSN by more
    /// than this many bytes; 0 turns backpressure off [default: 256 MiB]
    #[arg(long)]
    max_pageserver_lag_bytes: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a quorum to the most advanced log; print the commit LSN.
    Sync,
    /// Stream PostgreSQL's WAL from START_LSN until SIGTERM or a newer proposer.
    Stream {
        /// PostgreSQL address (host:port)
        #[arg(long)]
        postgres: String,
        #[arg(long, default_value = "cloud_admin")]
        user: String,
        #[arg(long, default_value = "walproposer")]
        slot: String,
        #[arg(long)]
        start_lsn: Lsn,
    },
}

/// Large allocations (the WAL chunks, up to 128 KiB each) get their own
/// mappings, returned to the system when freed. By default glibc raises
/// this threshold after the first large free, and chunks then come from
/// the heap, whose freed holes stay resident: the process's memory would
/// grow well past the WAL buffer's byte limit under a long bulk load.
fn keep_large_allocations_mapped() {
    const THRESHOLD: libc::c_int = 64 * 1024;
    // SAFETY: mallopt only sets an allocator parameter; it is called
    // before any other thread exists.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
    if set != 1 {
        eprintln!(
            "walproposer: could not set M_MMAP_THRESHOLD; memory may exceed the buffer limit"
        );
    }
}

fn main() -> ExitCode {
    keep_large_allocations_mapped();
    let cli = Cli::parse();
    daemon_utils::init_tracing();
    let config = WalproposerConfig {
        safekeepers: cli.safekeepers,
        tenant_id: cli.tenant_id,
        timeline_id: cli.timeline_id,
        pg_version: cli.pg_version,
        system_id: 0,
        wal_seg_size: cli.wal_seg_size,
        limits: PumpLimits {
            max_buffered: cli
                .max_buffered_bytes
                .unwrap_or(PumpLimits::default().max_buffered),
            ..PumpLimits::default()
        },
        max_pageserver_lag: walproposer::backpressure::max_lag_from_setting(
            cli.max_pageserver_lag_bytes,
        ),
        auth_token: auth::token_from_env(),
    };
    if config.limits.max_buffered < 1024 * 1024 {
        eprintln!("error: --max-buffered-bytes must be at least 1 MiB (1048576)");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: creating the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let cancel = daemon_utils::shutdown_on_signals()?;
        match cli.command {
            Command::Sync => {
                let lsn = driver::sync_safekeepers(config, cancel).await?;
                println!("{lsn}");
                Ok(())
            }
            Command::Stream {
                postgres,
                user,
                slot,
                start_lsn,
            } => {
                let source = PostgresSource {
                    address: postgres,
                    user,
                    slot,
                };
                let (status, _) = tokio::sync::watch::channel(Default::default());
                driver::stream(config, source, start_lsn, status, cancel).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
