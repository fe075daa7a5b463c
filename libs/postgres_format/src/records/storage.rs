//! Storage-manager, database and relation-mapper records: relations
//! created and truncated, databases created and dropped, mapper files
//! rewritten.

use super::{count, Malformed, ParsedRecord};
use crate::relfile::{ForkNumber, RelFileNode};
use utils::bytes_reader::Reader;

fn rel(r: &mut Reader<'_>) -> Result<RelFileNode, Malformed> {
    Ok(RelFileNode {
        spc_oid: r.u32()?,
        db_oid: r.u32()?,
        rel_node: r.u32()?,
    })
}

/// `RM_SMGR_ID`.
pub(super) fn parse_smgr(info: u8, r: &mut Reader<'_>) -> Result<ParsedRecord, Malformed> {
    Ok(match info {
        0x10 => {
            let node = rel(r)?;
            let fork_number = r.u32()?;
            let fork = u8::try_from(fork_number)
                .ok()
                .and_then(ForkNumber::from_u8)
                .ok_or_else(|| Malformed::Invalid(format!("invalid fork number {fork_number}")))?;
            ParsedRecord::SmgrCreate { rel: node, fork }
        }
        0x20 => {
            let blocks = r.u32()?;
            let node = rel(r)?;
            let flags = r.u32()?;
            ParsedRecord::SmgrTruncate {
                rel: node,
                blocks,
                heap: flags & 0x1 != 0,
                visibility_map: flags & 0x2 != 0,
                fsm: flags & 0x4 != 0,
            }
        }
        _ => ParsedRecord::Other,
    })
}

/// `RM_DBASE_ID`.
pub(super) fn parse_database(info: u8, r: &mut Reader<'_>) -> Result<ParsedRecord, Malformed> {
    Ok(match info {
        0x00 => ParsedRecord::DatabaseCreateFileCopy {
            db_oid: r.u32()?,
            spc_oid: r.u32()?,
            src_db_oid: r.u32()?,
            src_spc_oid: r.u32()?,
        },
        0x10 => ParsedRecord::DatabaseCreateWalLog {
            db_oid: r.u32()?,
            spc_oid: r.u32()?,
        },
        0x20 => {
            let db_oid = r.u32()?;
            let n = count(r.i32()?, "tablespace count")?;
            ParsedRecord::DatabaseDrop {
                db_oid,
                spc_oids: r.u32_vec(n)?,
            }
        }
        _ => ParsedRecord::Other,
    })
}

/// `RM_RELMAP_ID`.
pub(super) fn parse_relmap(info: u8, r: &mut Reader<'_>) -> Result<ParsedRecord, Malformed> {
    if info != 0x00 {
        return Ok(ParsedRecord::Other);
    }
    let db_oid = r.u32()?;
    let spc_oid = r.u32()?;
    let n = count(r.i32()?, "map size")?;
    let data = r.bytes(n)?.to_vec();
    Ok(ParsedRecord::RelmapUpdate {
        db_oid,
        spc_oid,
        data,
    })
}
