//! The published timeline state as a plain Rust struct, and its conversions
//! from and to the protobuf message.

use utils::{Lsn, NodeId, TenantId, TimelineId};

use crate::proto;

/// The state of one timeline on one safekeeper, as safekeepers publish it
/// and pageservers receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafekeeperTimelineInfo {
    pub safekeeper_id: NodeId,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// The safekeeper's current consensus term.
    pub term: u64,
    /// The term of the last record in the safekeeper's log.
    pub last_log_term: u64,
    /// WAL fsynced on the safekeeper up to here.
    pub flush_lsn: Lsn,
    /// WAL acknowledged by a quorum up to here.
    pub commit_lsn: Lsn,
    /// WAL uploaded to remote storage up to here.
    pub backup_lsn: Lsn,
    /// WAL made durable in remote storage by the pageserver up to here.
    pub remote_consistent_lsn: Lsn,
    /// WAL that every safekeeper of the timeline has, as far as this one knows.
    pub peer_horizon_lsn: Lsn,
    /// Where the safekeeper's local WAL starts.
    pub local_start_lsn: Lsn,
    /// Where to stream WAL from: libpq `host:port`.
    pub safekeeper_connstr: String,
    /// The safekeeper's HTTP API: `host:port`.
    pub http_connstr: String,
}

/// Why a protobuf message is not a valid [`SafekeeperTimelineInfo`] or id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("tenant_timeline_id is missing")]
    MissingTenantTimelineId,
    #[error(
        "subscription_key is missing: subscribe to all timelines or to one tenant_timeline_id"
    )]
    MissingSubscriptionKey,
    #[error("{field} must be 16 bytes, got {len}")]
    BadIdLength { field: &'static str, len: usize },
}

fn id_bytes(field: &'static str, bytes: &[u8]) -> Result<[u8; 16], InvalidMessage> {
    bytes.try_into().map_err(|_| InvalidMessage::BadIdLength {
        field,
        len: bytes.len(),
    })
}

impl proto::TenantTimelineId {
    pub fn new(tenant_id: TenantId, timeline_id: TimelineId) -> Self {
        Self {
            tenant_id: tenant_id.as_bytes().to_vec(),
            timeline_id: timeline_id.as_bytes().to_vec(),
        }
    }

    /// The ids, if both are 16 bytes long.
    pub fn ids(&self) -> Result<(TenantId, TimelineId), InvalidMessage> {
        Ok((
            TenantId::from_bytes(id_bytes("tenant_id", &self.tenant_id)?),
            TimelineId::from_bytes(id_bytes("timeline_id", &self.timeline_id)?),
        ))
    }
}

impl From<SafekeeperTimelineInfo> for proto::SafekeeperTimelineInfo {
    fn from(info: SafekeeperTimelineInfo) -> Self {
        Self {
            safekeeper_id: info.safekeeper_id.0,
            tenant_timeline_id: Some(proto::TenantTimelineId::new(
                info.tenant_id,
                info.timeline_id,
            )),
            term: info.term,
            last_log_term: info.last_log_term,
            flush_lsn: info.flush_lsn.0,
            commit_lsn: info.commit_lsn.0,
            backup_lsn: info.backup_lsn.0,
            remote_consistent_lsn: info.remote_consistent_lsn.0,
            peer_horizon_lsn: info.peer_horizon_lsn.0,
            local_start_lsn: info.local_start_lsn.0,
            safekeeper_connstr: info.safekeeper_connstr,
            http_connstr: info.http_connstr,
        }
    }
}

impl TryFrom<proto::SafekeeperTimelineInfo> for SafekeeperTimelineInfo {
    type Error = InvalidMessage;

    fn try_from(info: proto::SafekeeperTimelineInfo) -> Result<Self, InvalidMessage> {
        let (tenant_id, timeline_id) = info
            .tenant_timeline_id
            .as_ref()
            .ok_or(InvalidMessage::MissingTenantTimelineId)?
            .ids()?;
        Ok(Self {
            safekeeper_id: NodeId(info.safekeeper_id),
            tenant_id,
            timeline_id,
            term: info.term,
            last_log_term: info.last_log_term,
            flush_lsn: Lsn(info.flush_lsn),
            commit_lsn: Lsn(info.commit_lsn),
            backup_lsn: Lsn(info.backup_lsn),
            remote_consistent_lsn: Lsn(info.remote_consistent_lsn),
            peer_horizon_lsn: Lsn(info.peer_horizon_lsn),
            local_start_lsn: Lsn(info.local_start_lsn),
            safekeeper_connstr: info.safekeeper_connstr,
            http_connstr: info.http_connstr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SafekeeperTimelineInfo {
        SafekeeperTimelineInfo {
            safekeeper_id: NodeId(3),
            tenant_id: TenantId::generate(),
            timeline_id: TimelineId::generate(),
            term: 4,
            last_log_term: 5,
            flush_lsn: Lsn(6),
            commit_lsn: Lsn(7),
            backup_lsn: Lsn(8),
            remote_consistent_lsn: Lsn(9),
            peer_horizon_lsn: Lsn(10),
            local_start_lsn: Lsn(11),
            safekeeper_connstr: "127.0.0.1:5454".into(),
            http_connstr: "127.0.0.1:7676".into(),
        }
    }

    #[test]
    fn round_trip() {
        let info = sample();
        let message = proto::SafekeeperTimelineInfo::from(info.clone());
        assert_eq!(message.flush_lsn, 6);
        assert_eq!(
            message.tenant_timeline_id.as_ref().unwrap().tenant_id,
            info.tenant_id.as_bytes()
        );
        assert_eq!(SafekeeperTimelineInfo::try_from(message).unwrap(), info);
    }

    #[test]
    fn malformed_ids() {
        let mut message = proto::SafekeeperTimelineInfo::from(sample());
        message.tenant_timeline_id.as_mut().unwrap().timeline_id = vec![1, 2, 3];
        let err = SafekeeperTimelineInfo::try_from(message.clone()).unwrap_err();
        assert_eq!(err.to_string(), "timeline_id must be 16 bytes, got 3");
        message.tenant_timeline_id.as_mut().unwrap().tenant_id = vec![0; 17];
        let err = SafekeeperTimelineInfo::try_from(message.clone()).unwrap_err();
        assert_eq!(err.to_string(), "tenant_id must be 16 bytes, got 17");
        message.tenant_timeline_id = None;
        let err = SafekeeperTimelineInfo::try_from(message).unwrap_err();
        assert_eq!(err, InvalidMessage::MissingTenantTimelineId);
    }
}
