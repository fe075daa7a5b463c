use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use control_plane::background_process::StopMode;
use control_plane::local_env::{InitOptions, LocalEnv};
use utils::{Lsn, NodeId, TenantId, TimelineId};

/// neon_local: runs the whole system on one machine.
///
/// Keeps a repository directory (by default .neon in the current directory)
/// with its config and a directory per daemon holding the daemon's log and
/// pid file, and starts and stops the storage broker, pageserver and
/// safekeepers as background processes. Tenant, timeline and endpoint
/// commands are not implemented yet.
#[derive(Parser, Debug)]
#[command(name = "neon_local", version)]
struct Cli {
    /// Repository directory (the .neon directory itself)
    #[arg(
        long,
        global = true,
        env = "NEON_REPO_DIR",
        default_value = ".neon",
        value_name = "DIR"
    )]
    repo_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the repository: its config (ports, number of safekeepers, paths
    /// of the daemon binaries found next to neon_local)
    Init {
        /// Number of safekeepers [default: 1, or as many as --config lists]
        #[arg(long)]
        num_safekeepers: Option<u16>,
        /// Initial configuration (TOML, the format of the repository's
        /// config); keys left out get the defaults
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Replace an existing repository (all its data) if none of its
        /// daemons runs
        #[arg(long)]
        force: bool,
    },
    /// Start the storage broker, pageserver and safekeepers
    Start(StartArgs),
    /// Stop every daemon
    Stop(StopArgs),
    /// Manage tenants (not implemented yet)
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage timelines and branches (not implemented yet)
    #[command(subcommand)]
    Timeline(TimelineCmd),
    /// Manage compute endpoints (not implemented yet)
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Start, stop or check the pageserver
    #[command(subcommand)]
    Pageserver(DaemonCmd),
    /// Start, stop or check safekeepers
    #[command(subcommand)]
    Safekeeper(SafekeeperCmd),
    /// Start, stop or check the storage broker
    #[command(subcommand, name = "storage_broker", alias = "storage-broker")]
    StorageBroker(DaemonCmd),
}

#[derive(clap::Args, Debug)]
struct StartArgs {
    /// Seconds to wait for each daemon to answer on its HTTP API
    #[arg(long, default_value_t = 15)]
    timeout: u64,
}

impl StartArgs {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[derive(clap::Args, Debug)]
struct StopArgs {
    /// fast: SIGTERM, then SIGKILL after 10 s; immediate: SIGKILL
    #[arg(short = 'm', long, value_enum, default_value = "fast")]
    stop_mode: StopMode,
}

#[derive(Subcommand, Debug)]
enum DaemonCmd {
    /// Start it in the background
    Start(StartArgs),
    /// Stop it
    Stop(StopArgs),
    /// Tell whether it runs and answers; fails if not
    Status,
}

#[derive(Subcommand, Debug)]
enum SafekeeperCmd {
    /// Start one safekeeper, or all
    Start {
        /// Safekeeper id [default: all]
        id: Option<NodeId>,
        #[command(flatten)]
        args: StartArgs,
    },
    /// Stop one safekeeper, or all
    Stop {
        /// Safekeeper id [default: all]
        id: Option<NodeId>,
        #[command(flatten)]
        args: StopArgs,
    },
    /// Tell whether safekeepers run and answer; fails if one does not
    Status {
        /// Safekeeper id [default: all]
        id: Option<NodeId>,
    },
}

// The arguments of the commands below are parsed (and so validated) but not
// used until the commands are implemented.
#[allow(dead_code)]
#[derive(Subcommand, Debug)]
enum TenantCmd {
    /// Create a tenant with its initial timeline
    Create {
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long)]
        timeline_id: Option<TimelineId>,
        /// Use this tenant when commands do not name one
        #[arg(long)]
        set_default: bool,
    },
    /// List tenants
    List,
}

