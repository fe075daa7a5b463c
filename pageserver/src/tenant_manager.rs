//! The tenants of this pageserver: loaded from `<workdir>/tenants` at start,
//! created and removed through the HTTP API, each timeline with its WAL
//! receiver when a storage broker is configured.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context};
use postgres_format::PgMajorVersion;
use storage_broker::BrokerClient;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};
use utils::{Lsn, TenantId, TimelineId};

use crate::import_datadir::{end_of_wal, import_datadir};
use crate::page_service::TimelineLookup;
use crate::tenant::{Tenant, TenantState};
use crate::timeline::{RecordLsn, Timeline, TimelineConf};

/// How PostgreSQL's `initdb` is run to bootstrap timelines.
#[derive(Clone, Debug)]
pub struct InitdbConf {
    /// Directory of the PostgreSQL 15 binaries.
    pub pg_bin_dir: PathBuf,
    /// OS user to run initdb as when the pageserver runs as root.
    pub pg_os_user: String,
}

pub struct TenantManager {
    workdir: PathBuf,
    conf: TimelineConf,
    initdb: InitdbConf,
    broker: Option<BrokerClient>,
    tenants: RwLock<HashMap<TenantId, Arc<Tenant>>>,
    receivers: Mutex<HashMap<(TenantId, TimelineId), CancellationToken>>,
    cancel: CancellationToken,
}

impl TenantManager {
    /// Load every tenant under `<workdir>/tenants`.
    pub fn load(
        workdir: &Path,
        conf: TimelineConf,
        initdb: InitdbConf,
        broker: Option<BrokerClient>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<TenantManager>> {
        let tenants_dir = workdir.join("tenants");
        std::fs::create_dir_all(&tenants_dir)
            .with_context(|| format!("creating {}", tenants_dir.display()))?;
        let mut tenants = HashMap::new();
        for entry in std::fs::read_dir(&tenants_dir)? {
            let entry = entry?;
            let Some(tenant_id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<TenantId>().ok())
            else {
                continue;
            };
            let tenant = Tenant::load(workdir, tenant_id, conf.clone());
            match tenant.state() {
                TenantState::Active => {
                    info!(%tenant_id, "loaded tenant with {} timelines", tenant.timelines().len())
                }
                TenantState::Broken(reason) => warn!(%tenant_id, "tenant is broken: {reason}"),
            }
            tenants.insert(tenant_id, tenant);
        }
        let manager = Arc::new(TenantManager {
            workdir: workdir.to_owned(),
            conf,
            initdb,
            broker,
            tenants: RwLock::new(tenants),
            receivers: Mutex::new(HashMap::new()),
            cancel,
        });
        for tenant in manager.list() {
            for timeline in tenant.timelines() {
                manager.start_receiver(&timeline);
            }
        }
        Ok(manager)
    }

    pub fn list(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<_> = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|t| t.tenant_id);
        all
    }

