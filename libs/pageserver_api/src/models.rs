//! Types of the pageserver's HTTP API.

use serde::{Deserialize, Serialize};
use utils::{Lsn, TenantId, TimelineId};

/// `POST /v1/tenant`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TenantCreateRequest {
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TenantInfo {
    pub tenant_id: TenantId,
    /// `active`, or `broken: <reason>`.
    pub state: String,
    pub timelines: usize,
    /// The tenant's generation on this pageserver (see
    /// docs/remote-storage.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
    /// Set when a newer generation of the tenant has been attached
    /// elsewhere: this pageserver then uploads and deletes nothing of it
    /// any more (it still serves reads from its local copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer_generation: Option<u32>,
}

/// `POST /v1/tenant/{tenant_id}/attach` (the body is optional).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantAttachRequest {
    /// The generation to attach with, above every generation the tenant
    /// had in remote storage (else 409). Default: the highest found + 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

/// `POST /v1/tenant/{tenant_id}/timeline`: bootstrap a new timeline (no
/// ancestor: initdb), or branch an ancestor at an LSN (default: its last record).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimelineCreateRequest {
    #[serde(default)]
    pub new_timeline_id: Option<TimelineId>,
    #[serde(default)]
    pub ancestor_timeline_id: Option<TimelineId>,
    #[serde(default)]
    pub ancestor_start_lsn: Option<Lsn>,
    /// PostgreSQL major version; only 15.
    #[serde(default)]
    pub pg_version: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub ancestor_timeline_id: Option<TimelineId>,
    pub ancestor_lsn: Option<Lsn>,
    pub last_record_lsn: Lsn,
    pub prev_record_lsn: Lsn,
    /// Where the latest shutdown checkpoint record begins (a compute's
    /// start point, or a clean stop): replicas start there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_checkpoint_lsn: Option<Lsn>,
    pub disk_consistent_lsn: Lsn,
    pub remote_consistent_lsn: Lsn,
    pub gc_cutoff_lsn: Lsn,
    /// Bytes of relation data at the last record. Computed for the
    /// timeline detail only (it reads every relation's size): creation and
    /// listing leave it out, so they take the same time whatever the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_size: Option<u64>,
    /// Bytes of this timeline's layer files.
    pub physical_size: u64,
    pub pg_version: u32,
    /// Set while WAL ingest is paused because writing a layer file failed
    /// (a full disk, say): the error. Ingest resumes once a retry succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_paused: Option<String>,
}
