//! CLOG and multixact records: pages zeroed, multixacts created, the SLRUs
//! truncated.

use super::{count, Malformed, ParsedRecord};
use utils::bytes_reader::Reader;

/// `RM_CLOG_ID`.
pub(super) fn parse_clog(info: u8, r: &mut Reader<'_>) -> Result<ParsedRecord, Malformed> {
    Ok(match info {
        0x00 => ParsedRecord::ClogZeroPage { page: r.u32()? },
        0x10 => ParsedRecord::ClogTruncate {
            page: r.u32()?,
            oldest_xid: r.u32()?,
            oldest_xid_db: r.u32()?,
        },
        _ => ParsedRecord::Other,
    })
}

/// `RM_MULTIXACT_ID`.
pub(super) fn parse_multixact(info: u8, r: &mut Reader<'_>) -> Result<ParsedRecord, Malformed> {
    Ok(match info {
        0x00 => ParsedRecord::MultiXactZeroOffsetPage { page: r.u32()? },
        0x10 => ParsedRecord::MultiXactZeroMemberPage { page: r.u32()? },
        0x20 => {
            let multi = r.u32()?;
            let offset = r.u32()?;
            let n = count(r.i32()?, "member count")?;
            let raw = r.u32_vec(n.saturating_mul(2))?;
            let members = raw.chunks_exact(2).map(|m| (m[0], m[1])).collect();
            ParsedRecord::MultiXactCreate {
                multi,
                offset,
                members,
            }
        }
        0x30 => ParsedRecord::MultiXactTruncate {
            oldest_multi_db: r.u32()?,
            start_offset: r.u32()?,
            end_offset: r.u32()?,
            start_member: r.u32()?,
            end_member: r.u32()?,
        },
        _ => ParsedRecord::Other,
    })
}
