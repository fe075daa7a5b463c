//! Redo of the heap2 resource manager (`heap2_redo` in `heapam.c`):
//! prune, vacuum, freeze, visible (heap page and visibility-map page),
//! multi-insert, lock of an updated tuple version.
//!
//! `NEW_CID` (logical decoding only) and `REWRITE` (mapping files of
//! logical decoding) reference no block and change no page.

use utils::bytes_reader::Reader;

use crate::bufpage::{self, ItemId, Page};
use crate::heap::{add_tuple, new_tuple, read_or_init, Tuple, XLOG_HEAP_INIT_PAGE};
use crate::heap::{XLH_INSERT_ALL_FROZEN_SET, XLH_INSERT_ALL_VISIBLE_CLEARED, XLOG_HEAP_OPMASK};
use crate::{read_for_redo, Action, ReadMode, Redo, RedoError, BLCKSZ};

pub(crate) const XLOG_HEAP2_REWRITE: u8 = 0x00;
pub(crate) const XLOG_HEAP2_PRUNE: u8 = 0x10;
pub(crate) const XLOG_HEAP2_VACUUM: u8 = 0x20;
pub(crate) const XLOG_HEAP2_FREEZE_PAGE: u8 = 0x30;
pub(crate) const XLOG_HEAP2_VISIBLE: u8 = 0x40;
pub(crate) const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;
pub(crate) const XLOG_HEAP2_LOCK_UPDATED: u8 = 0x60;
pub(crate) const XLOG_HEAP2_NEW_CID: u8 = 0x70;

// `frzflags` of a frozen tuple.
const XLH_FREEZE_XVAC: u8 = 0x02;
const XLH_INVALID_XVAC: u8 = 0x04;
/// `sizeof(xl_heap_freeze_tuple)`.
const SIZE_OF_FREEZE_TUPLE: usize = 12;

/// Visibility-map bits.
const VISIBILITYMAP_VALID_BITS: u8 = 0x03;
/// Bytes of map on a VM page (`MAPSIZE`) and heap blocks per VM page.
const VM_MAPSIZE: usize = BLCKSZ - bufpage::SIZE_OF_PAGE_HEADER;
const VM_HEAPBLOCKS_PER_PAGE: u32 = (VM_MAPSIZE * 4) as u32;

pub(crate) fn redo(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    match rec.info() & XLOG_HEAP_OPMASK {
        XLOG_HEAP2_PRUNE => prune(rec, page),
        XLOG_HEAP2_VACUUM => vacuum(rec, page),
        XLOG_HEAP2_FREEZE_PAGE => freeze_page(rec, page),
        XLOG_HEAP2_VISIBLE => visible(rec, page),
        XLOG_HEAP2_MULTI_INSERT => multi_insert(rec, page),
        XLOG_HEAP2_LOCK_UPDATED => lock_updated(rec, page),
        // Nothing on pages (and these reference no block).
        XLOG_HEAP2_NEW_CID | XLOG_HEAP2_REWRITE => Ok(()),
        op => Err(RedoError::Unsupported {
            rmid: rec.record.header.rmid,
            info: op,
        }),
    }
}

