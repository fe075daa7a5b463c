use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use control_plane::daemon_process::StopMode;
use control_plane::endpoint::{self, Endpoint};
use control_plane::local_env::{InitOptions, LocalEnv, Timeout};
use control_plane::tenants;
use utils::{Lsn, NodeId, TenantId, TimelineId};

/// neon_local: runs the whole system on one machine.
///
/// Keeps a repository directory (by default .neon in the current directory)
/// with its config, branch names, a directory per daemon and one per compute
/// endpoint (each with its log and pid file); starts and stops the storage
/// broker, pageserver, safekeepers and computes as background processes, and
/// manages tenants, branches and endpoints through them. `start` also runs
/// the control-plane service and the proxy: connect to the proxy (port 5432
/// by default) with `options=branch=NAME` or `options=endpoint=NAME`, and
/// the compute starts on demand and is suspended when idle.
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
    /// Start the storage broker, pageserver, safekeepers, the control-plane
    /// service and the proxy
    Start(StartAllArgs),
    /// Stop every daemon and endpoint
    Stop(StopArgs),
    /// Every tenant's branches with their sizes and endpoints, in one table
    Status,
    /// Manage tenants
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage timelines and branches
    #[command(subcommand)]
    Timeline(TimelineCmd),
    /// Manage compute endpoints
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
    /// Start, stop or check the proxy
    #[command(subcommand)]
    Proxy(DaemonCmd),
    /// Start, stop or check the control-plane service (wake API, scale to
    /// zero)
    #[command(subcommand, name = "control-plane", alias = "control_plane")]
    ControlPlane(ControlPlaneCmd),
    /// Tokens signed with the repository's key (every daemon asks for one)
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Manage the login roles of a tenant's databases (what clients of the
    /// proxy log in as)
    #[command(subcommand)]
    Role(RoleCmd),
}

