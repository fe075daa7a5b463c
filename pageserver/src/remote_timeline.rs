//! Timelines in remote storage (docs/remote-storage.md).
//!
//! Layout, under the remote storage's root (`<gen>` is a generation as 8
//! hex digits):
//!
//! ```text
//! tenants/<tenant_id>/generations/<gen>                          (empty: an attach)
//! tenants/<tenant_id>/timelines/<timeline_id>/index_part.json-<gen>
//! tenants/<tenant_id>/timelines/<timeline_id>/<layer file name>-<gen>
//! tenants/<tenant_id>/timelines/<timeline_id>/deleted            (a deletion under way)
//! ```
//!
//! Objects written before generations have no suffix (generation 0).
//!
//! A tenant's generation goes up at every attach, and every object a
//! pageserver writes carries its own, so two pageservers attached to one
//! tenant never overwrite each other's objects; a timeline's current index
//! is the one of the highest generation. The index names the timeline's
//! layers (with their sizes and the generation of the object holding
//! each) and holds its metadata file, whose disk-consistent LSN is the
//! timeline's remote consistent LSN. Rules:
//! - a layer is uploaded before any index that names it;
//! - a layer is deleted remotely only after an index that no longer names
//!   it has been uploaded, and after a check that no generation above the
//!   pageserver's own has been attached (an attach writes its marker before
//!   it reads any index, so it read the new index or a later one). A
//!   pageserver that finds a newer generation is stale for the tenant: it
//!   never uploads or deletes anything of it again;
//! - an index only names layers at or below its disk-consistent LSN;
//! - a timeline is deleted remotely as: tombstone, indexes, layers,
//!   tombstone. Attach skips (and finishes deleting) a timeline with a
//!   tombstone, so a crash anywhere in between leaves the tenant
//!   attachable.
//!
//! So the newest index always describes a loadable timeline: attach
//! downloads it and its layers, and the safekeepers keep the WAL above its
//! LSN.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use remote_storage::{GenericRemoteStorage, RemoteError, RemotePath};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::{TenantId, TimelineId};

use crate::tenant::layer::LayerName;
use crate::tenant::timeline::Timeline;
use crate::tenant::{Tenant, TenantState};

mod index_part;
pub use index_part::{
    index_generation, Generation, IndexError, IndexPart, LayerFile, INDEX_FILE_NAME,
};

/// How often the uploader looks for new layers.
const UPLOAD_INTERVAL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The object that marks a timeline as being deleted.
pub const TOMBSTONE_NAME: &str = "deleted";
const GENERATIONS_DIR: &str = "generations";
const TIMELINES_DIR: &str = "timelines";
/// The file in a tenant's local directory holding its generation.
pub const GENERATION_FILE_NAME: &str = "generation";

pub fn tenant_path(tenant_id: TenantId) -> RemotePath {
    RemotePath::new(&format!("tenants/{tenant_id}")).expect("valid path")
}

pub fn timeline_path(tenant_id: TenantId, timeline_id: TimelineId) -> RemotePath {
    RemotePath::new(&format!(
        "tenants/{tenant_id}/{TIMELINES_DIR}/{timeline_id}"
    ))
    .expect("valid path")
}

fn generations_path(tenant_id: TenantId) -> RemotePath {
    RemotePath::new(&format!("tenants/{tenant_id}/{GENERATIONS_DIR}")).expect("valid path")
}

/// `tenants/<t>/generations/<gen>`: written by the attach that took `gen`.
pub fn generation_marker_path(tenant_id: TenantId, generation: Generation) -> RemotePath {
    RemotePath::new(&format!(
        "tenants/{tenant_id}/{GENERATIONS_DIR}/{generation}"
    ))
    .expect("valid path")
}

pub fn index_path(
    tenant_id: TenantId,
    timeline_id: TimelineId,
    generation: Generation,
) -> RemotePath {
    timeline_path(tenant_id, timeline_id)
        .join(&generation.object_name(INDEX_FILE_NAME))
        .expect("valid path")
}

pub fn layer_path(
    tenant_id: TenantId,
    timeline_id: TimelineId,
    name: &LayerName,
    generation: Generation,
) -> RemotePath {
    timeline_path(tenant_id, timeline_id)
        .join(&generation.object_name(&name.to_string()))
        .expect("valid path")
}

pub fn tombstone_path(tenant_id: TenantId, timeline_id: TimelineId) -> RemotePath {
    timeline_path(tenant_id, timeline_id)
        .join(TOMBSTONE_NAME)
        .expect("valid path")
}

