//! Builders of synthetic records and pages for the unit tests.

use bytes::Bytes;
use postgres_format::constants::BKPBLOCK_WILL_INIT;
use postgres_format::relfile::{ForkNumber, RelFileNode};
use postgres_format::wal::{BlockReference, DecodedRecord, RecordHeader};
use utils::Lsn;

use crate::bufpage::{self, Page};
use crate::BLCKSZ;

pub const END_LSN: Lsn = Lsn(0x1_0000_2000);
pub const XID: u32 = 1000;

pub fn rel() -> RelFileNode {
    RelFileNode {
        spc_oid: 1663,
        db_oid: 5,
        rel_node: 16384,
    }
}

/// A block reference to block `blkno` of the main fork.
pub fn block(id: u8, blkno: u32, data: &[u8]) -> BlockReference {
    BlockReference {
        id,
        rel: rel(),
        fork: ForkNumber::Main,
        block: blkno,
        flags: 0,
        image: None,
        data: (!data.is_empty()).then(|| Bytes::copy_from_slice(data)),
    }
}

/// As [`block`], marked `WILL_INIT`.
pub fn init_block(id: u8, blkno: u32, data: &[u8]) -> BlockReference {
    let mut b = block(id, blkno, data);
    b.flags |= BKPBLOCK_WILL_INIT;
    b
}

pub fn record(rmid: u8, info: u8, main: &[u8], blocks: Vec<BlockReference>) -> DecodedRecord {
    DecodedRecord {
        lsn: Lsn(0x1_0000_1000),
        header: RecordHeader {
            total_length: 0,
            xid: XID,
            prev: Lsn(0),
            info,
            rmid,
            crc: 0,
        },
        blocks,
        main_data: Bytes::copy_from_slice(main),
        origin: None,
        toplevel_xid: None,
    }
}

pub fn empty_page() -> Box<Page> {
    let mut page = Box::new([0u8; BLCKSZ]);
    bufpage::init(&mut page, 0);
    page
}

/// Concatenate little-endian fields.
#[macro_export]
macro_rules! le {
    ($($v:expr),* $(,)?) => {{
        let mut out: Vec<u8> = Vec::new();
        $( out.extend_from_slice(&$v.to_le_bytes()); )*
        out
    }};
}
