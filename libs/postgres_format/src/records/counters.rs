//! Records that move the counters a checkpoint holds: checkpoints,
//! next-OID, and the standby's running-transactions snapshot.

use super::{count, Malformed, ParsedRecord};
use crate::constants::*;
use crate::control_file::CheckPoint;
use utils::bytes_reader::Reader;

/// `RM_XLOG_ID`.
pub(super) fn parse_xlog(info: u8, r: &mut Reader<'_>) -> Result<ParsedRecord, Malformed> {
    Ok(match info {
        XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
            let checkpoint = CheckPoint::decode(r.rest())?;
            ParsedRecord::Checkpoint {
                shutdown: info == XLOG_CHECKPOINT_SHUTDOWN,
                checkpoint: (&checkpoint).into(),
            }
        }
        XLOG_NEXTOID => ParsedRecord::NextOid { oid: r.u32()? },
        _ => ParsedRecord::Other,
    })
}

/// `RM_STANDBY_ID`: `XLOG_RUNNING_XACTS`.
pub(super) fn parse_standby(info: u8, r: &mut Reader<'_>) -> Result<ParsedRecord, Malformed> {
    if info != 0x10 {
        return Ok(ParsedRecord::Other);
    }
    let xcnt = r.i32()?;
    let subxcnt = r.i32()?;
    let subxid_overflow = r.bool()?;
    r.skip(3)?;
    let next_xid = r.u32()?;
    let oldest_running_xid = r.u32()?;
    let latest_completed_xid = r.u32()?;
    let (Ok(xids), Ok(subxid_count)) = (count(xcnt, "xid count"), u32::try_from(subxcnt)) else {
        return Err(Malformed::Invalid(format!(
            "negative xid counts {xcnt}, {subxcnt}"
        )));
    };
    Ok(ParsedRecord::RunningXacts {
        next_xid,
        oldest_running_xid,
        latest_completed_xid,
        xids: r.u32_vec(xids)?,
        subxid_count,
        subxid_overflow,
    })
}
