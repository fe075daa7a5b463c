//! One compute's life: start from a spec, run, fail or terminate.
//!
//! Start (every start is from a fresh PGDATA):
//!
//! 1. primary: sync the safekeepers (the walproposer in sync mode) for the
//!    LSN where the committed WAL ends (`0/0` for a timeline without WAL:
//!    the pageserver's last record then); static: the spec's LSN;
//! 2. wait until the pageserver has ingested WAL up to that LSN;
//! 3. fetch the base backup at that LSN into a new PGDATA owned by the
//!    PostgreSQL OS user, and write the configuration; for a lazy data
//!    directory ([`crate::lazy_mount`]) the base backup has no relation
//!    data, and `compute_fs` mounts `base/` and `global/`;
//! 4. start postgres and wait until it accepts connections;
//! 5. primary: start the walproposer (in this process) streaming from that
//!    LSN, then apply the spec's roles and databases.
//!
//! While it runs, the monitor records client activity; postgres exiting,
//! `compute_fs` exiting or the walproposer failing (fenced by a newer
//! compute) stops the compute with status `failed`. Each step's duration
//! is logged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use compute_api::{ComputeMode, ComputeSpec, ComputeState, ComputeStatus, SpecError};
use prometheus::{Gauge, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};
use utils::Lsn;
use walproposer::driver::PostgresSource;

use crate::basebackup::{self, PageserverHttp};
use crate::commit_progress::CommitWatch;
use crate::lazy_mount::{self, DataDirectory, LazyMount};
use crate::pg::{self, OsUser, Postmaster, StopMode};
use crate::{config, monitor, spec_apply, ComputeCtlConf};

