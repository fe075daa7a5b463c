//! The records the pageserver applies itself, parsed from their main data.
//!
//! Relation pages come with images (docs/design.md); what does not is parsed
//! here: transaction status (commit, abort, two-phase), CLOG and multixact
//! pages, the relation mapper, relation creation and truncation, database
//! creation and drop, checkpoints and next-OID, running transactions, and
//! the heap records whose visibility-map changes are not logged as pages.

mod counters;
mod heap;
mod slru;
mod storage;
mod xact;

use serde::Serialize;

pub use heap::{HeapRecord, VisibilityMapClear};
pub use xact::{PreparedTransaction, TransactionRecord, TransactionStatus};

use crate::constants::*;
use crate::control_file::CheckPoint;
use crate::relfile::{ForkNumber, RelFileNode};
use crate::wal::DecodedRecord;
use utils::bytes_reader::{Reader, ShortInput};
use utils::Lsn;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordParseError {
    #[error("{rmgr} record at {lsn} is malformed: {source}")]
    Short {
        lsn: Lsn,
        rmgr: &'static str,
        source: ShortInput,
    },
    #[error("{rmgr} record at {lsn} is malformed: {reason}")]
    Invalid {
        lsn: Lsn,
        rmgr: &'static str,
        reason: String,
    },
}

/// What a record means to the pageserver, beyond its page images.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParsedRecord {
    Transaction(TransactionRecord),
    ClogZeroPage {
        page: u32,
    },
    ClogTruncate {
        page: u32,
        oldest_xid: u32,
        oldest_xid_db: u32,
    },
    MultiXactZeroOffsetPage {
        page: u32,
    },
    MultiXactZeroMemberPage {
        page: u32,
    },
    MultiXactCreate {
        multi: u32,
        offset: u32,
        members: Vec<(u32, u32)>,
    },
    MultiXactTruncate {
        oldest_multi_db: u32,
        start_offset: u32,
        end_offset: u32,
        start_member: u32,
        end_member: u32,
    },
    RelmapUpdate {
        db_oid: u32,
        spc_oid: u32,
        data: Vec<u8>,
    },
    SmgrCreate {
        rel: RelFileNode,
        fork: ForkNumber,
    },
    SmgrTruncate {
        rel: RelFileNode,
        blocks: u32,
        heap: bool,
        visibility_map: bool,
        fsm: bool,
    },
    /// CREATE DATABASE with the `file_copy` strategy: copy every relation.
    DatabaseCreateFileCopy {
        db_oid: u32,
        spc_oid: u32,
        src_db_oid: u32,
        src_spc_oid: u32,
    },
    /// CREATE DATABASE with the `wal_log` strategy: pages follow as records.
    DatabaseCreateWalLog {
        db_oid: u32,
        spc_oid: u32,
    },
    DatabaseDrop {
        db_oid: u32,
        spc_oids: Vec<u32>,
    },
    Checkpoint {
        shutdown: bool,
        checkpoint: CheckPointSummary,
    },
    NextOid {
        oid: u32,
    },
    RunningXacts {
        next_xid: u32,
        oldest_running_xid: u32,
        latest_completed_xid: u32,
        xids: Vec<u32>,
        subxid_count: u32,
        subxid_overflow: bool,
    },
    Heap(HeapRecord),
    /// A record with nothing to apply beyond its images.
    Other,
}

/// The fields of a checkpoint the pageserver keeps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CheckPointSummary {
    pub redo: Lsn,
    pub next_xid: u64,
    pub next_oid: u32,
    pub next_multi: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multi: u32,
    pub oldest_active_xid: u32,
}

impl From<&CheckPoint> for CheckPointSummary {
    fn from(c: &CheckPoint) -> Self {
        CheckPointSummary {
            redo: c.redo,
            next_xid: c.next_xid,
            next_oid: c.next_oid,
            next_multi: c.next_multi,
            next_multi_offset: c.next_multi_offset,
            oldest_xid: c.oldest_xid,
            oldest_xid_db: c.oldest_xid_db,
            oldest_multi: c.oldest_multi,
            oldest_active_xid: c.oldest_active_xid,
        }
    }
}

/// A malformed main data, before it is given the record's LSN and rmgr.
#[derive(Debug)]
enum Malformed {
    Short(ShortInput),
    Invalid(String),
}

impl From<ShortInput> for Malformed {
    fn from(e: ShortInput) -> Self {
        Malformed::Short(e)
    }
}

impl Malformed {
    fn at(self, lsn: Lsn, rmgr: &'static str) -> RecordParseError {
        match self {
            Malformed::Short(source) => RecordParseError::Short { lsn, rmgr, source },
            Malformed::Invalid(reason) => RecordParseError::Invalid { lsn, rmgr, reason },
        }
    }
}

/// A count stored as a C `int`, which must not be negative.
fn count(n: i32, what: &str) -> Result<usize, Malformed> {
    usize::try_from(n).map_err(|_| Malformed::Invalid(format!("negative {what} {n}")))
}

/// Parse the main data of the record kinds the pageserver applies, by
/// resource manager.
pub fn parse_record(record: &DecodedRecord) -> Result<ParsedRecord, RecordParseError> {
    let rmid = record.header.rmid;
    let rmgr = rmgr_name(rmid).unwrap_or("custom");
    let lsn = record.lsn;
    let mut r = Reader::new(&record.main_data, rmgr);
    let info = record.header.rmgr_info();
    let parsed = match rmid {
        RM_XACT_ID => {
            return xact::parse(record, &mut r)
                .map(ParsedRecord::Transaction)
                .map_err(|e| e.into_parse_error(lsn, rmgr));
        }
        RM_CLOG_ID => slru::parse_clog(info, &mut r),
        RM_MULTIXACT_ID => slru::parse_multixact(info, &mut r),
        RM_RELMAP_ID => storage::parse_relmap(info, &mut r),
        RM_SMGR_ID => storage::parse_smgr(info, &mut r),
        RM_DBASE_ID => storage::parse_database(info, &mut r),
        RM_XLOG_ID => counters::parse_xlog(info, &mut r),
        RM_STANDBY_ID => counters::parse_standby(info, &mut r),
        RM_HEAP_ID | RM_HEAP2_ID => heap::parse(record, &mut r)
            .map(|heap| heap.map_or(ParsedRecord::Other, ParsedRecord::Heap))
            .map_err(Malformed::from),
        _ => Ok(ParsedRecord::Other),
    };
    parsed.map_err(|e| e.at(lsn, rmgr))
}