#[allow(dead_code)]
#[derive(Subcommand, Debug)]
enum TimelineCmd {
    /// Create a branch from another branch, at its end or at an LSN
    Branch {
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long)]
        branch_name: String,
        #[arg(long, default_value = "main")]
        ancestor_branch_name: String,
        #[arg(long)]
        ancestor_start_lsn: Option<Lsn>,
    },
    /// Create a timeline without ancestor
    Create {
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long)]
        timeline_id: Option<TimelineId>,
        #[arg(long)]
        branch_name: String,
    },
    /// List timelines as a tree
    List {
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
}

#[allow(dead_code)]
#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// Create a compute endpoint on a branch
    Create {
        endpoint_id: String,
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long, default_value = "main")]
        branch_name: String,
        #[arg(long)]
        pg_port: Option<u16>,
        #[arg(long)]
        http_port: Option<u16>,
    },
    /// Start an endpoint's compute
    Start { endpoint_id: String },
    /// Stop an endpoint's compute
    Stop {
        endpoint_id: String,
        /// Also delete the endpoint
        #[arg(long)]
        destroy: bool,
    },
    /// List endpoints
    List {
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn not_implemented(command: &str) -> anyhow::Error {
    anyhow::anyhow!("'{command}' is not implemented yet")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let repo = std::path::absolute(&cli.repo_dir)
        .with_context(|| format!("resolving {}", cli.repo_dir.display()))?;
    let env = || LocalEnv::load(&repo);
    match cli.command {
        Command::Init {
            num_safekeepers,
            config,
            force,
        } => {
            let opts = InitOptions {
                num_safekeepers,
                config,
                force,
            };
            let env = control_plane::init(&repo, &opts)?;
            println!(
                "Initialized the neon_local repository in {}",
                repo.display()
            );
            for daemon in env.all_daemons(&repo) {
                println!("  {}: http://{}", daemon.name, daemon.http_addr);
            }
            Ok(())
        }
        Command::Start(args) => {
            control_plane::start_daemons(&env()?.all_daemons(&repo), args.timeout())
        }
        Command::Stop(args) => {
            control_plane::stop_daemons(&env()?.all_daemons(&repo), args.stop_mode)
        }
        Command::Tenant(cmd) => Err(not_implemented(match cmd {
            TenantCmd::Create { .. } => "tenant create",
            TenantCmd::List => "tenant list",
        })),
        Command::Timeline(cmd) => Err(not_implemented(match cmd {
            TimelineCmd::Branch { .. } => "timeline branch",
            TimelineCmd::Create { .. } => "timeline create",
            TimelineCmd::List { .. } => "timeline list",
        })),
        Command::Endpoint(cmd) => Err(not_implemented(match cmd {
            EndpointCmd::Create { .. } => "endpoint create",
            EndpointCmd::Start { .. } => "endpoint start",
            EndpointCmd::Stop { .. } => "endpoint stop",
            EndpointCmd::List { .. } => "endpoint list",
        })),
        Command::Pageserver(cmd) => {
            let env = env()?;
            daemon_command(cmd, vec![env.pageserver_daemon(&repo)])
        }
        Command::StorageBroker(cmd) => {
            let env = env()?;
            daemon_command(cmd, vec![env.broker_daemon(&repo)])
        }
        Command::Safekeeper(cmd) => {
            let env = env()?;
            match cmd {
                SafekeeperCmd::Start { id, args } => {
                    daemon_command(DaemonCmd::Start(args), env.safekeeper_daemons(&repo, id)?)
                }
                SafekeeperCmd::Stop { id, args } => {
                    daemon_command(DaemonCmd::Stop(args), env.safekeeper_daemons(&repo, id)?)
                }
                SafekeeperCmd::Status { id } => {
                    daemon_command(DaemonCmd::Status, env.safekeeper_daemons(&repo, id)?)
                }
            }
        }
    }
}

fn daemon_command(
    cmd: DaemonCmd,
    daemons: Vec<control_plane::background_process::Daemon>,
) -> anyhow::Result<()> {
    match cmd {
        DaemonCmd::Start(args) => control_plane::start_daemons(&daemons, args.timeout()),
        DaemonCmd::Stop(args) => control_plane::stop_daemons(&daemons, args.stop_mode),
        DaemonCmd::Status => control_plane::status_daemons(&daemons),
    }
}