/// The block data as offset numbers.
fn offsets(rec: &Redo<'_>, name: &'static str) -> Result<Vec<u16>, RedoError> {
    let data = rec.data();
    if !data.len().is_multiple_of(2) {
        return Err(rec.malformed(name, format!("{} bytes of offsets", data.len())));
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// `heap_page_prune_execute`: redirect, mark dead and mark unused line
/// pointers, then defragment the page.
fn prune(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let name = "heap2 prune";
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_prune");
    let _latest_removed_xid = r.u32()?;
    let nredirected = r.u16()? as usize;
    let ndead = r.u16()? as usize;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    let offs = offsets(rec, name)?;
    let ndead_end = nredirected * 2 + ndead;
    if offs.len() < ndead_end {
        return Err(rec.malformed(name, "fewer offsets than announced"));
    }
    let (redirected, rest) = offs.split_at(nredirected * 2);
    let (dead, unused) = rest.split_at(ndead);
    for pair in redirected.chunks_exact(2) {
        bufpage::set_item_id(page, pair[0], ItemId::redirect(pair[1]))?;
    }
    for &off in dead {
        bufpage::set_item_id(page, off, ItemId::DEAD)?;
    }
    for &off in unused {
        bufpage::set_item_id(page, off, ItemId::UNUSED)?;
    }
    bufpage::repair_fragmentation(page)?;
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// Mark dead line pointers unused and shorten the line pointer array.
fn vacuum(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let name = "heap2 vacuum";
    let nunused = Reader::new(&rec.record.main_data, "xl_heap_vacuum").u16()? as usize;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    let offs = offsets(rec, name)?;
    let unused = offs
        .get(..nunused)
        .ok_or_else(|| rec.malformed(name, "fewer offsets than announced"))?;
    for &off in unused {
        bufpage::set_item_id(page, off, ItemId::UNUSED)?;
    }
    bufpage::truncate_line_pointer_array(page)?;
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// `heap_execute_freeze_tuple` for each logged freeze plan.
fn freeze_page(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_freeze_page");
    let _cutoff_xid = r.u32()?;
    let ntuples = r.u16()? as usize;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    let mut plans = Reader::new(rec.data(), "xl_heap_freeze_tuple");
    for _ in 0..ntuples {
        let mut plan = Reader::new(plans.bytes(SIZE_OF_FREEZE_TUPLE)?, "xl_heap_freeze_tuple");
        let xmax = plan.u32()?;
        let offnum = plan.u16()?;
        let infomask2 = plan.u16()?;
        let infomask = plan.u16()?;
        let frzflags = plan.u8()?;
        let range = bufpage::item_range(page, offnum)?;
        let mut tuple = Tuple::new(&mut page[range])?;
        tuple.set_xmax(xmax);
        if frzflags & XLH_FREEZE_XVAC != 0 {
            tuple.set_xvac(2);
        }
        if frzflags & XLH_INVALID_XVAC != 0 {
            tuple.set_xvac(0);
        }
        tuple.set_infomask(infomask);
        tuple.set_infomask2(infomask2);
    }
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// `XLOG_HEAP2_VISIBLE`: block 0 is the visibility-map page, block 1 the
/// heap page.
///
/// PostgreSQL sets the heap page's LSN here only when checksums or
/// `wal_log_hints` are on, which the record does not say; this sets it
/// always, as [`crate::redo_block`] promises. The VM page gets the LSN only
/// when its bits change, as in `visibilitymap_set`.
fn visible(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let name = "heap2 visible";
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_visible");
    let _cutoff_xid = r.u32()?;
    let flags = r.u8()?;
    match rec.block.id {
        1 => {
            if read_for_redo(rec, ReadMode::Normal, page)? == Action::NeedsRedo {
                bufpage::set_all_visible(page);
                bufpage::set_lsn(page, rec.end_lsn);
            }
            Ok(())
        }
        0 => {
            let heap_block = rec
                .record
                .block(1)
                .ok_or_else(|| rec.malformed(name, "no heap block"))?
                .block;
            if read_for_redo(rec, ReadMode::ZeroOnError, page)? != Action::NeedsRedo {
                return Ok(());
            }
            if bufpage::is_new(page) {
                bufpage::init(page, 0);
            }
            if rec.block.block != heap_block / VM_HEAPBLOCKS_PER_PAGE {
                return Err(rec.malformed(name, "wrong VM block for the heap block"));
            }
            let in_page = (heap_block % VM_HEAPBLOCKS_PER_PAGE) as usize;
            let byte = bufpage::SIZE_OF_PAGE_HEADER + in_page / 4;
            let shift = (in_page % 4) * 2;
            if (page[byte] >> shift) & VISIBILITYMAP_VALID_BITS != flags {
                page[byte] |= flags << shift;
                bufpage::set_lsn(page, rec.end_lsn);
            }
            Ok(())
        }
        id => Err(RedoError::NoSuchBlock(id)),
    }
}

fn multi_insert(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let name = "heap2 multi insert";
    let init = rec.info() & XLOG_HEAP_INIT_PAGE != 0;
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_multi_insert");
    let flags = r.u8()?;
    r.skip(1)?;
    let ntuples = r.u16()? as usize;
    let offsets = if init {
        (1..=ntuples as u16).collect()
    } else {
        r.bytes(ntuples.saturating_mul(2))?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect::<Vec<_>>()
    };
    if init && ntuples > bufpage::MAX_HEAP_TUPLES_PER_PAGE {
        return Err(rec.malformed(name, format!("{ntuples} tuples")));
    }
    if !read_or_init(rec, init, page)? {
        return Ok(());
    }
    let mut data = Reader::new(rec.data(), "xl_multi_insert_tuple");
    for &offnum in &offsets {
        // Each tuple header is SHORTALIGNed from the start of the data.
        data.skip(data.position() % 2)?;
        let datalen = data.u16()? as usize;
        let infomask2 = data.u16()?;
        let infomask = data.u16()?;
        let hoff = data.u8()?;
        let body = data.bytes(datalen)?;
        let tuple = new_tuple(rec, [infomask2, infomask], hoff, &[body], offnum)?;
        add_tuple(page, &tuple, offnum)?;
    }
    if data.remaining() != 0 {
        return Err(rec.malformed(name, "total tuple length mismatch"));
    }
    bufpage::set_lsn(page, rec.end_lsn);
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
        bufpage::clear_all_visible(page);
    }
    if flags & XLH_INSERT_ALL_FROZEN_SET != 0 {
        bufpage::set_all_visible(page);
    }
    Ok(())
}

fn lock_updated(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_lock_updated");
    let xmax = r.u32()?;
    let offnum = r.u16()?;
    let infobits = r.u8()?;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    let mut tuple = Tuple::on_page(page, offnum)?;
    tuple.reset_xmax_bits(infobits);
    tuple.set_xmax(xmax);
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

#[cfg(test)]
#[path = "heap2_tests.rs"]
mod tests;
