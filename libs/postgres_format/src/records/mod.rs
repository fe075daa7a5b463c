//! The records the pageserver applies itself, parsed from their main data.
//!
//! Relation pages come with images (docs/design.md); what does not is parsed
//! here: transaction status (commit, abort, two-phase), CLOG and multixact
//! pages, the relation mapper, relation creation and truncation, database
//! creation and drop, checkpoints and next-OID, running transactions, and
//! the heap records whose visibility-map changes are not logged as pages.

mod heap;
mod xact;

use serde::Serialize;

pub use heap::{HeapRecord, VisibilityMapClear};
pub use xact::{PreparedTransaction, TransactionRecord, TransactionStatus};

use crate::constants::*;
use crate::control_file::CheckPoint;
use crate::reader::{Reader, ShortInput};
use crate::relfile::{ForkNumber, RelFileNode};
use crate::wal::DecodedRecord;
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

/// Parse the main data of the record kinds the pageserver applies.
pub fn parse_record(record: &DecodedRecord) -> Result<ParsedRecord, RecordParseError> {
    let rmid = record.header.rmid;
    let rmgr = rmgr_name(rmid).unwrap_or("custom");
    let lsn = record.lsn;
    let short = |source| RecordParseError::Short { lsn, rmgr, source };
    let mut r = Reader::new(&record.main_data, rmgr);
    let info = record.header.rmgr_info();
    let rel = |r: &mut Reader<'_>| -> Result<RelFileNode, ShortInput> {
        Ok(RelFileNode {
            spc_oid: r.u32()?,
            db_oid: r.u32()?,
            rel_node: r.u32()?,
        })
    };
    let parsed = match rmid {
        RM_XACT_ID => ParsedRecord::Transaction(
            xact::parse(record, &mut r).map_err(|e| e.into_parse_error(lsn, rmgr))?,
        ),
        RM_CLOG_ID => match info {
            0x00 => ParsedRecord::ClogZeroPage {
                page: r.u32().map_err(short)?,
            },
            0x10 => ParsedRecord::ClogTruncate {
                page: r.u32().map_err(short)?,
                oldest_xid: r.u32().map_err(short)?,
                oldest_xid_db: r.u32().map_err(short)?,
            },
            _ => ParsedRecord::Other,
        },
        RM_MULTIXACT_ID => match info {
            0x00 => ParsedRecord::MultiXactZeroOffsetPage {
                page: r.u32().map_err(short)?,
            },
            0x10 => ParsedRecord::MultiXactZeroMemberPage {
                page: r.u32().map_err(short)?,
            },
            0x20 => {
                let multi = r.u32().map_err(short)?;
                let offset = r.u32().map_err(short)?;
                let count = r.i32().map_err(short)?;
                let count = usize::try_from(count).map_err(|_| RecordParseError::Invalid {
                    lsn,
                    rmgr,
                    reason: format!("negative member count {count}"),
                })?;
                let raw = r.u32_vec(count.saturating_mul(2)).map_err(short)?;
                let members = raw.chunks_exact(2).map(|m| (m[0], m[1])).collect();
                ParsedRecord::MultiXactCreate {
                    multi,
                    offset,
                    members,
                }
            }
            0x30 => ParsedRecord::MultiXactTruncate {
                oldest_multi_db: r.u32().map_err(short)?,
                start_offset: r.u32().map_err(short)?,
                end_offset: r.u32().map_err(short)?,
                start_member: r.u32().map_err(short)?,
                end_member: r.u32().map_err(short)?,
            },
            _ => ParsedRecord::Other,
        },
        RM_RELMAP_ID if info == 0x00 => {
            let db_oid = r.u32().map_err(short)?;
            let spc_oid = r.u32().map_err(short)?;
            let nbytes = r.i32().map_err(short)?;
            let nbytes = usize::try_from(nbytes).map_err(|_| RecordParseError::Invalid {
                lsn,
                rmgr,
                reason: format!("negative map size {nbytes}"),
            })?;
            let data = r.bytes(nbytes).map_err(short)?.to_vec();
            ParsedRecord::RelmapUpdate {
                db_oid,
                spc_oid,
                data,
            }
        }
        RM_SMGR_ID => match info {
            0x10 => {
                let node = rel(&mut r).map_err(short)?;
                let fork_number = r.u32().map_err(short)?;
                let fork = u8::try_from(fork_number)
                    .ok()
                    .and_then(ForkNumber::from_u8)
                    .ok_or_else(|| RecordParseError::Invalid {
                        lsn,
                        rmgr,
                        reason: format!("invalid fork number {fork_number}"),
                    })?;
                ParsedRecord::SmgrCreate { rel: node, fork }
            }
            0x20 => {
                let blocks = r.u32().map_err(short)?;
                let node = rel(&mut r).map_err(short)?;
                let flags = r.u32().map_err(short)?;
                ParsedRecord::SmgrTruncate {
                    rel: node,
                    blocks,
                    heap: flags & 0x1 != 0,
                    visibility_map: flags & 0x2 != 0,
                    fsm: flags & 0x4 != 0,
                }
            }
            _ => ParsedRecord::Other,
        },
        RM_DBASE_ID => match info {
            0x00 => ParsedRecord::DatabaseCreateFileCopy {
                db_oid: r.u32().map_err(short)?,
                spc_oid: r.u32().map_err(short)?,
                src_db_oid: r.u32().map_err(short)?,
                src_spc_oid: r.u32().map_err(short)?,
            },
            0x10 => ParsedRecord::DatabaseCreateWalLog {
                db_oid: r.u32().map_err(short)?,
                spc_oid: r.u32().map_err(short)?,
            },
            0x20 => {
                let db_oid = r.u32().map_err(short)?;
                let count = r.i32().map_err(short)?;
                let count = usize::try_from(count).map_err(|_| RecordParseError::Invalid {
                    lsn,
                    rmgr,
                    reason: format!("negative tablespace count {count}"),
                })?;
                ParsedRecord::DatabaseDrop {
                    db_oid,
                    spc_oids: r.u32_vec(count).map_err(short)?,
                }
            }
            _ => ParsedRecord::Other,
        },
        RM_XLOG_ID => match info {
            XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
                let checkpoint = CheckPoint::decode(r.rest()).map_err(short)?;
                ParsedRecord::Checkpoint {
                    shutdown: info == XLOG_CHECKPOINT_SHUTDOWN,
                    checkpoint: (&checkpoint).into(),
                }
            }
            XLOG_NEXTOID => ParsedRecord::NextOid {
                oid: r.u32().map_err(short)?,
            },
            _ => ParsedRecord::Other,
        },
        RM_STANDBY_ID if info == 0x10 => {
            let xcnt = r.i32().map_err(short)?;
            let subxcnt = r.i32().map_err(short)?;
            let subxid_overflow = r.bool().map_err(short)?;
            r.skip(3).map_err(short)?;
            let next_xid = r.u32().map_err(short)?;
            let oldest_running_xid = r.u32().map_err(short)?;
            let latest_completed_xid = r.u32().map_err(short)?;
            let (Ok(xcnt), Ok(subxcnt)) = (usize::try_from(xcnt), u32::try_from(subxcnt)) else {
                return Err(RecordParseError::Invalid {
                    lsn,
                    rmgr,
                    reason: format!("negative xid counts {xcnt}, {subxcnt}"),
                });
            };
            ParsedRecord::RunningXacts {
                next_xid,
                oldest_running_xid,
                latest_completed_xid,
                xids: r.u32_vec(xcnt).map_err(short)?,
                subxid_count: subxcnt,
                subxid_overflow,
            }
        }
        RM_HEAP_ID | RM_HEAP2_ID => match heap::parse(record, &mut r).map_err(short)? {
            Some(heap) => ParsedRecord::Heap(heap),
            None => ParsedRecord::Other,
        },
        _ => ParsedRecord::Other,
    };
    Ok(parsed)
}
