//! A tenant: its timelines, stored under
//! `<workdir>/tenants/<tenant id>/timelines/<timeline id>/`, each directory
//! holding a `metadata` file ([`metadata`]) and the timeline's layer files.
//!
//! Creating a timeline (root or branch) writes only its metadata file, into
//! a temporary directory renamed into place. Loading reads every
//! timeline's metadata, then opens the timelines ancestors first; each
//! resumes at its disk-consistent LSN. A timeline whose metadata cannot be
//! read marks the whole tenant broken (with the reason); nothing is
//! deleted.

pub mod layer;
pub mod metadata;
pub mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use postgres_format::PgMajorVersion;
use tracing::warn;
use utils::{Lsn, TenantId, TimelineId};

use crate::tenant::layer::LayerName;
use crate::tenant::timeline::{
    Ancestor, BranchError, RecordLsn, StorageError, Timeline, TimelineConf,
};
use metadata::{fsync_dir, MetadataError, TimelineMetadata};

/// Failpoint: a branch point passed its checks and the branch is not
/// created yet (context: the tenant id).
pub const BRANCH_POINT_CHECKED: &str = "tenant::branch_point_checked";

/// Suffix of a timeline directory being created.
const TEMP_SUFFIX: &str = ".___temp";

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {tenant_id} is broken: {reason}")]
    Broken { tenant_id: TenantId, reason: String },
    #[error("timeline {0} not found")]
    NotFound(TimelineId),
    #[error("timeline {0} already exists")]
    AlreadyExists(TimelineId),
    #[error("timeline {timeline_id} has child timelines {children:?}")]
    HasChildren {
        timeline_id: TimelineId,
        children: Vec<TimelineId>,
    },
    #[error(transparent)]
    Branch(#[from] BranchError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> TenantError {
    move |source| TenantError::Io { context, source }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantState {
    Active,
    /// Loading failed; the reason. The tenant serves nothing.
    Broken(String),
}

pub struct Tenant {
    pub tenant_id: TenantId,
    dir: PathBuf,
    conf: TimelineConf,
    state: Mutex<TenantState>,
    timelines: Mutex<HashMap<TimelineId, Arc<Timeline>>>,
    /// Held by branch creation and by GC for their whole run, so that GC
    /// sees every branch point whose check passed against the old horizon,
    /// and a branch point is checked against the horizon GC last set.
    gc_branch_lock: Mutex<()>,
}

/// `<workdir>/tenants/<tenant_id>`.
pub fn tenant_dir(workdir: &Path, tenant_id: TenantId) -> PathBuf {
    workdir.join("tenants").join(tenant_id.to_string())
}

impl Tenant {
    fn timelines_dir(&self) -> PathBuf {
        self.dir.join("timelines")
    }

    /// `<workdir>/tenants/<tenant_id>/timelines/<timeline_id>`.
    pub fn timeline_dir(&self, timeline_id: TimelineId) -> PathBuf {
        self.timelines_dir().join(timeline_id.to_string())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> TenantState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn check_active(&self) -> Result<(), TenantError> {
        match self.state() {
            TenantState::Active => Ok(()),
            TenantState::Broken(reason) => Err(TenantError::Broken {
                tenant_id: self.tenant_id,
                reason,
            }),
        }
    }

    fn timelines_map(&self) -> std::sync::MutexGuard<'_, HashMap<TimelineId, Arc<Timeline>>> {
        self.timelines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new tenant with no timelines: creates its directory.
    pub fn create(
        workdir: &Path,
        tenant_id: TenantId,
        conf: TimelineConf,
    ) -> Result<Arc<Tenant>, TenantError> {
        let dir = tenant_dir(workdir, tenant_id);
        let timelines = dir.join("timelines");
        std::fs::create_dir_all(&timelines)
            .map_err(io_err(format!("creating {}", timelines.display())))?;
        for d in [&dir, &dir.parent().unwrap_or(workdir).to_path_buf()] {
            fsync_dir(d).map_err(io_err(format!("fsync of {}", d.display())))?;
        }
        Ok(Arc::new(Tenant {
            tenant_id,
            dir,
            conf,
            state: Mutex::new(TenantState::Active),
            timelines: Mutex::new(HashMap::new()),
            gc_branch_lock: Mutex::new(()),
        }))
    }

    /// Load a tenant and all its timelines from disk. Never fails: a tenant
    /// that cannot be loaded is returned [`TenantState::Broken`], with
    /// whatever timelines loaded before the failure not served.
    /// A tenant that could not be attached or loaded: it serves nothing and
    /// says why. Touches no files.
    pub fn broken(
        workdir: &Path,
        tenant_id: TenantId,
        conf: TimelineConf,
        reason: String,
    ) -> Arc<Tenant> {
        Arc::new(Tenant {
            tenant_id,
            dir: tenant_dir(workdir, tenant_id),
            conf,
            state: Mutex::new(TenantState::Broken(reason)),
            timelines: Mutex::new(HashMap::new()),
            gc_branch_lock: Mutex::new(()),
        })
    }

    /// Mark the tenant broken (its files stay as they are).
    pub fn set_broken(&self, reason: String) {
        warn!("tenant {} is broken: {reason}", self.tenant_id);
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = TenantState::Broken(reason);
    }

    pub fn load(workdir: &Path, tenant_id: TenantId, conf: TimelineConf) -> Arc<Tenant> {
        let tenant = Tenant {
            tenant_id,
            dir: tenant_dir(workdir, tenant_id),
            conf,
            state: Mutex::new(TenantState::Active),
            timelines: Mutex::new(HashMap::new()),
            gc_branch_lock: Mutex::new(()),
        };
        if let Err(e) = tenant.load_timelines() {
            warn!("tenant {tenant_id} is broken: {e}");
            *tenant.state.lock().unwrap_or_else(|p| p.into_inner()) =
                TenantState::Broken(e.to_string());
            tenant.timelines_map().clear();
        }
        Arc::new(tenant)
    }

    fn load_timelines(&self) -> Result<(), TenantError> {
        let dir = self.timelines_dir();
        let entries =
            std::fs::read_dir(&dir).map_err(io_err(format!("listing {}", dir.display())))?;
        let mut metadata: BTreeMap<TimelineId, TimelineMetadata> = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(TEMP_SUFFIX) {
                // An interrupted creation: never became a timeline.
                warn!("ignoring the unfinished timeline directory {name}");
                continue;
            }
            let Ok(timeline_id) = name.parse::<TimelineId>() else {
                warn!("ignoring {name} in {}", dir.display());
                continue;
            };
            metadata.insert(timeline_id, TimelineMetadata::load(&entry.path())?);
        }
        // Ancestors first.
        let mut pending = metadata;
        while !pending.is_empty() {
            let ready: Vec<TimelineId> = pending
                .iter()
                .filter(|(_, md)| match md.ancestor {
                    None => true,
                    Some((a, _)) => self.timelines_map().contains_key(&a),
                })
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                let missing: Vec<String> = pending
                    .iter()
                    .map(|(id, md)| format!("{id} (ancestor {:?})", md.ancestor.map(|a| a.0)))
                    .collect();
                return Err(TenantError::Io {
                    context: format!(
                        "timelines whose ancestor is missing or cyclic: {}",
                        missing.join(", ")
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            for id in ready {
                let md = pending.remove(&id).expect("listed above");
                let ancestor = md.ancestor.map(|(a, lsn)| Ancestor {
                    timeline: self.timelines_map()[&a].clone(),
                    lsn,
                });
                let timeline = Timeline::load(
                    self.tenant_id,
                    id,
                    md,
                    ancestor,
                    self.timeline_dir(id),
                    self.conf.clone(),
                )?;
                self.timelines_map().insert(id, Arc::new(timeline));
            }
        }
        Ok(())
    }

    pub fn get_timeline(&self, timeline_id: TimelineId) -> Result<Arc<Timeline>, TenantError> {
        self.check_active()?;
        self.timelines_map()
            .get(&timeline_id)
            .cloned()
            .ok_or(TenantError::NotFound(timeline_id))
    }

    /// All timelines, ordered by id.
    pub fn timelines(&self) -> Vec<Arc<Timeline>> {
        let mut v: Vec<_> = self.timelines_map().values().cloned().collect();
        v.sort_by_key(|t| t.timeline_id);
        v
    }

    fn create_timeline(
        &self,
        timeline_id: TimelineId,
        pg_version: PgMajorVersion,
        ancestor: Option<Ancestor>,
        start: RecordLsn,
    ) -> Result<Arc<Timeline>, TenantError> {
        let mut timelines = self.timelines_map();
        let dir = self.timeline_dir(timeline_id);
        if timelines.contains_key(&timeline_id) || dir.exists() {
            return Err(TenantError::AlreadyExists(timeline_id));
        }
        let tmp = self
            .timelines_dir()
            .join(format!("{timeline_id}{TEMP_SUFFIX}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(format!("removing {}", tmp.display())))?;
        }
        std::fs::create_dir(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let timeline = Timeline::create_persistent(
            self.tenant_id,
            timeline_id,
            pg_version,
            ancestor,
            start,
            tmp.clone(),
            self.conf.clone(),
        )?;
        drop(timeline);
        std::fs::rename(&tmp, &dir).map_err(io_err(format!("renaming {}", tmp.display())))?;
        let parent = self.timelines_dir();
        fsync_dir(&parent).map_err(io_err(format!("fsync of {}", parent.display())))?;
        // Open it from its final place.
        let md = TimelineMetadata::load(&dir)?;
        let ancestor = md.ancestor.map(|(a, lsn)| Ancestor {
            timeline: timelines[&a].clone(),
            lsn,
        });
        let timeline = Arc::new(Timeline::load(
            self.tenant_id,
            timeline_id,
            md,
            ancestor,
            dir,
            self.conf.clone(),
        )?);
        timelines.insert(timeline_id, timeline.clone());
        Ok(timeline)
    }

    /// A new timeline without ancestor whose history begins at `start`.
    pub fn create_root_timeline(
        &self,
        timeline_id: TimelineId,
        pg_version: PgMajorVersion,
        start: RecordLsn,
    ) -> Result<Arc<Timeline>, TenantError> {
        self.check_active()?;
        self.create_timeline(timeline_id, pg_version, None, start)
    }

    /// A branch of `ancestor_id` at `at`: writes only the new timeline's
    /// metadata file.
    pub fn branch_timeline(
        &self,
        ancestor_id: TimelineId,
        timeline_id: TimelineId,
        at: RecordLsn,
    ) -> Result<Arc<Timeline>, TenantError> {
        self.check_active()?;
        let _gc = self
            .gc_branch_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let ancestor = self.get_timeline(ancestor_id)?;
        ancestor.check_branch_point(at)?;
        utils::failpoint::hit(BRANCH_POINT_CHECKED, &self.tenant_id.to_string());
        let pg_version = ancestor.pg_version;
        self.create_timeline(
            timeline_id,
            pg_version,
            Some(Ancestor {
                timeline: ancestor,
                lsn: at.last,
            }),
            at,
        )
    }

    /// The timelines branched from `timeline_id`.
    pub fn children(&self, timeline_id: TimelineId) -> Vec<(TimelineId, Lsn)> {
        let mut v: Vec<(TimelineId, Lsn)> = self
            .timelines_map()
            .values()
            .filter_map(|t| {
                t.ancestor()
                    .filter(|a| a.timeline.timeline_id == timeline_id)
                    .map(|a| (t.timeline_id, a.lsn))
            })
            .collect();
        v.sort();
        v
    }

    /// GC of one timeline at `horizon`, keeping what its children's branch
    /// points need. Runs under the lock branch creation takes: a branch is
    /// either created before (and its point retained) or checked after
    /// (against the raised horizon).
    pub fn gc_timeline(
        &self,
        timeline_id: TimelineId,
        horizon: Lsn,
    ) -> Result<Vec<LayerName>, TenantError> {
        let _branching = self
            .gc_branch_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let timeline = self.get_timeline(timeline_id)?;
        let retain: Vec<Lsn> = self
            .children(timeline_id)
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        Ok(timeline.gc(horizon, &retain)?)
    }

    /// Delete a timeline and its directory; refused if it has children.
    pub fn delete_timeline(&self, timeline_id: TimelineId) -> Result<(), TenantError> {
        self.check_active()?;
        let children: Vec<TimelineId> = self
            .children(timeline_id)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        if !children.is_empty() {
            return Err(TenantError::HasChildren {
                timeline_id,
                children,
            });
        }
        let mut timelines = self.timelines_map();
        if timelines.remove(&timeline_id).is_none() {
            return Err(TenantError::NotFound(timeline_id));
        }
        let dir = self.timeline_dir(timeline_id);
        std::fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
        let parent = self.timelines_dir();
        fsync_dir(&parent).map_err(io_err(format!("fsync of {}", parent.display())))?;
        Ok(())
    }
}