/// The generation kept in the tenant directory `dir`; `Ok(None)` if the
/// file is missing (a tenant from before generations).
pub fn read_local_generation(dir: &Path) -> anyhow::Result<Option<Generation>> {
    let path = dir.join(GENERATION_FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    };
    match Generation::parse_hex(text.trim()) {
        Some(g) if g != Generation::LEGACY => Ok(Some(g)),
        _ => anyhow::bail!(
            "{} holds {:?}, not a generation (8 hex digits, above 0)",
            path.display(),
            text.chars().take(40).collect::<String>()
        ),
    }
}

/// Write the tenant's generation into its directory `dir`: a temporary
/// file, fsync, rename, fsync of the directory.
pub fn write_local_generation(dir: &Path, generation: Generation) -> anyhow::Result<()> {
    use std::io::Write;
    let path = dir.join(GENERATION_FILE_NAME);
    let tmp = dir.join(format!("{GENERATION_FILE_NAME}.___temp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{generation}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        crate::tenant::metadata::fsync_dir(dir)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// What remote storage holds of one timeline.
#[derive(Debug, Default)]
pub struct TimelineListing {
    /// The generations of its index objects.
    pub indexes: BTreeSet<Generation>,
    /// A deletion of it began.
    pub tombstone: bool,
    /// Every object under its prefix.
    pub objects: Vec<RemotePath>,
}

impl TimelineListing {
    fn add(&mut self, path: RemotePath, name: &str) {
        if name == TOMBSTONE_NAME {
            self.tombstone = true;
        } else if let Some(g) = index_generation(name) {
            self.indexes.insert(g);
        }
        self.objects.push(path);
    }

    /// The generation of the index to read: the highest.
    pub fn latest_index(&self) -> Option<Generation> {
        self.indexes.last().copied()
    }
}

/// What remote storage holds of a tenant.
#[derive(Debug, Default)]
pub struct TenantListing {
    /// Generation markers: one per attach.
    pub markers: BTreeSet<Generation>,
    pub timelines: BTreeMap<TimelineId, TimelineListing>,
}

impl TenantListing {
    pub fn is_empty(&self) -> bool {
        self.markers.is_empty() && self.timelines.is_empty()
    }

    /// The highest generation seen, of a marker or of an index.
    pub fn highest_generation(&self) -> Option<Generation> {
        let indexes = self.timelines.values().filter_map(|t| t.latest_index());
        self.markers.iter().copied().chain(indexes).max()
    }
}

/// List everything remote storage holds of a tenant. Object names that do
/// not fit the layout are skipped with a warning.
pub async fn list_tenant(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
) -> anyhow::Result<TenantListing> {
    let prefix = tenant_path(tenant_id);
    let objects = storage
        .list(Some(&prefix))
        .await
        .with_context(|| format!("listing {prefix}"))?;
    let base = format!("{prefix}/");
    let mut out = TenantListing::default();
    for path in objects {
        let Some(rest) = path.as_str().strip_prefix(&base) else {
            warn!(%tenant_id, "ignoring {path} in remote storage");
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [GENERATIONS_DIR, name] => match Generation::parse_hex(name) {
                Some(g) if g != Generation::LEGACY => {
                    out.markers.insert(g);
                }
                _ => warn!(%tenant_id, "ignoring {path} in remote storage: not a generation"),
            },
            [TIMELINES_DIR, id, name] => match id.parse::<TimelineId>() {
                Ok(id) => {
                    let name = (*name).to_owned();
                    out.timelines.entry(id).or_default().add(path, &name);
                }
                Err(_) => warn!(%tenant_id, "ignoring {path} in remote storage"),
            },
            _ => warn!(%tenant_id, "ignoring {path} in remote storage"),
        }
    }
    Ok(out)
}

/// List what remote storage holds of one timeline.
pub async fn list_timeline(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> anyhow::Result<TimelineListing> {
    let prefix = timeline_path(tenant_id, timeline_id);
    let objects = storage
        .list(Some(&prefix))
        .await
        .with_context(|| format!("listing {prefix}"))?;
    let base = format!("{prefix}/");
    let mut out = TimelineListing::default();
    for path in objects {
        match path.as_str().strip_prefix(&base) {
            Some(name) if !name.contains('/') => {
                let name = name.to_owned();
                out.add(path, &name);
            }
            _ => warn!(%tenant_id, %timeline_id, "ignoring {path} in remote storage"),
        }
    }
    Ok(out)
}

/// The highest generation marker of the tenant.
pub async fn highest_marker(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
) -> anyhow::Result<Option<Generation>> {
    let prefix = generations_path(tenant_id);
    let objects = storage
        .list(Some(&prefix))
        .await
        .with_context(|| format!("listing {prefix}"))?;
    let base = format!("{prefix}/");
    let mut highest = None;
    for path in objects {
        let generation = path
            .as_str()
            .strip_prefix(&base)
            .and_then(Generation::parse_hex)
            .filter(|g| *g != Generation::LEGACY);
        match generation {
            Some(g) => highest = highest.max(Some(g)),
            None => warn!(%tenant_id, "ignoring {path} in remote storage: not a generation"),
        }
    }
    Ok(highest)
}

/// Write the marker of `generation` (an empty object).
pub async fn write_marker(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    generation: Generation,
) -> anyhow::Result<()> {
    let path = generation_marker_path(tenant_id, generation);
    storage
        .upload(&path, Bytes::new())
        .await
        .with_context(|| format!("writing the generation marker {path}"))
}

/// Download and parse the timeline's index of `generation`; `Ok(None)` if
/// there is none. A layer of a generation above the index's is an error.
pub async fn download_index(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    generation: Generation,
) -> anyhow::Result<Option<IndexPart>> {
    let path = index_path(tenant_id, timeline_id, generation);
    let bytes = match storage.download(&path).await {
        Ok(bytes) => bytes,
        Err(RemoteError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("downloading {path}"))),
    };
    let index = IndexPart::parse(&bytes)?;
    if let Some((name, file)) = index
        .layers
        .iter()
        .find(|(_, file)| file.generation > generation)
    {
        return Err(anyhow::Error::new(IndexError::from_message(format!(
            "layer {name} of generation {} in the index of generation {generation}",
            file.generation
        )))
        .context(format!("in {path}")));
    }
    Ok(Some(index))
}

/// A timeline as remote storage has it.
pub enum RemoteTimeline {
    /// Its index of the highest generation.
    Live {
        generation: Generation,
        index: IndexPart,
    },
    /// A deletion of it began (a tombstone).
    Deleted,
    /// It cannot be attached: no index, or a malformed one.
    Broken(anyhow::Error),
}

/// The timelines in `listing`, each with its current index (or why it
/// cannot be attached). Errors of the storage itself are returned.
pub async fn load_timelines(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    listing: &TenantListing,
) -> anyhow::Result<BTreeMap<TimelineId, RemoteTimeline>> {
    let mut out = BTreeMap::new();
    for (id, timeline) in &listing.timelines {
        let state = if timeline.tombstone {
            RemoteTimeline::Deleted
        } else if let Some(generation) = timeline.latest_index() {
            match download_index(storage, tenant_id, *id, generation).await {
                Ok(Some(index)) => RemoteTimeline::Live { generation, index },
                Ok(None) => RemoteTimeline::Broken(anyhow::anyhow!(
                    "timeline {id}: its {INDEX_FILE_NAME} of generation {generation} vanished while attaching"
                )),
                Err(e) if e.downcast_ref::<IndexError>().is_some() => RemoteTimeline::Broken(e),
                Err(e) => return Err(e),
            }
        } else {
            RemoteTimeline::Broken(anyhow::anyhow!(
                "timeline {id} has objects in remote storage but no {INDEX_FILE_NAME}"
            ))
        };
        out.insert(*id, state);
    }
    Ok(out)
}

/// Download what `index` names into `dir` (which exists): the layers,
/// checking their sizes, then the metadata file. Returns the bytes
/// downloaded.
pub async fn download_timeline(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    index: &IndexPart,
    dir: &std::path::Path,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for (name, file) in &index.layers {
        let path = layer_path(tenant_id, timeline_id, name, file.generation);
        let local = dir.join(name.to_string());
        let got = storage
            .download_to_file(&path, &local)
            .await
            .map_err(|e| anyhow::anyhow!("downloading layer {name} ({path}): {e}"))?;
        if got != file.file_size {
            anyhow::bail!(
                "layer {name} is {got} bytes in remote storage, the index says {}",
                file.file_size
            );
        }
        total += got;
    }
    let metadata = index.metadata.clone();
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || metadata.save(&dir)).await??;
    Ok(total)
}

/// Refused because a newer generation of the tenant has been attached.
#[derive(Debug, thiserror::Error)]
#[error(
    "tenant {tenant_id}: this pageserver's generation {own} is stale, generation {newer} has been attached since; it uploads and deletes nothing of the tenant any more"
)]
pub struct StaleGeneration {
    pub tenant_id: TenantId,
    pub own: u32,
    pub newer: u32,
}

