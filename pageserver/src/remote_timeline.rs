//! Timelines in remote storage (docs/remote-storage.md).
//!
//! Layout, under the remote storage's root:
//!
//! ```text
//! tenants/<tenant_id>/timelines/<timeline_id>/index_part.json
//! tenants/<tenant_id>/timelines/<timeline_id>/<layer file name>
//! ```
//!
//! The index names the timeline's layers (with their sizes) and holds its
//! metadata file, whose disk-consistent LSN is the timeline's remote
//! consistent LSN. Rules:
//! - a layer is uploaded before any index that names it;
//! - a layer is deleted remotely only after an index that no longer names
//!   it has been uploaded (a layer uploaded by a round that was abandoned,
//!   because GC removed another layer meanwhile, is remembered: it is
//!   deleted once an index is up without it, even if no index ever named
//!   it);
//! - an index only names layers at or below its disk-consistent LSN.
//!
//! So the newest index always describes a loadable timeline: attach
//! downloads it and its layers, and the safekeepers keep the WAL above its
//! LSN.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use remote_storage::{GenericRemoteStorage, RemoteError, RemotePath};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::{Lsn, TenantId, TimelineId};

use crate::tenant::layer::LayerName;
use crate::tenant::metadata::TimelineMetadata;
use crate::tenant::timeline::Timeline;
use crate::tenant::{Tenant, TenantState};

pub const INDEX_FILE_NAME: &str = "index_part.json";
const INDEX_VERSION: u32 = 1;
/// How often the uploader looks for new layers.
const UPLOAD_INTERVAL: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub fn tenant_path(tenant_id: TenantId) -> RemotePath {
    RemotePath::new(&format!("tenants/{tenant_id}")).expect("valid path")
}

pub fn timeline_path(tenant_id: TenantId, timeline_id: TimelineId) -> RemotePath {
    RemotePath::new(&format!("tenants/{tenant_id}/timelines/{timeline_id}")).expect("valid path")
}

