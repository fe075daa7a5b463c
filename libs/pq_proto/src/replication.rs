//! Physical replication messages, carried as `CopyData` payloads in COPY BOTH
//! after `START_REPLICATION PHYSICAL`.
//!
//! The primary (PostgreSQL's walsender, our safekeeper) sends
//! [`PrimaryMessage`]s: `w` [`XLogData`] and `k` [`PrimaryKeepalive`]. The
//! standby (our walproposer and pageserver) sends [`StandbyMessage`]s: `r`
//! [`StandbyStatusUpdate`] and `h` [`HotStandbyFeedback`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use utils::Lsn;

use crate::wire::Reader;
use crate::ProtocolError;

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A PostgreSQL timestamp: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Saturates at the ends of the `i64` range.
    pub fn from_system_time(t: SystemTime) -> Self {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        PgTimestamp(match t.duration_since(pg_epoch) {
            Ok(after) => micros(after),
            Err(before) => -micros(before.duration()),
        })
    }

    /// `None` if the time cannot be represented.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let pg_epoch = UNIX_EPOCH.checked_add(Duration::from_secs(PG_EPOCH_UNIX_SECS))?;
        let offset = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            pg_epoch.checked_add(offset)
        } else {
            pg_epoch.checked_sub(offset)
        }
    }
}

/// `w`: a chunk of WAL starting at `wal_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    pub wal_start: Lsn,
    /// The end of WAL on the sender.
    pub wal_end: Lsn,
    pub timestamp: PgTimestamp,
    pub data: Bytes,
}

/// `k`: the sender's end of WAL; asks for a status update if `reply_requested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub timestamp: PgTimestamp,
    pub reply_requested: bool,
}

/// `r`: how far the standby has written, flushed and applied WAL (each the
/// position after the last byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
    pub timestamp: PgTimestamp,
    pub reply_requested: bool,
}

/// `h`: the standby's oldest running transaction ids (0 means none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    pub timestamp: PgTimestamp,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

/// A message from the primary to the standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryMessage {
    XLogData(XLogData),
    Keepalive(PrimaryKeepalive),
}

/// A message from the standby to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMessage {
    StatusUpdate(StandbyStatusUpdate),
    HotStandbyFeedback(HotStandbyFeedback),
}

impl PrimaryMessage {
    /// Appends the `CopyData` payload to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            PrimaryMessage::XLogData(m) => {
                buf.reserve(25 + m.data.len());
                buf.put_u8(b'w');
                buf.put_u64(m.wal_start.0);
                buf.put_u64(m.wal_end.0);
                buf.put_i64(m.timestamp.0);
                buf.put_slice(&m.data);
            }
            PrimaryMessage::Keepalive(m) => {
                buf.put_u8(b'k');
                buf.put_u64(m.wal_end.0);
                buf.put_i64(m.timestamp.0);
                buf.put_u8(m.reply_requested.into());
            }
        }
    }

    /// Decodes a `CopyData` payload; `XLogData.data` shares `payload`.
    pub fn decode(payload: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload, "replication");
        match r.u8()? {
            b'w' => Ok(PrimaryMessage::XLogData(XLogData {
                wal_start: Lsn(r.u64()?),
                wal_end: Lsn(r.u64()?),
                timestamp: PgTimestamp(r.i64()?),
                data: r.rest(),
            })),
            b'k' => {
                let m = PrimaryKeepalive {
                    wal_end: Lsn(r.u64()?),
                    timestamp: PgTimestamp(r.i64()?),
                    reply_requested: r.u8()? != 0,
                };
                r.finish()?;
                Ok(PrimaryMessage::Keepalive(m))
            }
            tag => Err(ProtocolError::UnknownTag(tag)),
        }
    }
}

impl StandbyMessage {
    /// Appends the `CopyData` payload to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            StandbyMessage::StatusUpdate(m) => {
                buf.put_u8(b'r');
                buf.put_u64(m.write_lsn.0);
                buf.put_u64(m.flush_lsn.0);
                buf.put_u64(m.apply_lsn.0);
                buf.put_i64(m.timestamp.0);
                buf.put_u8(m.reply_requested.into());
            }
            StandbyMessage::HotStandbyFeedback(m) => {
                buf.put_u8(b'h');
                buf.put_i64(m.timestamp.0);
                buf.put_u32(m.xmin);
                buf.put_u32(m.xmin_epoch);
                buf.put_u32(m.catalog_xmin);
                buf.put_u32(m.catalog_xmin_epoch);
            }
        }
    }

    /// Decodes a `CopyData` payload.
    pub fn decode(payload: Bytes) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(payload, "replication");
        let msg = match r.u8()? {
            b'r' => StandbyMessage::StatusUpdate(StandbyStatusUpdate {
                write_lsn: Lsn(r.u64()?),
                flush_lsn: Lsn(r.u64()?),
                apply_lsn: Lsn(r.u64()?),
                timestamp: PgTimestamp(r.i64()?),
                reply_requested: r.u8()? != 0,
            }),
            b'h' => StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
                timestamp: PgTimestamp(r.i64()?),
                xmin: r.u32()?,
                xmin_epoch: r.u32()?,
                catalog_xmin: r.u32()?,
                catalog_xmin_epoch: r.u32()?,
            }),
            tag => return Err(ProtocolError::UnknownTag(tag)),
        };
        r.finish()?;
        Ok(msg)
    }
}
