//! Heap records whose visibility-map changes are not logged as VM pages.
//!
//! Inserting, updating, deleting or locking a tuple on an all-visible (or
//! all-frozen) page clears the page's bits in the visibility map without
//! registering the VM page in the record; redo clears them. The pageserver
//! must do the same from these flags.

use serde::Serialize;

use crate::constants::{RM_HEAP2_ID, RM_HEAP_ID};
use crate::relfile::RelFileNode;
use crate::wal::DecodedRecord;
use utils::bytes_reader::{Reader, ShortInput};

/// Which visibility-map bits a record clears, for which heap block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VisibilityMapClear {
    pub rel: RelFileNode,
    pub heap_block: u32,
    /// Clear both all-visible and all-frozen (otherwise only all-frozen).
    pub all_visible: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeapRecord {
    /// `insert`, `delete`, `update`, `hot_update`, `lock`, `multi_insert`, `lock_updated`.
    pub operation: &'static str,
    /// The record's flags byte as written.
    pub flags: u8,
    pub clears: Vec<VisibilityMapClear>,
}

const XLOG_HEAP_INSERT: u8 = 0x00;
const XLOG_HEAP_DELETE: u8 = 0x10;
const XLOG_HEAP_UPDATE: u8 = 0x20;
const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
const XLOG_HEAP_LOCK: u8 = 0x60;
const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;
const XLOG_HEAP2_LOCK_UPDATED: u8 = 0x60;
const XLOG_HEAP_OPMASK: u8 = 0x70;

/// `XLH_*_ALL_VISIBLE_CLEARED` / `XLH_LOCK_ALL_FROZEN_CLEARED` share bit 0;
/// update has a second bit for the new page.
const CLEARED_OLD: u8 = 0x01;
const CLEARED_NEW: u8 = 0x02;

pub(super) fn parse(
    record: &DecodedRecord,
    r: &mut Reader<'_>,
) -> Result<Option<HeapRecord>, ShortInput> {
    let op = record.header.info & XLOG_HEAP_OPMASK;
    let (operation, flags) = match (record.header.rmid, op) {
        (RM_HEAP_ID, XLOG_HEAP_INSERT) => {
            r.skip(2)?; // offnum
            ("insert", r.u8()?)
        }
        (RM_HEAP_ID, XLOG_HEAP_DELETE) => {
            r.skip(4 + 2 + 1)?; // xmax, offnum, infobits_set
            ("delete", r.u8()?)
        }
        (RM_HEAP_ID, XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE) => {
            r.skip(4 + 2 + 1)?; // old_xmax, old_offnum, old_infobits_set
            let name = if op == XLOG_HEAP_UPDATE {
                "update"
            } else {
                "hot_update"
            };
            (name, r.u8()?)
        }
        (RM_HEAP_ID, XLOG_HEAP_LOCK) => {
            r.skip(4 + 2 + 1)?; // locking_xid, offnum, infobits_set
            ("lock", r.u8()?)
        }
        (RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT) => ("multi_insert", r.u8()?),
        (RM_HEAP2_ID, XLOG_HEAP2_LOCK_UPDATED) => {
            r.skip(4 + 2 + 1)?; // xmax, offnum, infobits_set
            ("lock_updated", r.u8()?)
        }
        _ => return Ok(None),
    };
    let locks = matches!(operation, "lock" | "lock_updated");
    let mut clears = Vec::new();
    let mut clear = |block_id: u8, bit: u8| {
        if flags & bit != 0 {
            if let Some(block) = record.block(block_id) {
                clears.push(VisibilityMapClear {
                    rel: block.rel,
                    heap_block: block.block,
                    all_visible: !locks,
                });
            }
        }
    };
    match operation {
        // The new tuple's page is block 0, the old one block 1 when it differs.
        "update" | "hot_update" => {
            clear(0, CLEARED_NEW);
            let old_block = if record.block(1).is_some() { 1 } else { 0 };
            clear(old_block, CLEARED_OLD);
        }
        _ => clear(0, CLEARED_OLD),
    }
    Ok(Some(HeapRecord {
        operation,
        flags,
        clears,
    }))
}