fn object(
    tenant_id: TenantId,
    timeline_id: TimelineId,
    name: &str,
) -> Result<RemotePath, remote_storage::InvalidRemotePath> {
    timeline_path(tenant_id, timeline_id).join(name)
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct IndexPartJson {
    version: u32,
    /// The timeline's metadata file (128 bytes, CRC-checked), in hex.
    metadata: String,
    /// Informational: the metadata's disk-consistent LSN.
    disk_consistent_lsn: Lsn,
    layers: BTreeMap<String, LayerFileJson>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LayerFileJson {
    file_size: u64,
}

/// A timeline's `index_part.json`, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPart {
    pub metadata: TimelineMetadata,
    pub layers: BTreeMap<LayerName, u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {INDEX_FILE_NAME}: {0}")]
pub struct IndexError(String);

impl IndexPart {
    pub fn to_bytes(&self) -> Bytes {
        let json = IndexPartJson {
            version: INDEX_VERSION,
            metadata: hex::encode(self.metadata.encode()),
            disk_consistent_lsn: self.metadata.disk_consistent.last,
            layers: self
                .layers
                .iter()
                .map(|(name, size)| (name.to_string(), LayerFileJson { file_size: *size }))
                .collect(),
        };
        Bytes::from(serde_json::to_vec_pretty(&json).expect("serializable"))
    }

    /// Parse untrusted bytes: the version, the metadata's checksum, every
    /// layer name, and that no layer lies above the disk-consistent LSN.
    pub fn parse(bytes: &[u8]) -> Result<IndexPart, IndexError> {
        let json: IndexPartJson =
            serde_json::from_slice(bytes).map_err(|e| IndexError(e.to_string()))?;
        if json.version != INDEX_VERSION {
            return Err(IndexError(format!(
                "version {} (this pageserver reads version {INDEX_VERSION})",
                json.version
            )));
        }
        let raw = hex::decode(&json.metadata)
            .map_err(|e| IndexError(format!("metadata is not hex: {e}")))?;
        let metadata =
            TimelineMetadata::decode(&raw).map_err(|e| IndexError(format!("metadata: {e}")))?;
        if metadata.disk_consistent.last != json.disk_consistent_lsn {
            return Err(IndexError(format!(
                "disk_consistent_lsn {} disagrees with the metadata's {}",
                json.disk_consistent_lsn, metadata.disk_consistent.last
            )));
        }
        let limit = metadata.disk_consistent.last.0.saturating_add(1);
        let mut layers = BTreeMap::new();
        for (name, file) in json.layers {
            let layer: LayerName = name
                .parse()
                .map_err(|e| IndexError(format!("layer {name:?}: {e}")))?;
            if layer.lsn_range().end.0 > limit {
                return Err(IndexError(format!(
                    "layer {name} lies above the disk-consistent LSN {}",
                    metadata.disk_consistent.last
                )));
            }
            if file.file_size == 0 {
                return Err(IndexError(format!("layer {name} has size 0")));
            }
            layers.insert(layer, file.file_size);
        }
        Ok(IndexPart { metadata, layers })
    }
}

/// Download and parse a timeline's index; `Ok(None)` if there is none.
pub async fn download_index(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> anyhow::Result<Option<IndexPart>> {
    let path = object(tenant_id, timeline_id, INDEX_FILE_NAME)?;
    match storage.download(&path).await {
        Ok(bytes) => Ok(Some(IndexPart::parse(&bytes)?)),
        Err(RemoteError::NotFound(_)) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("downloading {path}"))),
    }
}

/// The timelines of a tenant in remote storage, with their index (or the
/// reason it cannot be used).
pub async fn list_timelines(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
) -> anyhow::Result<BTreeMap<TimelineId, anyhow::Result<IndexPart>>> {
    let prefix = tenant_path(tenant_id).join("timelines")?;
    let objects = storage.list(Some(&prefix)).await?;
    let mut ids = BTreeSet::new();
    for path in &objects {
        let rest = &path.as_str()[prefix.as_str().len() + 1..];
        let Some(id) = rest.split('/').next() else {
            continue;
        };
        match id.parse::<TimelineId>() {
            Ok(id) => {
                ids.insert(id);
            }
            Err(_) => warn!(%tenant_id, "ignoring {path} in remote storage"),
        }
    }
    let mut out = BTreeMap::new();
    for id in ids {
        let index = match download_index(storage, tenant_id, id).await {
            Ok(Some(index)) => Ok(index),
            Ok(None) => Err(anyhow::anyhow!(
                "timeline {id} has objects in remote storage but no {INDEX_FILE_NAME}"
            )),
            Err(e) => Err(e),
        };
        out.insert(id, index);
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
    for (name, size) in &index.layers {
        let path = object(tenant_id, timeline_id, &name.to_string())?;
        let local = dir.join(name.to_string());
        let got = storage
            .download_to_file(&path, &local)
            .await
            .map_err(|e| anyhow::anyhow!("downloading layer {name}: {e}"))?;
        if got != *size {
            anyhow::bail!("layer {name} is {got} bytes in remote storage, the index says {size}");
        }
        total += got;
    }
    let metadata = index.metadata.clone();
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || metadata.save(&dir)).await??;
    Ok(total)
}

/// Delete everything of a timeline in remote storage.
pub async fn delete_timeline(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> anyhow::Result<()> {
    let prefix = timeline_path(tenant_id, timeline_id);
    let mut objects = storage.list(Some(&prefix)).await?;
    // The index last: until it goes, the timeline stays attachable.
    let index = object(tenant_id, timeline_id, INDEX_FILE_NAME)?;
    objects.retain(|p| *p != index);
    storage.delete_many(&objects).await?;
    storage.delete(&index).await?;
    Ok(())
}

/// Retry `op` with exponential backoff until it succeeds or `cancel`
/// fires (`None`).
async fn retry<T, F, Fut>(what: &str, cancel: &CancellationToken, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
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
}

/// Keep the timeline's remote copy up to date until `cancel` fires:
/// upload new layers, then the index, then delete the layers the new index
/// no longer names. Every remote operation is retried with backoff, so an
/// object store that is down for a while delays uploads but loses nothing.
///
/// A remote index that exists but cannot be parsed marks the tenant
/// broken: the uploader stops and deletes nothing.
pub async fn run_uploader(
    tenant: Arc<Tenant>,
    timeline: Arc<Timeline>,
    storage: GenericRemoteStorage,
    cancel: CancellationToken,
) {
    let (tenant_id, timeline_id) = (timeline.tenant_id, timeline.timeline_id);
    let what = format!("reading the remote index of {tenant_id}/{timeline_id}");
    let remote = retry(&what, &cancel, || async {
        match download_index(&storage, tenant_id, timeline_id).await {
            Err(e) if e.downcast_ref::<IndexError>().is_some() => Ok(Err(e)),
            other => other.map(Ok),
        }
    })
    .await;
    let remote = match remote {
        None => return,
        Some(Ok(remote)) => remote,
        Some(Err(e)) => {
            tenant.set_broken(format!("timeline {timeline_id} in remote storage: {e:#}"));
            return;
        }
    };
    let mut uploaded: Option<IndexPart> = remote;
    // Layers uploaded by a round that then found a layer gone (GC) and
    // started over: in the bucket, in no index yet.
    let mut unindexed: BTreeMap<LayerName, u64> = BTreeMap::new();
    if let Some(index) = &uploaded {
        timeline.set_remote_consistent_lsn(index.metadata.disk_consistent.last);
    }
    loop {
        if tenant.state() != TenantState::Active {
            return;
        }
        match upload_round(&timeline, &storage, &mut uploaded, &mut unindexed, &cancel).await {
            None => return,
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
/// index, then delete what is in the bucket and no longer named: layers of
/// the previous index, and layers an abandoned round uploaded (`unindexed`)
/// that GC has removed since.
async fn upload_round(
    timeline: &Timeline,
    storage: &GenericRemoteStorage,
    uploaded: &mut Option<IndexPart>,
    unindexed: &mut BTreeMap<LayerName, u64>,
    cancel: &CancellationToken,
) -> Option<Round> {
    let (tenant_id, timeline_id) = (timeline.tenant_id, timeline.timeline_id);
    let (metadata, files) = timeline.remote_snapshot();
    let mut previous: BTreeMap<LayerName, u64> = uploaded
        .as_ref()
        .map(|i| i.layers.clone())
        .unwrap_or_default();
    previous.extend(unindexed.iter().map(|(n, s)| (n.clone(), *s)));
    if unindexed.is_empty()
        && uploaded.as_ref().is_some_and(|i| {
            i.metadata == metadata
                && i.layers.len() == files.len()
                && files.iter().all(|(n, _)| i.layers.contains_key(n))
        })
    {
        return Some(Round::UpToDate);
    }
    let mut layers = BTreeMap::new();
    for (name, local) in &files {
        if let Some(size) = previous.get(name) {
            layers.insert(name.clone(), *size);
            continue;
        }
        let size = match upload_layer(storage, tenant_id, timeline_id, name, local, cancel).await? {
            Some(size) => size,
            None => return Some(Round::Changed),
        };
        unindexed.insert(name.clone(), size);
        layers.insert(name.clone(), size);
    }
    let index = IndexPart {
        metadata: metadata.clone(),
        layers,
    };
    let bytes = index.to_bytes();
    let path = object(tenant_id, timeline_id, INDEX_FILE_NAME).expect("valid path");
    let what = format!("uploading {path}");
    retry(&what, cancel, || async {
        Ok(storage.upload(&path, bytes.clone()).await?)
    })
    .await?;
    timeline.set_remote_consistent_lsn(metadata.disk_consistent.last);
    crate::metrics::get().remote_index_uploads.inc();
    let gone: Vec<RemotePath> = previous
        .keys()
        .filter(|name| !index.layers.contains_key(*name))
        .filter_map(|name| object(tenant_id, timeline_id, &name.to_string()).ok())
        .collect();
    *uploaded = Some(index);
    unindexed.clear();
    if !gone.is_empty() {
        let what = format!(
            "deleting {} layers of {tenant_id}/{timeline_id} from remote storage",
            gone.len()
        );
        retry(&what, cancel, || async {
            Ok(storage.delete_many(&gone).await?)
        })
        .await?;
        crate::metrics::get()
            .remote_layers_deleted
            .inc_by(gone.len() as u64);
    }
    Some(Round::UpToDate)
}

/// Upload one layer file; `Some(None)` if the local file is gone (removed
/// by GC since the snapshot), `None` if cancelled.
async fn upload_layer(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    name: &LayerName,
    local: &PathBuf,
    cancel: &CancellationToken,
) -> Option<Option<u64>> {
    let path = object(tenant_id, timeline_id, &name.to_string()).expect("valid path");
    let what = format!("uploading {path}");
    retry(&what, cancel, || async {
        let data = match tokio::fs::read(local).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", local.display())),
        };
        let size = data.len() as u64;
        storage.upload(&path, Bytes::from(data)).await?;
        crate::metrics::get().remote_bytes_uploaded.inc_by(size);
        Ok(Some(size))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, KeyRange};
    use crate::tenant::timeline::RecordLsn;
    use postgres_format::PgMajorVersion;

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

    #[test]
    fn index_round_trip_and_bad_input() {
        let layer = LayerName::Delta {
            key_range: KeyRange::new(Key::MIN, Key::twophase_file(7)),
            lsn_range: Lsn(0x100)..Lsn(0x2001),
        };
        let index = IndexPart {
            metadata: metadata(0x2000),
            layers: BTreeMap::from([(layer.clone(), 4096)]),
        };
        let bytes = index.to_bytes();
        assert_eq!(IndexPart::parse(&bytes).unwrap(), index);

        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let bad = [
            text.replace("\"version\": 1", "\"version\": 9"),
            text.replace("4096", "0"),
            text.replace(&layer.to_string(), "not-a-layer"),
            text.replace("\"layers\"", "\"layerz\""),
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
            layers: BTreeMap::from([(layer, 4096)]),
        };
        assert!(IndexPart::parse(&above.to_bytes()).is_err());
    }
}
