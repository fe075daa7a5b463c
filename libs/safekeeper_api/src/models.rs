//! Types of the safekeeper's HTTP API.

use serde::{Deserialize, Serialize};
use utils::{Lsn, NodeId, TenantId, TimelineId};

use crate::term_history::{Term, TermHistory};

/// `POST /v1/tenant/{tenant_id}/timeline`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelineCreateRequest {
    pub timeline_id: TimelineId,
    /// `PG_VERSION_NUM`, like 150018.
    pub pg_version: u32,
    #[serde(default)]
    pub system_id: Option<u64>,
    #[serde(default = "default_wal_seg_size")]
    pub wal_seg_size: u32,
    /// Where the timeline's WAL begins, if known.
    #[serde(default)]
    pub start_lsn: Option<Lsn>,
}

fn default_wal_seg_size() -> u32 {
    16 * 1024 * 1024
}

/// `GET /v1/tenant/{tenant_id}/timeline/{timeline_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineStatus {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub node_id: NodeId,
    pub term: Term,
    pub last_log_term: Term,
    pub term_history: TermHistory,
    pub timeline_start_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub backup_lsn: Lsn,
    pub remote_consistent_lsn: Lsn,
    pub peer_horizon_lsn: Lsn,
    pub system_id: u64,
    pub pg_version: u32,
    pub wal_seg_size: u32,
    /// Connected proposers and WAL readers.
    pub walproposers: usize,
    pub walsenders: usize,
}
