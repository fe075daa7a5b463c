//! Transaction records (`RM_XACT_ID`): commit, abort, prepare.

use serde::Serialize;

use super::RecordParseError;
use crate::relfile::RelFileNode;
use crate::wal::DecodedRecord;
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_PREPARE: u8 = 0x10;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;

const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
const XACT_XINFO_HAS_GID: u32 = 1 << 7;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// Sizes of `SharedInvalidationMessage` and `xl_xact_stats_item`.
const SIZE_OF_INVALIDATION_MESSAGE: usize = 16;
const SIZE_OF_STATS_ITEM: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionStatus {
    Committed,
    Aborted,
}

/// A commit or abort (possibly of a prepared transaction), or a prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionRecord {
    Finish {
        status: TransactionStatus,
        /// The transaction that ends: the record's xid, or the prepared one's.
        xid: u32,
        subxacts: Vec<u32>,
        /// Relations dropped by this commit or abort: their storage goes.
        dropped_rels: Vec<RelFileNode>,
        db_oid: Option<u32>,
        spc_oid: Option<u32>,
        /// Set when a prepared transaction ends.
        twophase_xid: Option<u32>,
        twophase_gid: Option<String>,
        xact_time: i64,
    },
    Prepare(PreparedTransaction),
    /// Assignment and invalidation records change no storage.
    Other,
}

/// `XLOG_XACT_PREPARE`: its main data is the two-phase state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreparedTransaction {
    pub xid: u32,
    pub db_oid: u32,
    pub gid: String,
    /// The state file (`pg_twophase/<xid>`) without its trailing CRC-32C.
    #[serde(skip)]
    pub state_file: Vec<u8>,
}

pub(super) enum XactError {
    Short(ShortInput),
    Invalid(String),
}

impl From<ShortInput> for XactError {
    fn from(e: ShortInput) -> Self {
        XactError::Short(e)
    }
}

impl XactError {
    pub(super) fn into_parse_error(self, lsn: Lsn, rmgr: &'static str) -> RecordParseError {
        match self {
            XactError::Short(source) => RecordParseError::Short { lsn, rmgr, source },
            XactError::Invalid(reason) => RecordParseError::Invalid { lsn, rmgr, reason },
        }
    }
}

fn count(r: &mut Reader<'_>, what: &str) -> Result<usize, XactError> {
    let n = r.i32()?;
    usize::try_from(n).map_err(|_| XactError::Invalid(format!("negative {what} count {n}")))
}

fn nul_terminated(r: &mut Reader<'_>) -> Result<String, XactError> {
    let rest = r.rest();
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| XactError::Invalid("GID is not NUL-terminated".into()))?;
    let gid = String::from_utf8_lossy(&rest[..end]).into_owned();
    // Put back what follows the GID.
    let consumed = end + 1;
    *r = Reader::new(&rest[consumed..], "transaction record");
    Ok(gid)
}

pub(super) fn parse(
    record: &DecodedRecord,
    r: &mut Reader<'_>,
) -> Result<TransactionRecord, XactError> {
    let info = record.header.info;
    let op = info & XLOG_XACT_OPMASK;
    let status = match op {
        XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED => TransactionStatus::Committed,
        XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED => TransactionStatus::Aborted,
        XLOG_XACT_PREPARE => return parse_prepare(record).map(TransactionRecord::Prepare),
        _ => return Ok(TransactionRecord::Other),
    };
    let xact_time = r.i64()?;
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        r.u32()?
    } else {
        0
    };
    let (mut db_oid, mut spc_oid) = (None, None);
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        db_oid = Some(r.u32()?);
        spc_oid = Some(r.u32()?);
    }
    let mut subxacts = Vec::new();
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = count(r, "subtransaction")?;
        subxacts = r.u32_vec(n)?;
    }
    let mut dropped_rels = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = count(r, "relation")?;
        let raw = r.u32_vec(n.saturating_mul(3))?;
        dropped_rels = raw
            .chunks_exact(3)
            .map(|c| RelFileNode {
                spc_oid: c[0],
                db_oid: c[1],
                rel_node: c[2],
            })
            .collect();
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = count(r, "dropped stats")?;
        r.skip(n.saturating_mul(SIZE_OF_STATS_ITEM))?;
    }
    // Only commits carry invalidation messages.
    if status == TransactionStatus::Committed && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = count(r, "invalidation message")?;
        r.skip(n.saturating_mul(SIZE_OF_INVALIDATION_MESSAGE))?;
    }
    let (mut twophase_xid, mut twophase_gid) = (None, None);
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        twophase_xid = Some(r.u32()?);
        if xinfo & XACT_XINFO_HAS_GID != 0 {
            twophase_gid = Some(nul_terminated(r)?);
        }
    }
    if xinfo & XACT_XINFO_HAS_ORIGIN != 0 {
        r.skip(16)?; // origin LSN and timestamp
    }
    Ok(TransactionRecord::Finish {
        status,
        xid: twophase_xid.unwrap_or(record.header.xid),
        subxacts,
        dropped_rels,
        db_oid,
        spc_oid,
        twophase_xid,
        twophase_gid,
        xact_time,
    })
}

/// `xl_xact_prepare`: 72 bytes, then the GID.
fn parse_prepare(record: &DecodedRecord) -> Result<PreparedTransaction, XactError> {
    let data = &record.main_data;
    let mut r = Reader::new(data, "prepare record");
    let _magic = r.u32()?;
    // The state file ends with a CRC that the record does not hold.
    let total_len = r.u32()? as usize;
    if total_len != data.len() + 4 {
        return Err(XactError::Invalid(format!(
            "state file says {total_len} bytes with its CRC, record holds {}",
            data.len()
        )));
    }
    let xid = r.u32()?;
    let db_oid = r.u32()?;
    r.skip(38)?; // prepared_at, owner, six counts, initfileinval and padding
    let gid_len = r.u16()? as usize;
    r.skip(16)?; // origin LSN and timestamp
    let gid_bytes = r.bytes(gid_len)?;
    let gid_end = gid_bytes.iter().position(|&b| b == 0).unwrap_or(gid_len);
    Ok(PreparedTransaction {
        xid,
        db_oid,
        gid: String::from_utf8_lossy(&gid_bytes[..gid_end]).into_owned(),
        state_file: data.to_vec(),
    })
}