#[derive(Subcommand, Debug)]
enum AuthCmd {
    /// Print a token: admin unless told otherwise. For scripts and curl:
    /// curl -H "Authorization: Bearer $(neon_local auth token)" ...
    Token {
        /// A token for this tenant only (scope tenant)
        #[arg(long, conflicts_with = "scope")]
        tenant_id: Option<TenantId>,
        /// admin, safekeeper, pageserver, compute or proxy (tenant needs
        /// --tenant-id)
        #[arg(long)]
        scope: Option<auth::Scope>,
        /// Expire this many seconds from now [default: never]
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum RoleCmd {
    /// Create a login role (or give it a new password); endpoints of the
    /// tenant get it when they start, running primaries at once
    Create {
        name: String,
        /// Its password [env: NEON_ROLE_PASSWORD]
        #[arg(long, env = "NEON_ROLE_PASSWORD", hide_env_values = true)]
        password: String,
        /// [default: the default tenant]
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
    /// List the tenant's login roles
    List {
        /// [default: the default tenant]
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
    /// Delete a login role: running primaries drop it at once, the other
    /// endpoints when they next start
    Delete {
        name: String,
        /// [default: the default tenant]
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
}

#[derive(clap::Args, Debug)]
struct StartAllArgs {
    #[command(flatten)]
    args: StartArgs,
    /// Suspend timeout of the endpoints the control plane creates for
    /// branches (10s, 5m, 1h; 0: never) [default: control_plane.default_suspend_timeout
    /// in the config, 5m]
    #[arg(long, value_name = "DURATION")]
    suspend_timeout: Option<Timeout>,
}

#[derive(Subcommand, Debug)]
enum ControlPlaneCmd {
    /// Start it in the background
    Start(StartAllArgs),
    /// Stop it
    Stop(StopArgs),
    /// Tell whether it runs and answers; fails if not
    Status,
    /// Run the service in the foreground (what `start` runs)
    #[command(hide = true)]
    Run {
        #[arg(long, value_name = "DURATION")]
        suspend_timeout: Option<Timeout>,
    },
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

#[derive(Subcommand, Debug)]
enum TenantCmd {
    /// Create a tenant on the pageserver with its initial timeline, 'main'
    Create {
        #[arg(long)]
        tenant_id: Option<TenantId>,
        /// Id of the initial timeline [default: generated]
        #[arg(long)]
        timeline_id: Option<TimelineId>,
        /// Use this tenant when commands do not name one
        #[arg(long)]
        set_default: bool,
        /// PostgreSQL major version
        #[arg(long, default_value_t = 15)]
        pg_version: u32,
    },
    /// List the pageserver's tenants
    List,
}

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
        /// Branch point [default: the end of the ancestor's WAL]
        #[arg(long)]
        ancestor_start_lsn: Option<Lsn>,
    },
    /// Create a timeline without ancestor (a new initdb)
    Create {
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long)]
        timeline_id: Option<TimelineId>,
        #[arg(long)]
        branch_name: String,
        #[arg(long, default_value_t = 15)]
        pg_version: u32,
    },
    /// Delete a branch with its data and its stopped endpoints (refused
    /// while it has children or a running endpoint)
    Delete {
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long)]
        branch_name: String,
    },
    /// Start a branch again from its parent's end (its stopped endpoints
    /// follow); refused with children or a running endpoint
    Reset {
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long)]
        branch_name: String,
    },
    /// List timelines as a tree
    List {
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// Create a compute endpoint on a branch (read-only at --lsn)
    Create {
        endpoint_id: String,
        #[arg(long)]
        tenant_id: Option<TenantId>,
        #[arg(long, default_value = "main")]
        branch_name: String,
        /// PostgreSQL port [default: the first free one from endpoints.base_port]
        #[arg(long)]
        pg_port: Option<u16>,
        /// compute_ctl HTTP port [default: the next free one]
        #[arg(long)]
        http_port: Option<u16>,
        /// Read-only endpoint showing the branch as of this LSN (time travel)
        #[arg(long)]
        lsn: Option<Lsn>,
        #[arg(long, default_value_t = 15)]
        pg_version: u32,
        /// Suspend the compute after this long without client connections
        /// (10s, 5m, 1h); the next connection through the proxy wakes it
        /// [default: never]
        #[arg(long, value_name = "DURATION")]
        suspend_timeout: Option<Timeout>,
        /// Commits wait while the pageserver lags the safekeepers by more
        /// than this many bytes of WAL (backpressure); 0: never
        /// [default: 268435456, 256 MiB]
        #[arg(long, value_name = "BYTES")]
        max_pageserver_lag: Option<u64>,
        /// Lazy data directory, relation blocks read from the pageserver on
        /// first use (FUSE): true requires it, false copies every relation
        /// at each start [default: lazy where FUSE can be mounted]
        #[arg(long, value_name = "BOOL")]
        lazy: Option<bool>,
        /// A read replica of this branch: a hot standby that streams the
        /// primary's WAL from the safekeepers and refuses writes (instead
        /// of --branch-name)
        #[arg(long, value_name = "BRANCH", conflicts_with_all = ["lsn", "branch_name"])]
        replica_of: Option<String>,
    },
    /// Start an endpoint's compute and wait until postgres runs
    Start {
        endpoint_id: String,
        /// Seconds to wait for the compute to run
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Stop an endpoint's compute
    Stop {
        endpoint_id: String,
        /// Also delete the endpoint
        #[arg(long)]
        destroy: bool,
        /// fast: SIGTERM, then SIGKILL after 10 s; immediate: SIGKILL
        #[arg(short = 'm', long, value_enum, default_value = "fast")]
        stop_mode: StopMode,
    },
    /// List endpoints
    List {
        #[arg(long)]
        tenant_id: Option<TenantId>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ControlPlane(ControlPlaneCmd::Run { suspend_timeout }) = cli.command {
        let repo_dir = match std::path::absolute(&cli.repo_dir) {
            Ok(dir) => dir,
            Err(err) => {
                eprintln!("error: resolving {}: {err}", cli.repo_dir.display());
                return ExitCode::FAILURE;
            }
        };
        return daemon_utils::launch(
            control_plane::wake_service::SERVICE,
            None,
            |conf: &mut control_plane::wake_service::ServiceConf| {
                conf.repo_dir = repo_dir;
                conf.suspend_timeout = suspend_timeout;
            },
            control_plane::wake_service::run,
        );
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
                "Initializing pageserver node {} at '{}' in {:?}",
                env.pageserver.id,
                env.pageserver.listen_pg_addr,
                control_plane::local_env::repo_name(&repo)
            );
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
            let env = env()?;
            let mut daemons = env.storage_daemons(&repo);
            daemons.extend(env.front_daemons(&repo, args.suspend_timeout));
            control_plane::start_daemons(&daemons, args.args.timeout())?;
            tenants::reattach_missing(&repo, &env)?;
            for sk in &env.safekeepers {
                endpoint::ensure_timelines_on(&repo, &sk.listen_http_addr)?;
            }
            Ok(())
        }
        Command::Stop(args) => {
            let env = env()?;
            // The proxy and the control plane first, so that nothing wakes
            // a compute meanwhile; then the computes, which write to the
            // storage until they stop; then the storage.
            let front =
                control_plane::stop_daemons(&env.front_daemons(&repo, None), args.stop_mode);
            let endpoints = endpoint::stop_all(&repo, &env, args.stop_mode);
            let storage = control_plane::stop_daemons(&env.storage_daemons(&repo), args.stop_mode);
            front.and(endpoints).and(storage)
        }
        Command::Proxy(cmd) => {
            let env = env()?;
            daemon_command(cmd, vec![env.proxy_daemon(&repo)])
        }
        Command::ControlPlane(cmd) => {
            let env = env()?;
            match cmd {
                ControlPlaneCmd::Start(args) => control_plane::start_daemons(
                    &[env.control_plane_daemon(&repo, args.suspend_timeout)],
                    args.args.timeout(),
                ),
                ControlPlaneCmd::Stop(args) => daemon_command(
                    DaemonCmd::Stop(args),
                    vec![env.control_plane_daemon(&repo, None)],
                ),
                ControlPlaneCmd::Status => daemon_command(
                    DaemonCmd::Status,
                    vec![env.control_plane_daemon(&repo, None)],
                ),
                ControlPlaneCmd::Run { .. } => unreachable!("handled in main"),
            }
        }
        Command::Auth(AuthCmd::Token {
            tenant_id,
            scope,
            expires_in,
        }) => {
            let mut claims = match (tenant_id, scope) {
                (Some(tenant_id), _) => auth::Claims::tenant(tenant_id),
                (None, Some(auth::Scope::Tenant)) => {
                    bail!("a tenant token needs --tenant-id")
                }
                (None, scope) => auth::Claims::new(scope.unwrap_or(auth::Scope::Admin)),
            };
            if let Some(seconds) = expires_in {
                claims = claims.expiring_in(seconds);
            }
            println!("{}", env()?.auth()?.issue(&claims));
            Ok(())
        }
        Command::Role(cmd) => {
            let env = env()?;
            match cmd {
                RoleCmd::Create {
                    name,
                    password,
                    tenant_id,
                } => control_plane::roles::role_create(&repo, &env, tenant_id, &name, &password),
                RoleCmd::List { tenant_id } => control_plane::roles::role_list(&repo, tenant_id),
                RoleCmd::Delete { name, tenant_id } => {
                    control_plane::roles::role_delete(&repo, &env, tenant_id, &name)
                }
            }
        }
        Command::Status => {
            print!("{}", control_plane::status::status_table(&repo, &env()?)?);
            Ok(())
        }
        Command::Tenant(cmd) => {
            let env = env()?;
            match cmd {
                TenantCmd::Create {
                    tenant_id,
                    timeline_id,
                    set_default,
                    pg_version,
                } => tenants::tenant_create(
                    &repo,
                    &env,
                    tenant_id,
                    timeline_id,
                    pg_version,
                    set_default,
                )
                .map(drop),
                TenantCmd::List => tenants::tenant_list(&repo, &env),
            }
        }
        Command::Timeline(cmd) => {
            let env = env()?;
            match cmd {
                TimelineCmd::Branch {
                    tenant_id,
                    branch_name,
                    ancestor_branch_name,
                    ancestor_start_lsn,
                } => tenants::timeline_branch(
                    &repo,
                    &env,
                    tenant_id,
                    &branch_name,
                    &ancestor_branch_name,
                    ancestor_start_lsn,
                ),
                TimelineCmd::Create {
                    tenant_id,
                    timeline_id,
                    branch_name,
                    pg_version,
                } => tenants::timeline_create(
                    &repo,
                    &env,
                    tenant_id,
                    timeline_id,
                    &branch_name,
                    pg_version,
                ),
                TimelineCmd::Delete {
                    tenant_id,
                    branch_name,
                } => tenants::timeline_delete(&repo, &env, tenant_id, &branch_name),
                TimelineCmd::Reset {
                    tenant_id,
                    branch_name,
                } => tenants::timeline_reset(&repo, &env, tenant_id, &branch_name),
                TimelineCmd::List { tenant_id } => tenants::timeline_list(&repo, &env, tenant_id),
            }
        }
        Command::Endpoint(cmd) => endpoint_command(&repo, &env()?, cmd),
        Command::Pageserver(cmd) => {
            let env = env()?;
            let starting = matches!(cmd, DaemonCmd::Start(_));
            daemon_command(cmd, vec![env.pageserver_daemon(&repo)])?;
            if starting {
                tenants::reattach_missing(&repo, &env)?;
            }
            Ok(())
        }
        Command::StorageBroker(cmd) => {
            let env = env()?;
            daemon_command(cmd, vec![env.broker_daemon(&repo)])
        }
        Command::Safekeeper(cmd) => {
            let env = env()?;
            match cmd {
                SafekeeperCmd::Start { id, args } => {
                    daemon_command(DaemonCmd::Start(args), env.safekeeper_daemons(&repo, id)?)?;
                    for sk in env
                        .safekeepers
                        .iter()
                        .filter(|sk| id.is_none_or(|id| sk.id == id))
                    {
                        endpoint::ensure_timelines_on(&repo, &sk.listen_http_addr)?;
                    }
                    Ok(())
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

fn endpoint_command(repo: &Path, env: &LocalEnv, cmd: EndpointCmd) -> anyhow::Result<()> {
    match cmd {
        EndpointCmd::Create {
            endpoint_id,
            tenant_id,
            branch_name,
            pg_port,
            http_port,
            lsn,
            pg_version,
            suspend_timeout,
            max_pageserver_lag,
            lazy,
            replica_of,
        } => {
            let replica = replica_of.is_some();
            let opts = endpoint::CreateOptions {
                name: endpoint_id,
                tenant_id,
                branch_name: replica_of.unwrap_or(branch_name),
                pg_port,
                http_port,
                lsn,
                pg_version,
                suspend_timeout,
                max_pageserver_lag,
                lazy,
                replica,
            };
            let state = control_plane::state::State::load(repo)?;
            Endpoint::create(repo, env, &state, &opts).map(drop)
        }
        EndpointCmd::Start {
            endpoint_id,
            timeout,
        } => {
            let ep = Endpoint::load(repo, &endpoint_id)?;
            let mode = match ep.conf.lsn {
                Some(lsn) => format!(" (read-only at {lsn})"),
                None => String::new(),
            };
            println!(
                "Starting new endpoint {endpoint_id} (PostgreSQL v{}) on timeline {}{mode} ...",
                ep.conf.pg_version, ep.conf.timeline_id
            );
            ep.start(repo, env, Duration::from_secs(timeout))?;
            println!("Starting postgres at '{}'", ep.connstr());
            Ok(())
        }
        EndpointCmd::Stop {
            endpoint_id,
            destroy,
            stop_mode,
        } => {
            let ep = Endpoint::load(repo, &endpoint_id)?;
            let was_running = if destroy {
                ep.destroy(env, stop_mode)?
            } else {
                ep.stop(env, stop_mode)?
            };
            if !was_running {
                println!("endpoint {endpoint_id} is not running");
            }
            if destroy {
                println!("endpoint {endpoint_id} destroyed");
            }
            Ok(())
        }
        EndpointCmd::List { tenant_id } => {
            print!("{}", endpoint::list_table(repo, env, tenant_id)?);
            Ok(())
        }
    }
}

fn daemon_command(
    cmd: DaemonCmd,
    daemons: Vec<control_plane::daemon_process::Daemon>,
) -> anyhow::Result<()> {
    match cmd {
        DaemonCmd::Start(args) => control_plane::start_daemons(&daemons, args.timeout()),
        DaemonCmd::Stop(args) => control_plane::stop_daemons(&daemons, args.stop_mode),
        DaemonCmd::Status => control_plane::status_daemons(&daemons),
    }
}