/// A tenant's generation on this pageserver, shared by its timelines'
/// uploaders: whether its marker is written, and whether a newer
/// generation has been seen (then nothing is uploaded or deleted again).
#[derive(Debug)]
pub struct RemoteTenant {
    pub tenant_id: TenantId,
    generation: Generation,
    newer: OnceLock<Generation>,
    marker: tokio::sync::OnceCell<()>,
}

impl RemoteTenant {
    pub fn new(tenant_id: TenantId, generation: Generation) -> Arc<RemoteTenant> {
        Arc::new(RemoteTenant {
            tenant_id,
            generation,
            newer: OnceLock::new(),
            marker: tokio::sync::OnceCell::new(),
        })
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The newer generation seen in remote storage, if any.
    pub fn newer_generation(&self) -> Option<Generation> {
        self.newer.get().copied()
    }

    /// The error for what a stale pageserver is refused.
    pub fn stale_error(&self) -> Option<StaleGeneration> {
        self.newer_generation().map(|newer| StaleGeneration {
            tenant_id: self.tenant_id,
            own: self.generation.0,
            newer: newer.0,
        })
    }

    /// Remember that `newer` exists: said once in the log and counted.
    pub fn mark_stale(&self, newer: Generation) {
        if newer > self.generation && self.newer.set(newer).is_ok() {
            warn!(
                tenant_id = %self.tenant_id,
                "generation {} of the tenant has been attached, this pageserver's is {}: it stops uploading and deleting anything of the tenant (reads are still served from local data)",
                newer.0,
                self.generation.0
            );
            crate::metrics::get().remote_stale_tenants.inc();
        }
    }

    /// The marker was written (by the attach that took the generation).
    pub fn set_marker_written(&self) {
        let _ = self.marker.set(());
    }

    /// Write the generation's marker, once (a restart writes it again:
    /// the same empty object).
    pub async fn ensure_marker(&self, storage: &GenericRemoteStorage) -> anyhow::Result<()> {
        self.marker
            .get_or_try_init(|| write_marker(storage, self.tenant_id, self.generation))
            .await
            .map(|_| ())
    }

    /// Whether this generation is still the tenant's highest (lists the
    /// markers; a stale one stays stale).
    pub async fn is_current(&self, storage: &GenericRemoteStorage) -> anyhow::Result<bool> {
        if self.newer_generation().is_some() {
            return Ok(false);
        }
        if let Some(highest) = highest_marker(storage, self.tenant_id).await? {
            if highest > self.generation {
                self.mark_stale(highest);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `Ok` if this generation is current, else a [`StaleGeneration`].
    pub async fn check_current(&self, storage: &GenericRemoteStorage) -> anyhow::Result<()> {
        if self.is_current(storage).await? {
            return Ok(());
        }
        match self.stale_error() {
            Some(e) => Err(e.into()),
            None => anyhow::bail!("tenant {}: generation check failed", self.tenant_id),
        }
    }
}

/// First step of a timeline's deletion: after a check that this
/// generation is current, the tombstone. From here on attach skips the
/// timeline (and finishes deleting it).
pub async fn mark_timeline_deleted(
    storage: &GenericRemoteStorage,
    tenant: &RemoteTenant,
    timeline_id: TimelineId,
) -> anyhow::Result<()> {
    tenant.check_current(storage).await?;
    let path = tombstone_path(tenant.tenant_id, timeline_id);
    storage
        .upload(&path, Bytes::new())
        .await
        .with_context(|| format!("uploading {path}"))
}

/// The rest of a timeline's deletion, once its tombstone is up: its index
/// objects, then the other objects (layers), then the tombstone. A crash
/// anywhere leaves the tombstone, with which attach skips the timeline.
pub async fn finish_timeline_deletion(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> anyhow::Result<()> {
    let listing = list_timeline(storage, tenant_id, timeline_id).await?;
    let tombstone = tombstone_path(tenant_id, timeline_id);
    let (indexes, others): (Vec<RemotePath>, Vec<RemotePath>) = listing
        .objects
        .into_iter()
        .filter(|p| *p != tombstone)
        .partition(|p| index_generation(p.object_name()).is_some());
    storage
        .delete_many(&indexes)
        .await
        .with_context(|| format!("deleting the indexes of {tenant_id}/{timeline_id}"))?;
    storage
        .delete_many(&others)
        .await
        .with_context(|| format!("deleting the layers of {tenant_id}/{timeline_id}"))?;
    storage
        .delete(&tombstone)
        .await
        .with_context(|| format!("deleting {tombstone}"))?;
    Ok(())
}

/// Delete a timeline from remote storage in the order that keeps the
/// tenant attachable: [`mark_timeline_deleted`], then
/// [`finish_timeline_deletion`]. Refused if this generation is stale.
pub async fn delete_timeline(
    storage: &GenericRemoteStorage,
    tenant: &RemoteTenant,
    timeline_id: TimelineId,
) -> anyhow::Result<()> {
    mark_timeline_deleted(storage, tenant, timeline_id).await?;
    finish_timeline_deletion(storage, tenant.tenant_id, timeline_id).await
}

/// Retry `op` with exponential backoff until it succeeds or `cancel`
/// fires (`None`). An operation under way is never abandoned: `cancel` is
/// looked at between attempts.
async fn retry<T, F, Fut>(what: &str, cancel: &CancellationToken, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        match op().await {
            Ok(v) => {
                if failures > 0 {
                    info!("{what}: succeeded after {failures} failures");
                }
                return Some(v);
            }
            Err(e) => {
                failures += 1;
                crate::metrics::get().remote_upload_failures.inc();
                if failures == 1 || failures.is_power_of_two() {
                    warn!("{what} failed ({failures} times, retrying in {backoff:?}): {e:#}");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What an upload round found.
enum Round {
    /// The index in remote storage matches the timeline.
    UpToDate,
    /// A layer file went away before it was uploaded (GC): look again.
    Changed,
    /// A newer generation exists: upload and delete nothing more.
    Stale,
}

/// What the uploader knows of the timeline's objects.
struct UploaderState {
    /// The last index uploaded (or found at start).
    uploaded: Option<IndexPart>,
    /// Layers uploaded by a round that then found a layer gone (GC) and
    /// started over: in the bucket, in no index yet.
    unindexed: BTreeMap<LayerName, LayerFile>,
    /// Index objects of older generations, deleted once this generation's
    /// index is up and found current.
    older_indexes: Vec<Generation>,
}

/// Keep the timeline's remote copy up to date until `cancel` fires:
/// upload new layers, then the index, then (if no newer generation has
/// been attached) delete the layers the new index no longer names. Every
/// remote operation is retried with backoff, so an object store that is
/// down for a while delays uploads but loses nothing. `cancel` is looked
/// at between operations only: once the task has ended, none of its
/// uploads can still land.
///
/// A remote index that exists but cannot be parsed marks the tenant
/// broken: the uploader stops and deletes nothing. A newer generation
/// makes the tenant stale ([`RemoteTenant::mark_stale`]): the uploader
/// stops. A tombstone (a deletion under way) stops it too.
pub async fn run_uploader(
    tenant: Arc<Tenant>,
    timeline: Arc<Timeline>,
    storage: GenericRemoteStorage,
    remote_tenant: Arc<RemoteTenant>,
    cancel: CancellationToken,
) {
    let (tenant_id, timeline_id) = (timeline.tenant_id, timeline.timeline_id);
    let own = remote_tenant.generation();
    let what = format!("writing the generation marker of {tenant_id}");
    if retry(&what, &cancel, || remote_tenant.ensure_marker(&storage))
        .await
        .is_none()
    {
        return;
    }
    let what = format!("checking the generations of {tenant_id}");
    match retry(&what, &cancel, || remote_tenant.is_current(&storage)).await {
        Some(true) => {}
        None | Some(false) => return,
    }
    let what = format!("reading the remote index of {tenant_id}/{timeline_id}");
    let remote = retry(&what, &cancel, || async {
        let listing = list_timeline(&storage, tenant_id, timeline_id).await?;
        let Some(generation) = listing.latest_index() else {
            return Ok(Ok((listing, None)));
        };
        match download_index(&storage, tenant_id, timeline_id, generation).await {
            Ok(index) => Ok(Ok((listing, index.map(|i| (generation, i))))),
            Err(e) if e.downcast_ref::<IndexError>().is_some() => Ok(Err(e)),
            Err(e) => Err(e),
        }
    })
    .await;
    let (listing, latest) = match remote {
        None => return,
        Some(Ok(found)) => found,
        Some(Err(e)) => {
            tenant.set_broken(format!("timeline {timeline_id} in remote storage: {e:#}"));
            return;
        }
    };
    if listing.tombstone {
        warn!(
            "the timeline is being deleted in remote storage (it has a tombstone): not uploading"
        );
        return;
    }
    if let Some((generation, _)) = &latest {
        if *generation > own {
            remote_tenant.mark_stale(*generation);
            return;
        }
    }
    let mut state = UploaderState {
        uploaded: latest.map(|(_, index)| index),
        unindexed: BTreeMap::new(),
        older_indexes: listing
            .indexes
            .iter()
            .copied()
            .filter(|g| *g < own)
            .collect(),
    };
    if let Some(index) = &state.uploaded {
        timeline.set_remote_consistent_lsn(index.metadata.disk_consistent.last);
    }
    loop {
        if tenant.state() != TenantState::Active || remote_tenant.newer_generation().is_some() {
            return;
        }
        match upload_round(&timeline, &storage, &remote_tenant, &mut state, &cancel).await {
            None | Some(Round::Stale) => return,
            Some(Round::Changed) => continue,
            Some(Round::UpToDate) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(UPLOAD_INTERVAL) => {}
        }
    }
}

/// One round: upload what the timeline has and the bucket lacks, then the
/// index, then check the generation, then delete what is in the bucket
/// and no longer named: layers of the previous index, layers an abandoned
/// round uploaded (`unindexed`) that GC has removed since, and index
/// objects of older generations.
async fn upload_round(
    timeline: &Timeline,
    storage: &GenericRemoteStorage,
    remote_tenant: &RemoteTenant,
    state: &mut UploaderState,
    cancel: &CancellationToken,
) -> Option<Round> {
    let (tenant_id, timeline_id) = (timeline.tenant_id, timeline.timeline_id);
    let own = remote_tenant.generation();
    let (metadata, files) = timeline.remote_snapshot();
    let mut previous: BTreeMap<LayerName, LayerFile> = state
        .uploaded
        .as_ref()
        .map(|i| i.layers.clone())
        .unwrap_or_default();
    previous.extend(state.unindexed.iter().map(|(n, f)| (n.clone(), *f)));
    if state.unindexed.is_empty()
        && state.uploaded.as_ref().is_some_and(|i| {
            i.metadata == metadata
                && i.layers.len() == files.len()
                && files.iter().all(|(n, _)| i.layers.contains_key(n))
        })
    {
        return Some(Round::UpToDate);
    }
    let mut layers = BTreeMap::new();
    for (name, local) in &files {
        if let Some(file) = previous.get(name) {
            layers.insert(name.clone(), *file);
            continue;
        }
        if cancel.is_cancelled() {
            return None;
        }
        let path = layer_path(tenant_id, timeline_id, name, own);
        let size = match upload_layer(storage, &path, local, cancel).await? {
            Some(size) => size,
            None => return Some(Round::Changed),
        };
        let file = LayerFile {
            file_size: size,
            generation: own,
        };
        state.unindexed.insert(name.clone(), file);
        layers.insert(name.clone(), file);
    }
    let index = IndexPart {
        metadata: metadata.clone(),
        layers,
    };
    let bytes = index.to_bytes();
    let path = index_path(tenant_id, timeline_id, own);
    let what = format!("uploading {path}");
    retry(&what, cancel, || async {
        Ok(storage.upload(&path, bytes.clone()).await?)
    })
    .await?;
    timeline.set_remote_consistent_lsn(metadata.disk_consistent.last);
    crate::metrics::get().remote_index_uploads.inc();
    let mut gone: Vec<RemotePath> = previous
        .iter()
        .filter(|(name, file)| index.layers.get(*name) != Some(*file))
        .map(|(name, file)| layer_path(tenant_id, timeline_id, name, file.generation))
        .collect();
    let layers_gone = gone.len();
    gone.extend(
        state
            .older_indexes
            .iter()
            .map(|g| index_path(tenant_id, timeline_id, *g)),
    );
    state.uploaded = Some(index);
    state.unindexed.clear();
    // Deleting is safe only while no attach of a newer generation has
    // happened: such an attach may have read an older index that names
    // what we would delete. It wrote its marker before reading.
    let what = format!("checking the generations of {tenant_id}");
    if !retry(&what, cancel, || remote_tenant.is_current(storage)).await? {
        return Some(Round::Stale);
    }
    if !gone.is_empty() {
        let what = format!(
            "deleting {} objects of {tenant_id}/{timeline_id} from remote storage",
            gone.len()
        );
        retry(&what, cancel, || async {
            Ok(storage.delete_many(&gone).await?)
        })
        .await?;
        state.older_indexes.clear();
        crate::metrics::get()
            .remote_layers_deleted
            .inc_by(layers_gone as u64);
    }
    Some(Round::UpToDate)
}

/// Upload one layer file as `path`; `Some(None)` if the local file is gone
/// (removed by GC since the snapshot), `None` if cancelled.
async fn upload_layer(
    storage: &GenericRemoteStorage,
    path: &RemotePath,
    local: &PathBuf,
    cancel: &CancellationToken,
) -> Option<Option<u64>> {
    let what = format!("uploading {path}");
    retry(&what, cancel, || async {
        let data = match tokio::fs::read(local).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", local.display())),
        };
        let size = data.len() as u64;
        storage.upload(path, Bytes::from(data)).await?;
        crate::metrics::get().remote_bytes_uploaded.inc_by(size);
        Ok(Some(size))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, KeyRange};
    use crate::tenant::metadata::TimelineMetadata;
    use crate::tenant::timeline::RecordLsn;
    use postgres_format::PgMajorVersion;
    use utils::Lsn;

    fn metadata(dc: u64) -> TimelineMetadata {
        TimelineMetadata {
            disk_consistent: RecordLsn {
                last: Lsn(dc),
                prev: Lsn(dc - 8),
            },
            ancestor: None,
            start_lsn: Lsn(0x100),
            gc_horizon: Lsn::INVALID,
            pg_version: PgMajorVersion::V15,
        }
    }

    fn layer() -> LayerName {
        LayerName::Delta {
            key_range: KeyRange::new(Key::MIN, Key::twophase_file(7)),
            lsn_range: Lsn(0x100)..Lsn(0x2001),
        }
    }

    #[test]
    fn index_round_trip_and_bad_input() {
        let layer = layer();
        let index = IndexPart {
            metadata: metadata(0x2000),
            layers: BTreeMap::from([(
                layer.clone(),
                LayerFile {
                    file_size: 4096,
                    generation: Generation(3),
                },
            )]),
        };
        let bytes = index.to_bytes();
        assert_eq!(IndexPart::parse(&bytes).unwrap(), index);

        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
        let bad = [
            text.replace("\"version\": 2", "\"version\": 9"),
            text.replace("4096", "0"),
            text.replace(&layer.to_string(), "not-a-layer"),
            text.replace("\"layers\"", "\"layerz\""),
            // Version 2 needs each layer's generation.
            text.replace(",\n      \"generation\": 3", ""),
            // Version 1 has none.
            text.replace("\"version\": 2", "\"version\": 1"),
            text[..text.len() / 2].to_owned(),
            String::new(),
        ];
        for b in bad {
            assert!(IndexPart::parse(b.as_bytes()).is_err(), "{b}");
        }
        // A flipped metadata byte fails its checksum.
        let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let md = json["metadata"].as_str().unwrap().to_owned();
        let flipped = format!(
            "{}{}",
            if md.starts_with('0') { "1" } else { "0" },
            &md[1..]
        );
        json["metadata"] = serde_json::Value::from(flipped);
        assert!(IndexPart::parse(&serde_json::to_vec(&json).unwrap()).is_err());
        // A layer above the disk-consistent LSN.
        let above = IndexPart {
            metadata: metadata(0x1000),
            layers: index.layers.clone(),
        };
        assert!(IndexPart::parse(&above.to_bytes()).is_err());
    }

    #[test]
    fn version_1_indexes_are_read_as_generation_0() {
        let layer = layer();
        let md = metadata(0x2000);
        let v1 = serde_json::json!({
            "version": 1,
            "metadata": hex::encode(md.encode()),
            "disk_consistent_lsn": md.disk_consistent.last,
            "layers": { layer.to_string(): { "file_size": 4096 } },
        });
        let index = IndexPart::parse(&serde_json::to_vec(&v1).unwrap()).unwrap();
        assert_eq!(
            index.layers[&layer],
            LayerFile {
                file_size: 4096,
                generation: Generation::LEGACY
            }
        );
        // Written back as version 2, it names the same objects.
        let again = IndexPart::parse(&index.to_bytes()).unwrap();
        assert_eq!(again, index);
    }

    #[test]
    fn object_names_carry_the_generation() {
        let tenant = TenantId::generate();
        let timeline = TimelineId::generate();
        let g = Generation(0x1f);
        assert_eq!(g.to_string(), "0000001f");
        assert_eq!(
            index_path(tenant, timeline, g).object_name(),
            "index_part.json-0000001f"
        );
        assert_eq!(
            index_path(tenant, timeline, Generation::LEGACY).object_name(),
            "index_part.json"
        );
        let name = layer();
        assert_eq!(
            layer_path(tenant, timeline, &name, g).object_name(),
            format!("{name}-0000001f")
        );
        assert_eq!(
            generation_marker_path(tenant, g).as_str(),
            format!("tenants/{tenant}/generations/0000001f")
        );
        for (name, expected) in [
            ("index_part.json", Some(Generation::LEGACY)),
            ("index_part.json-0000001f", Some(g)),
            ("index_part.json-0000001F", Some(g)),
            ("index_part.json-00000000", None),
            ("index_part.json-1f", None),
            ("index_part.json-0000001f0", None),
            ("index_part.json-+000001f", None),
            ("index_part.json-é000001", None),
            ("index_part.json.tmp", None),
            ("index_part.jso", None),
            ("deleted", None),
            ("", None),
        ] {
            assert_eq!(index_generation(name), expected, "{name}");
        }
        assert_eq!(Generation(u32::MAX).next(), None);
        assert_eq!(Generation(1).next(), Some(Generation(2)));
    }

    #[test]
    fn local_generation_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_local_generation(dir.path()).unwrap(), None);
        write_local_generation(dir.path(), Generation(7)).unwrap();
        assert_eq!(
            read_local_generation(dir.path()).unwrap(),
            Some(Generation(7))
        );
        for bad in ["", "7", "00000000\n", "zzzzzzzz", "0000000700"] {
            std::fs::write(dir.path().join(GENERATION_FILE_NAME), bad).unwrap();
            assert!(read_local_generation(dir.path()).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn listings_skip_odd_names_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let storage = GenericRemoteStorage::LocalFs(
            remote_storage::LocalFs::new(&dir.path().join("bucket")).unwrap(),
        );
        let tenant = TenantId::generate();
        let timeline = TimelineId::generate();
        let put = |p: String| {
            let storage = storage.clone();
            async move {
                storage
                    .upload(&RemotePath::new(&p).unwrap(), Bytes::from_static(b"x"))
                    .await
                    .unwrap()
            }
        };
        let t = format!("tenants/{tenant}");
        put(format!("{t}/generations/00000002")).await;
        put(format!("{t}/generations/zz")).await;
        put(format!("{t}/generations/00000000")).await;
        put(format!("{t}/stray")).await;
        put(format!("{t}/timelines/not-an-id/x")).await;
        put(format!("{t}/timelines/{timeline}/index_part.json")).await;
        put(format!("{t}/timelines/{timeline}/index_part.json-00000003")).await;
        put(format!("{t}/timelines/{timeline}/deep/er")).await;
        put(format!("{t}/timelines/{timeline}/deleted")).await;
        let listing = list_tenant(&storage, tenant).await.unwrap();
        assert_eq!(
            listing.markers,
            BTreeSet::from([Generation(2)]),
            "{listing:?}"
        );
        assert_eq!(listing.timelines.len(), 1);
        let tl = &listing.timelines[&timeline];
        assert!(tl.tombstone);
        assert_eq!(
            tl.indexes,
            BTreeSet::from([Generation::LEGACY, Generation(3)])
        );
        assert_eq!(listing.highest_generation(), Some(Generation(3)));
        assert_eq!(
            highest_marker(&storage, tenant).await.unwrap(),
            Some(Generation(2))
        );
        let one = list_timeline(&storage, tenant, timeline).await.unwrap();
        assert_eq!(one.latest_index(), Some(Generation(3)));
        assert!(one.tombstone);
        // A timeline path that is an object, not a prefix.
        let lone = TimelineId::generate();
        let lone_path = timeline_path(tenant, lone);
        storage
            .upload(&lone_path, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let listing = list_timeline(&storage, tenant, lone).await.unwrap();
        assert!(listing.indexes.is_empty() && !listing.tombstone);
    }
}