    pub fn get(&self, tenant_id: TenantId) -> Option<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tenant_id)
            .cloned()
    }

    pub fn create_tenant(&self, tenant_id: TenantId) -> anyhow::Result<Arc<Tenant>> {
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        if tenants.contains_key(&tenant_id) {
            bail!(AlreadyExists(format!("tenant {tenant_id} already exists")));
        }
        let tenant = Tenant::create(&self.workdir, tenant_id, self.conf.clone())?;
        tenants.insert(tenant_id, tenant.clone());
        info!(%tenant_id, "created tenant");
        Ok(tenant)
    }

    /// A new timeline from a fresh `initdb`, imported at its end of WAL.
    pub fn bootstrap_timeline(
        &self,
        tenant: &Tenant,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Arc<Timeline>> {
        let scratch = InitdbDir::create(&self.initdb)?;
        let pgdata = scratch.path.join("pgdata");
        let mut initdb = self.initdb.command("initdb");
        initdb.args([
            "-D",
            &pgdata.to_string_lossy(),
            "-U",
            "cloud_admin",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
        ]);
        run(&mut initdb).context("running initdb")?;
        let (start, end) = end_of_wal(&pgdata)?;
        let timeline = tenant.create_root_timeline(
            timeline_id,
            PgMajorVersion::V15,
            RecordLsn {
                last: end,
                prev: start,
            },
        )?;
        import_datadir(&timeline, &pgdata, end, start)
            .context("importing initdb's data directory")?;
        timeline.flush().context("writing the imported data")?;
        info!(tenant_id = %tenant.tenant_id, %timeline_id, lsn = %end, "bootstrapped timeline");
        self.start_receiver(&timeline);
        Ok(timeline)
    }

    /// A branch of `ancestor` at `lsn` (default: its last record).
    pub fn branch_timeline(
        &self,
        tenant: &Tenant,
        ancestor_id: TimelineId,
        timeline_id: TimelineId,
        lsn: Option<Lsn>,
    ) -> anyhow::Result<Arc<Timeline>> {
        let ancestor = tenant.get_timeline(ancestor_id)?;
        let last = ancestor.last_record();
        let at = match lsn {
            None => last,
            Some(lsn) if lsn == last.last => last,
            // No record index: the branch's first WAL is its compute's
            // fabricated checkpoint, whose prev-link is not checked.
            Some(lsn) => RecordLsn {
                last: lsn,
                prev: Lsn::INVALID,
            },
        };
        let timeline = tenant.branch_timeline(ancestor_id, timeline_id, at)?;
        info!(tenant_id = %tenant.tenant_id, %timeline_id, %ancestor_id, lsn = %at.last, "branched timeline");
        self.start_receiver(&timeline);
        Ok(timeline)
    }

    pub fn delete_timeline(&self, tenant: &Tenant, timeline_id: TimelineId) -> anyhow::Result<()> {
        if let Some(cancel) = self
            .receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tenant.tenant_id, timeline_id))
        {
            cancel.cancel();
        }
        tenant.delete_timeline(timeline_id)?;
        Ok(())
    }

    fn start_receiver(&self, timeline: &Arc<Timeline>) {
        let Some(broker) = &self.broker else { return };
        let cancel = self.cancel.child_token();
        self.receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((timeline.tenant_id, timeline.timeline_id), cancel.clone());
        let span = info_span!("walreceiver", tenant_id = %timeline.tenant_id, timeline_id = %timeline.timeline_id);
        tokio::spawn(
            crate::walreceiver::run(timeline.clone(), broker.clone(), cancel).instrument(span),
        );
    }

    /// Write what is in memory to layer files (at shutdown).
    pub fn flush_all(&self) {
        for tenant in self.list() {
            for timeline in tenant.timelines() {
                if let Err(e) = timeline.flush() {
                    warn!(tenant_id = %tenant.tenant_id, timeline_id = %timeline.timeline_id, "flushing at shutdown: {e:#}");
                }
            }
        }
    }
}

impl TimelineLookup for TenantManager {
    fn get_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Arc<Timeline>> {
        let tenant = self
            .get(tenant_id)
            .with_context(|| format!("tenant {tenant_id} not found"))?;
        Ok(tenant.get_timeline(timeline_id)?)
    }
}

/// "Already exists", for the HTTP layer to map to 409.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyExists(pub String);

impl InitdbConf {
    fn as_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    /// A PostgreSQL program, run as the PostgreSQL OS user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.pg_bin_dir.join(program);
        if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", &self.pg_os_user, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A scratch directory for initdb that the PostgreSQL OS user can write,
/// removed when dropped.
struct InitdbDir {
    path: PathBuf,
}

impl InitdbDir {
    fn create(conf: &InitdbConf) -> anyhow::Result<InitdbDir> {
        let mut mktemp = if InitdbConf::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", &conf.pg_os_user, "--", "mktemp"]);
            c
        } else {
            Command::new("mktemp")
        };
        mktemp.args(["-d", "-t", "pageserver-initdb-XXXXXX"]);
        let path = run(&mut mktemp)
            .context("creating a scratch directory for initdb (as the PostgreSQL OS user)")?;
        Ok(InitdbDir {
            path: PathBuf::from(path.trim()),
        })
    }
}

impl Drop for InitdbDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            warn!("removing {}: {e}", self.path.display());
        }
    }
}