/// How long the pageserver may take to have the WAL a start needs.
const PAGESERVER_WAIT: Duration = Duration::from_secs(120);
/// How long a replica waits for a start point on the pageserver.
const REPLICA_START_WAIT: Duration = Duration::from_secs(30);
/// How long syncing the safekeepers may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request to the compute was refused or failed; the HTTP layer
/// maps each case to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The spec does not validate.
    #[error("{0}")]
    InvalidSpec(#[from] SpecError),
    /// The request does not fit the compute's current status.
    #[error("the compute is {status}: it cannot be {action} now")]
    WrongStatus {
        status: ComputeStatus,
        action: &'static str,
    },
    /// A running compute without a spec: cannot happen, refused anyway.
    #[error("the compute has no spec")]
    NoSpec,
    /// The new spec changes what only a new start can change.
    #[error(
        "changing {0} of a running compute needs a restart (terminate it and start a new one)"
    )]
    NeedsRestart(&'static str),
    /// Anything else: reloading, connecting, applying roles and databases.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// What `GET /status` shows, plus the spec.
#[derive(Debug, Clone)]
struct Inner {
    status: ComputeStatus,
    spec: Option<ComputeSpec>,
    start_time: Option<SystemTime>,
    last_active: Option<SystemTime>,
    error: Option<String>,
    start_lsn: Option<Lsn>,
    current_lsn: Option<Lsn>,
    postgres_pid: Option<u32>,
    data_directory: Option<DataDirectory>,
}

struct Metrics {
    status: IntGaugeVec,
    start_seconds: Gauge,
    last_active: Gauge,
}

impl Metrics {
    fn new() -> anyhow::Result<Self> {
        Ok(Metrics {
            status: IntGaugeVec::new(
                Opts::new(
                    "compute_ctl_compute_status",
                    "1 for the compute's current status",
                ),
                &["status"],
            )?,
            start_seconds: Gauge::new(
                "compute_ctl_start_duration_seconds",
                "How long the last successful start took",
            )?,
            last_active: Gauge::new(
                "compute_ctl_last_active_timestamp_seconds",
                "The last client activity, seconds since the epoch",
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> anyhow::Result<()> {
        registry.register(Box::new(self.status.clone()))?;
        registry.register(Box::new(self.start_seconds.clone()))?;
        registry.register(Box::new(self.last_active.clone()))?;
        Ok(())
    }
}

/// The compute this compute_ctl runs.
pub struct ComputeNode {
    conf: ComputeCtlConf,
    state: watch::Sender<Inner>,
    /// The current start: its stop token and task.
    run: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    /// Serialises `/configure` and `/terminate`.
    ops: tokio::sync::Mutex<()>,
    metrics: Metrics,
    /// The running walproposer's progress.
    commits: CommitWatch,
    /// The control plane's trace context: its id is on every start's span.
    trace: Mutex<Option<crate::control_plane::TraceParent>>,
}

/// What runs while the compute is up.
struct Running {
    postmaster: Postmaster,
    fs: Option<LazyMount>,
    walproposer: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

impl ComputeNode {
    /// A compute_ctl whose metrics go to `registry` (call in a runtime).
    pub fn new(conf: ComputeCtlConf, registry: &Registry) -> anyhow::Result<Arc<Self>> {
        let (state, _) = watch::channel(Inner {
            status: ComputeStatus::Empty,
            spec: None,
            start_time: None,
            last_active: None,
            error: None,
            start_lsn: None,
            current_lsn: None,
            postgres_pid: None,
            data_directory: None,
        });
        let node = ComputeNode {
            conf,
            state,
            run: Mutex::new(None),
            ops: tokio::sync::Mutex::new(()),
            metrics: Metrics::new()?,
            commits: CommitWatch::new(registry)?,
            trace: Mutex::new(None),
        };
        node.metrics.register(registry)?;
        node.metrics
            .status
            .with_label_values(&[ComputeStatus::Empty.as_str()])
            .set(1);
        Ok(Arc::new(node))
    }

    /// The trace the starts belong to (from `TRACEPARENT`).
    pub fn set_trace(&self, trace: Option<crate::control_plane::TraceParent>) {
        *self.trace.lock().unwrap_or_else(|e| e.into_inner()) = trace;
    }

    pub fn status(&self) -> ComputeStatus {
        self.state.borrow().status
    }

    /// The `GET /status` document.
    pub fn state(&self) -> ComputeState {
        let inner = self.state.borrow();
        let spec = inner.spec.as_ref();
        ComputeState {
            status: inner.status,
            start_time: inner.start_time.map(compute_api::time::rfc3339),
            last_active: inner.last_active.map(compute_api::time::rfc3339),
            error: inner.error.clone(),
            tenant_id: spec.map(|s| s.tenant_id),
            timeline_id: spec.map(|s| s.timeline_id),
            mode: spec.map(|s| s.mode.name().to_owned()),
            start_lsn: inner.start_lsn,
            current_lsn: inner.current_lsn,
            pg_port: spec.map(|s| s.pg_port),
            postgres_pid: inner.postgres_pid,
            data_directory: inner.data_directory.map(|d| d.name().to_owned()),
            commits: match inner.status {
                ComputeStatus::Running => self.commits.progress(),
                _ => None,
            },
        }
    }

    fn set_status(&self, status: ComputeStatus, error: Option<String>) {
        self.state.send_modify(|inner| {
            let old = inner.status;
            self.metrics
                .status
                .with_label_values(&[old.as_str()])
                .set(0);
            self.metrics
                .status
                .with_label_values(&[status.as_str()])
                .set(1);
            inner.status = status;
            if error.is_some() || status == ComputeStatus::Init {
                inner.error = error;
            }
            if status != ComputeStatus::Running && status != ComputeStatus::Init {
                inner.postgres_pid = None;
            }
        });
    }

    /// Waits until the status is no longer `init`; returns it.
    pub async fn wait_started(&self) -> ComputeStatus {
        let mut rx = self.state.subscribe();
        let status = rx
            .wait_for(|inner| inner.status != ComputeStatus::Init)
            .await
            .map(|inner| inner.status);
        status.unwrap_or(ComputeStatus::Failed)
    }

    /// Starts the compute described by `spec` in the background (status
    /// `init`). Refused unless the compute is empty or failed.
    pub fn start(self: &Arc<Self>, spec: ComputeSpec) -> Result<(), ComputeError> {
        let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        let status = self.status();
        if !matches!(status, ComputeStatus::Empty | ComputeStatus::Failed) {
            return Err(ComputeError::WrongStatus {
                status,
                action: "started",
            });
        }
        self.state.send_modify(|inner| {
            inner.spec = Some(spec.clone());
            inner.start_time = Some(SystemTime::now());
            inner.last_active = inner.start_time;
            inner.start_lsn = None;
            inner.current_lsn = None;
            inner.data_directory = None;
        });
        self.set_status(ComputeStatus::Init, None);
        let stop = CancellationToken::new();
        let node = Arc::clone(self);
        let span = tracing::info_span!(
            "compute",
            tenant_id = %spec.tenant_id,
            timeline_id = %spec.timeline_id,
            trace_id = tracing::field::Empty
        );
        if let Some(trace) = self
            .trace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            span.record("trace_id", trace.trace_id.as_str());
        }
        let task = tokio::spawn(node.run_compute(spec, stop.clone()).instrument(span));
        *run = Some((stop, task));
        Ok(())
    }

    /// Stops postgres (if it runs) and waits; the status becomes
    /// `terminated` unless the compute had failed.
    pub async fn terminate(&self) -> ComputeState {
        let _ops = self.ops.lock().await;
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((stop, task)) = run {
            stop.cancel();
            if let Err(e) = task.await {
                error!("the compute task ended abnormally: {e}");
            }
        }
        if self.status() != ComputeStatus::Failed {
            self.set_status(ComputeStatus::Terminated, None);
        }
        self.state()
    }

    /// `POST /configure`: starts an empty (or failed) compute, waiting
    /// until it runs or fails; reconfigures a running one.
    pub async fn configure(
        self: &Arc<Self>,
        spec: ComputeSpec,
    ) -> Result<ComputeState, ComputeError> {
        spec.validate()?;
        let ops = self.ops.lock().await;
        match self.status() {
            ComputeStatus::Empty | ComputeStatus::Failed => {
                self.start(spec)?;
                // A terminate may come while it starts.
                drop(ops);
                self.wait_started().await;
                Ok(self.state())
            }
            ComputeStatus::Running => {
                self.reconfigure(spec).await?;
                Ok(self.state())
            }
            status => Err(ComputeError::WrongStatus {
                status,
                action: "configured",
            }),
        }
    }

    /// Applies a new spec to the running compute: settings (reloaded),
    /// roles and databases. What needs a new start is refused.
    async fn reconfigure(&self, spec: ComputeSpec) -> Result<(), ComputeError> {
        let current = self
            .state
            .borrow()
            .spec
            .clone()
            .ok_or(ComputeError::NoSpec)?;
        let fixed = [
            (
                "tenant_id",
                current.tenant_id.to_string(),
                spec.tenant_id.to_string(),
            ),
            (
                "timeline_id",
                current.timeline_id.to_string(),
                spec.timeline_id.to_string(),
            ),
            (
                "mode",
                format!("{:?}", current.mode),
                format!("{:?}", spec.mode),
            ),
            (
                "pg_port",
                current.pg_port.to_string(),
                spec.pg_port.to_string(),
            ),
            (
                "listen_addresses",
                current.listen_addresses.clone(),
                spec.listen_addresses.clone(),
            ),
            (
                "pageserver_connstring",
                current.pageserver_connstring.clone(),
                spec.pageserver_connstring.clone(),
            ),
            (
                "safekeepers",
                current.safekeepers.join(","),
                spec.safekeepers.join(","),
            ),
        ];
        for (name, old, new) in fixed {
            if old != new {
                return Err(ComputeError::NeedsRestart(name));
            }
        }
        let pgdata = &self.conf.pgdata;
        let settings = pgdata.join(config::SPEC_SETTINGS_FILE);
        std::fs::write(&settings, config::spec_settings_text(&spec.settings))
            .with_context(|| format!("writing {}", settings.display()))?;
        let mut client = pg::connect(spec.pg_port, "postgres", "compute_ctl")
            .await
            .context("connecting to postgres")?;
        client
            .simple_query("SELECT pg_reload_conf()")
            .await
            .context("reloading the configuration")?;
        if spec.mode == ComputeMode::Primary {
            spec_apply::apply(&mut client, &spec)
                .await
                .context("applying the spec")?;
        } else if !spec.roles.is_empty() || !spec.databases.is_empty() {
            warn!("a static compute is read-only: roles and databases are not applied");
        }
        let _ = client.close().await;
        self.state.send_modify(|inner| inner.spec = Some(spec));
        info!("reconfigured the compute");
        Ok(())
    }

    async fn run_compute(self: Arc<Self>, spec: ComputeSpec, stop: CancellationToken) {
        let started = Instant::now();
        // start_compute stops what it started when it fails or is stopped.
        let running = self.start_compute(&spec, &stop).await;
        match running {
            Ok(running) => {
                self.metrics
                    .start_seconds
                    .set(started.elapsed().as_secs_f64());
                info!(
                    "compute running on port {} after {:.1?}",
                    spec.pg_port,
                    started.elapsed()
                );
                self.set_status(ComputeStatus::Running, None);
                self.supervise(&spec, running, stop).await;
            }
            Err(e) if stop.is_cancelled() => {
                info!("start cancelled: {e:#}");
                self.set_status(ComputeStatus::Terminated, None);
            }
            Err(e) => {
                error!("compute start failed: {e:#}");
                self.set_status(ComputeStatus::Failed, Some(format!("{e:#}")));
            }
        }
    }

    /// Runs `fut` unless `stop` fires first.
    async fn unless_stopped<T>(
        stop: &CancellationToken,
        fut: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            _ = stop.cancelled() => bail!("stopped during start"),
            result = fut => result,
        }
    }

    async fn start_compute(
        &self,
        spec: &ComputeSpec,
        stop: &CancellationToken,
    ) -> anyhow::Result<Running> {
        let postgres = pg::find_postgres(&self.conf.pgbin)?;
        let user = pg::pg_os_user(self.conf.pg_os_user.as_deref())?;
        let pageserver = PageserverHttp::new(spec)?;
        let data_directory = lazy_mount::choose(spec, &self.conf)?;
        self.state
            .send_modify(|inner| inner.data_directory = Some(data_directory));
        let mut step = Step::new();

        let lsn = match spec.mode {
            ComputeMode::Primary => {
                let config = basebackup::walproposer_config(spec);
                let sync = walproposer::driver::sync_safekeepers(config, stop.child_token());
                let synced = Self::unless_stopped(stop, async {
                    tokio::time::timeout(SYNC_TIMEOUT, sync)
                        .await
                        .map_err(|_| anyhow::anyhow!("the safekeepers did not sync within {SYNC_TIMEOUT:?} (is a quorum of {} running?)", spec.safekeepers.join(", ")))?
                        .context("syncing the safekeepers")
                })
                .await?;
                step.done("synced the safekeepers");
                info!(%synced, "safekeepers synced");
                if synced.is_valid() {
                    synced
                } else {
                    // No WAL on the safekeepers yet: start where the
                    // pageserver's timeline ends (its initdb or branch point).
                    pageserver.last_record_lsn().await?
                }
            }
            ComputeMode::Replica => {
                let lsn = Self::unless_stopped(stop, replica_start(&pageserver)).await?;
                info!(%lsn, "a replica starts at the latest shutdown checkpoint");
                lsn
            }
            ComputeMode::Static(lsn) => {
                let last = pageserver.last_record_lsn().await?;
                if lsn > last {
                    info!(%lsn, %last, "waiting for the pageserver to reach the static LSN");
                }
                lsn
            }
        };
        self.state.send_modify(|inner| {
            inner.start_lsn = Some(lsn);
            inner.current_lsn = Some(lsn);
        });
        Self::unless_stopped(stop, pageserver.wait_for_lsn(lsn, PAGESERVER_WAIT, stop)).await?;
        step.done("the pageserver has the WAL");

        self.prepare_pgdata(spec, lsn, data_directory, user.as_ref(), stop, &mut step)
            .await?;
        let mut fs = match data_directory {
            DataDirectory::Lazy => {
                let store = lazy_mount::store_path(&self.conf.pgdata);
                let mount = Self::unless_stopped(
                    stop,
                    LazyMount::start(&self.conf, spec, lsn, &store, user.as_ref()),
                )
                .await?;
                step.done("mounted the lazy data directory");
                Some(mount)
            }
            DataDirectory::Full => None,
        };

        let spawned = Postmaster::spawn(&postgres, &self.conf.pgdata, user.as_ref());
        let mut postmaster = match spawned {
            Ok(postmaster) => postmaster,
            Err(e) => {
                if let Some(fs) = fs.as_mut() {
                    fs.stop().await;
                }
                return Err(e);
            }
        };
        self.state
            .send_modify(|inner| inner.postgres_pid = Some(postmaster.pid));
        let result = self
            .finish_start(spec, lsn, &mut postmaster, stop, &mut step)
            .await;
        match result {
            Ok(walproposer) => Ok(Running {
                postmaster,
                fs,
                walproposer,
            }),
            Err(e) => {
                postmaster.stop(StopMode::Immediate).await;
                if let Some(fs) = fs.as_mut() {
                    fs.stop().await;
                }
                Err(e)
            }
        }
    }

    /// A fresh PGDATA from the base backup at `lsn`, configured, owned by
    /// the PostgreSQL OS user.
    async fn prepare_pgdata(
        &self,
        spec: &ComputeSpec,
        lsn: Lsn,
        data_directory: DataDirectory,
        user: Option<&OsUser>,
        stop: &CancellationToken,
        step: &mut Step,
    ) -> anyhow::Result<()> {
        let pgdata = self.conf.pgdata.clone();
        let lazy = data_directory == DataDirectory::Lazy;
        lazy_mount::clean_stale_mounts(&pgdata)?;
        let store = lazy_mount::store_path(&pgdata);
        if store.exists() {
            std::fs::remove_dir_all(&store)
                .with_context(|| format!("removing the old store {}", store.display()))?;
        }
        if pgdata.exists() {
            std::fs::remove_dir_all(&pgdata)
                .with_context(|| format!("removing the old data directory {}", pgdata.display()))?;
        }
        std::fs::create_dir_all(&pgdata)
            .with_context(|| format!("creating the data directory {}", pgdata.display()))?;
        if let Some(user) = user {
            pg::check_reachable(&pgdata, user)?;
        }
        let tar_path = tar_path(&pgdata);
        let fetched =
            Self::unless_stopped(stop, basebackup::fetch(spec, lsn, lazy, &tar_path)).await;
        let unpacked = match fetched {
            Ok(_) => {
                step.done("fetched the base backup");
                let (tar, dir) = (tar_path.clone(), pgdata.clone());
                tokio::task::spawn_blocking(move || basebackup::unpack(&tar, &dir))
                    .await
                    .context("unpacking task")?
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tar_path);
        unpacked?;
        if lazy {
            lazy_mount::move_into_store(&pgdata, &store)?;
        }
        config::write_config(&pgdata, spec)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting the mode of {}", pgdata.display()))?;
        }
        if let Some(user) = user {
            let (dir, user) = (pgdata.clone(), user.clone());
            tokio::task::spawn_blocking(move || pg::chown_recursive(&dir, &user))
                .await
                .context("chown task")??;
        }
        step.done("unpacked the base backup");
        Ok(())
    }

    /// Waits for postgres, starts the walproposer and applies the spec.
    async fn finish_start(
        &self,
        spec: &ComputeSpec,
        lsn: Lsn,
        postmaster: &mut Postmaster,
        stop: &CancellationToken,
        step: &mut Step,
    ) -> anyhow::Result<Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>> {
        let timeout = Duration::from_secs(self.conf.start_timeout_secs);
        Self::unless_stopped(stop, postmaster.wait_ready(spec.pg_port, timeout)).await?;
        step.done("postgres accepts connections");
        info!(port = spec.pg_port, "postgres accepts connections");
        if spec.mode != ComputeMode::Primary {
            if !spec.roles.is_empty() || !spec.databases.is_empty() {
                warn!("a read-only compute cannot apply roles and databases: the primary's are replicated");
            }
            return Ok(None);
        }
        let wp_cancel = CancellationToken::new();
        let source = PostgresSource {
            address: format!("127.0.0.1:{}", spec.pg_port),
            user: pg::SUPERUSER.to_owned(),
            slot: config::WALPROPOSER_NAME.to_owned(),
        };
        let mut walproposer = tokio::spawn(
            walproposer::driver::stream(
                basebackup::walproposer_config(spec),
                source,
                lsn,
                self.commits.sender(),
                wp_cancel.clone(),
            )
            .instrument(tracing::info_span!("walproposer")),
        );
        // Commits wait for the walproposer (the synchronous standby), so
        // the spec is applied while watching it.
        let applied = async {
            let mut client = pg::connect(spec.pg_port, "postgres", "compute_ctl")
                .await
                .context("connecting to postgres")?;
            spec_apply::apply(&mut client, spec)
                .await
                .context("applying the spec's roles and databases")?;
            let _ = client.close().await;
            anyhow::Ok(())
        };
        let result = tokio::select! {
            _ = stop.cancelled() => Err(anyhow::anyhow!("stopped during start")),
            result = applied => result,
            ended = &mut walproposer => Err(walproposer_ended(ended)),
            status = postmaster.wait() => Err(anyhow::anyhow!("postgres exited during start ({status})")),
        };
        match result {
            Ok(()) => {
                step.done("applied the spec");
                Ok(Some((wp_cancel, walproposer)))
            }
            Err(e) => {
                wp_cancel.cancel();
                walproposer.abort();
                Err(e)
            }
        }
    }

    /// Watches a running compute until it stops or fails.
    async fn supervise(&self, spec: &ComputeSpec, mut running: Running, stop: CancellationToken) {
        let monitor_cancel = stop.child_token();
        let interval = Duration::from_millis(self.conf.monitor_interval_ms.max(10));
        let monitor = {
            let state = self.state.clone();
            let last_active_metric = self.metrics.last_active.clone();
            let is_static = matches!(spec.mode, ComputeMode::Static(_));
            let mut sessions = None;
            tokio::spawn(monitor::run(
                spec.pg_port,
                interval,
                monitor_cancel.clone(),
                move |seen| {
                    let now = SystemTime::now();
                    state.send_modify(|inner| {
                        let previous = inner.last_active.unwrap_or(now);
                        let active = monitor::last_active_after(previous, sessions, &seen, now);
                        inner.last_active = Some(active);
                        if let Ok(secs) = active.duration_since(std::time::UNIX_EPOCH) {
                            last_active_metric.set(secs.as_secs_f64());
                        }
                        if !is_static {
                            if let Some(lsn) = seen.lsn {
                                inner.current_lsn = Some(lsn);
                            }
                        }
                    });
                    sessions = Some(seen.sessions);
                },
            ))
        };
        let (wp_cancel, mut wp_task) = match running.walproposer.take() {
            Some((cancel, task)) => (cancel, Some(task)),
            None => (CancellationToken::new(), None),
        };
        let outcome: Result<(), String> = tokio::select! {
            _ = stop.cancelled() => {
                info!("stopping the compute");
                running.postmaster.stop(StopMode::Fast).await;
                Ok(())
            }
            status = running.postmaster.wait() => {
                Err(format!("postgres exited unexpectedly ({status})"))
            }
            status = async {
                match running.fs.as_mut() {
                    Some(fs) => fs.wait().await,
                    None => std::future::pending().await,
                }
            } => {
                error!("compute_fs exited ({status}); stopping postgres");
                running.postmaster.stop(StopMode::Immediate).await;
                Err(format!("the lazy data directory's compute_fs exited ({status}); postgres was stopped"))
            }
            ended = async {
                match wp_task.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                wp_task = None;
                let e = walproposer_ended(ended);
                error!("{e:#}; stopping postgres");
                running.postmaster.stop(StopMode::Fast).await;
                Err(format!("{e:#}; postgres was stopped"))
            }
        };
        monitor_cancel.cancel();
        let _ = monitor.await;
        wp_cancel.cancel();
        if let Some(task) = wp_task {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Err(e))) => warn!("the walproposer ended: {e:#}"),
                Ok(_) => {}
                Err(_) => warn!("the walproposer did not stop within 5 s"),
            }
        }
        if let Some(fs) = running.fs.as_mut() {
            if running.postmaster.try_exit().is_none() {
                running.postmaster.stop(StopMode::Immediate).await;
            }
            let status = fs.stop().await;
            info!("compute_fs stopped ({status})");
        }
        match outcome {
            Ok(()) => self.set_status(ComputeStatus::Terminated, None),
            Err(e) => {
                if running.postmaster.try_exit().is_none() {
                    running.postmaster.stop(StopMode::Immediate).await;
                }
                error!("compute failed: {e}");
                self.set_status(ComputeStatus::Failed, Some(e));
            }
        }
    }
}

/// Where a replica starts: the latest shutdown checkpoint the pageserver
/// has ingested. A primary that has just started has written one, which
/// the pageserver may not have yet: waits for one up to
/// [`REPLICA_START_WAIT`].
async fn replica_start(pageserver: &PageserverHttp) -> anyhow::Result<Lsn> {
    let deadline = Instant::now() + REPLICA_START_WAIT;
    loop {
        if let Some(lsn) = pageserver.shutdown_checkpoint_lsn().await? {
            return Ok(lsn);
        }
        if Instant::now() >= deadline {
            bail!("the timeline has no shutdown checkpoint where a replica could start ({REPLICA_START_WAIT:?} waited): start its primary first");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The durations of a start's steps, logged as each ends.
struct Step {
    started: Instant,
    last: Instant,
}

impl Step {
    fn new() -> Self {
        let now = Instant::now();
        Step {
            started: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        info!(
            step_ms = (now - self.last).as_millis() as u64,
            total_ms = (now - self.started).as_millis() as u64,
            "start: {what}"
        );
        self.last = now;
    }
}

/// The error for a walproposer task that ended while it should run.
fn walproposer_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("the walproposer stopped"),
        Ok(Err(e)) => e.context("the walproposer stopped"),
        Err(e) => anyhow::anyhow!("the walproposer task ended abnormally: {e}"),
    }
}

/// Where the base backup is downloaded: beside PGDATA.
fn tar_path(pgdata: &std::path::Path) -> PathBuf {
    let name = pgdata
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pgdata".into());
    pgdata.with_file_name(format!("{name}.basebackup.tar"))
}
