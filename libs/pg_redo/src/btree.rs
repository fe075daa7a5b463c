//! Redo of the B-tree resource manager (`btree_redo` in `nbtxlog.c`).
//!
//! Block ids are those of the records: for an insert 0 is the page, 1 the
//! child whose split completes, 2 the metapage; for a split 0 is the left
//! (original) page, 1 the new right page, 2 the right sibling, 3 the child;
//! and so on, as in `nbtxlog.h`.

use utils::bytes_reader::Reader;

use crate::btree_tuple::{self as itup, Interval};
use crate::bufpage::{self, corrupt, maxalign, AddItem, Page};
use crate::{read_for_redo, Action, ReadMode, Redo, RedoError, BLCKSZ};

const XLOG_BTREE_INSERT_LEAF: u8 = 0x00;
const XLOG_BTREE_INSERT_UPPER: u8 = 0x10;
const XLOG_BTREE_INSERT_META: u8 = 0x20;
const XLOG_BTREE_SPLIT_L: u8 = 0x30;
const XLOG_BTREE_SPLIT_R: u8 = 0x40;
const XLOG_BTREE_INSERT_POST: u8 = 0x50;
const XLOG_BTREE_DEDUP: u8 = 0x60;
const XLOG_BTREE_DELETE: u8 = 0x70;
const XLOG_BTREE_UNLINK_PAGE: u8 = 0x80;
const XLOG_BTREE_UNLINK_PAGE_META: u8 = 0x90;
const XLOG_BTREE_NEWROOT: u8 = 0xA0;
const XLOG_BTREE_MARK_PAGE_HALFDEAD: u8 = 0xB0;
const XLOG_BTREE_VACUUM: u8 = 0xC0;
const XLOG_BTREE_REUSE_PAGE: u8 = 0xD0;
const XLOG_BTREE_META_CLEANUP: u8 = 0xE0;

// `btpo_flags`.
pub(crate) const BTP_LEAF: u16 = 1 << 0;
const BTP_ROOT: u16 = 1 << 1;
const BTP_DELETED: u16 = 1 << 2;
const BTP_META: u16 = 1 << 3;
const BTP_HALF_DEAD: u16 = 1 << 4;
pub(crate) const BTP_HAS_GARBAGE: u16 = 1 << 6;
pub(crate) const BTP_SPLIT_END: u16 = 1 << 5;
const BTP_INCOMPLETE_SPLIT: u16 = 1 << 7;
const BTP_HAS_FULLXID: u16 = 1 << 8;

/// `sizeof(BTPageOpaqueData)`.
pub(crate) const BT_OPAQUE_SIZE: usize = 16;
const BTREE_MAGIC: u32 = 0x053162;
const P_NONE: u32 = 0;
const P_HIKEY: u16 = 1;

/// Whether the B-tree record type has a redo here.
pub(crate) fn can_redo(info: u8) -> bool {
    info <= XLOG_BTREE_META_CLEANUP
}

/// `BTPageOpaqueData` in the special space of a page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Opaque {
    prev: u32,
    next: u32,
    level: u32,
    pub(crate) flags: u16,
    pub(crate) cycleid: u16,
}

impl Opaque {
    pub(crate) fn read(page: &Page) -> Result<Opaque, RedoError> {
        let s = bufpage::special(page);
        if s + BT_OPAQUE_SIZE > BLCKSZ {
            return Err(corrupt(format!("no B-tree special space at {s}")));
        }
        Ok(Opaque {
            prev: bufpage::read_u32(page, s)?,
            next: bufpage::read_u32(page, s + 4)?,
            level: bufpage::read_u32(page, s + 8)?,
            flags: bufpage::read_u16(page, s + 12)?,
            cycleid: bufpage::read_u16(page, s + 14)?,
        })
    }

    pub(crate) fn write(self, page: &mut Page) -> Result<(), RedoError> {
        let s = bufpage::special(page);
        if s + BT_OPAQUE_SIZE > BLCKSZ {
            return Err(corrupt(format!("no B-tree special space at {s}")));
        }
        bufpage::write_u32(page, s, self.prev)?;
        bufpage::write_u32(page, s + 4, self.next)?;
        bufpage::write_u32(page, s + 8, self.level)?;
        bufpage::write_u16(page, s + 12, self.flags)?;
        bufpage::write_u16(page, s + 14, self.cycleid)
    }

    /// `P_FIRSTDATAKEY`: the high key comes first unless rightmost.
    fn first_data_key(self) -> u16 {
        if self.next == P_NONE {
            P_HIKEY
        } else {
            P_HIKEY + 1
        }
    }
}

/// Change the opaque data of a page.
fn update_opaque(page: &mut Page, f: impl FnOnce(&mut Opaque)) -> Result<(), RedoError> {
    let mut o = Opaque::read(page)?;
    f(&mut o);
    o.write(page)
}

/// `_bt_pageinit` and the opaque data.
fn init_page(page: &mut Page, opaque: Opaque) -> Result<(), RedoError> {
    bufpage::init(page, BT_OPAQUE_SIZE);
    opaque.write(page)
}

pub(crate) fn redo(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let info = rec.info();
    let id = rec.block.id;
    match (info, id) {
        (XLOG_BTREE_INSERT_LEAF | XLOG_BTREE_INSERT_UPPER | XLOG_BTREE_INSERT_META, 0) => {
            insert(rec, false, page)
        }
        (XLOG_BTREE_INSERT_POST, 0) => insert(rec, true, page),
        (XLOG_BTREE_INSERT_UPPER | XLOG_BTREE_INSERT_META, 1) => clear_incomplete_split(rec, page),
        (XLOG_BTREE_INSERT_META, 2) => restore_meta(rec, page),
        (XLOG_BTREE_SPLIT_L | XLOG_BTREE_SPLIT_R, _) => {
            split(rec, info == XLOG_BTREE_SPLIT_L, page)
        }
        (XLOG_BTREE_DEDUP, 0) => dedup(rec, page),
        (XLOG_BTREE_VACUUM | XLOG_BTREE_DELETE, 0) => delete(rec, page),
        (XLOG_BTREE_MARK_PAGE_HALFDEAD, _) => mark_page_halfdead(rec, page),
        (XLOG_BTREE_UNLINK_PAGE | XLOG_BTREE_UNLINK_PAGE_META, _) => unlink_page(rec, page),
        (XLOG_BTREE_NEWROOT, 0) => newroot(rec, page),
        (XLOG_BTREE_NEWROOT, 1) => clear_incomplete_split(rec, page),
        (XLOG_BTREE_NEWROOT, 2) | (XLOG_BTREE_META_CLEANUP, 0) => restore_meta(rec, page),
        // REUSE_PAGE only resolves recovery conflicts; it has no block.
        (XLOG_BTREE_REUSE_PAGE, _) => Ok(()),
        (info, _) if can_redo(info) => Err(RedoError::NoSuchBlock(id)),
        (info, _) => Err(RedoError::Unsupported {
            rmid: rec.record.header.rmid,
            info,
        }),
    }
}

/// Read a page that the redo changes only if it needs redo.
fn needs_redo(rec: &Redo<'_>, page: &mut Page) -> Result<bool, RedoError> {
    Ok(read_for_redo(rec, ReadMode::Normal, page)? == Action::NeedsRedo)
}

/// `_bt_restore_meta`: a new metapage from the logged `xl_btree_metadata`.
fn restore_meta(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
    let mut r = Reader::new(rec.data(), "xl_btree_metadata");
    let fields = [r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?];
    let allequalimage = r.u8()?;
    init_page(
        page,
        Opaque {
            flags: BTP_META,
            ..Opaque::default()
        },
    )?;
    let meta = bufpage::SIZE_OF_PAGE_HEADER;
    bufpage::write_u32(page, meta, BTREE_MAGIC)?;
    for (i, v) in fields.iter().enumerate() {
        bufpage::write_u32(page, meta + 4 + 4 * i, *v)?;
    }
    bufpage::write_bytes(page, meta + 32, &(-1.0f64).to_le_bytes())?;
    page[meta + 40] = allequalimage;
    // pd_lower just past BTMetaPageData (48 bytes).
    bufpage::write_u16(page, 12, (meta + 48) as u16)?;
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// `_bt_clear_incomplete_split` on the child page.
fn clear_incomplete_split(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    if needs_redo(rec, page)? {
        update_opaque(page, |o| o.flags &= !BTP_INCOMPLETE_SPLIT)?;
        bufpage::set_lsn(page, rec.end_lsn);
    }
    Ok(())
}

fn add(page: &mut Page, item: &[u8], offnum: u16) -> Result<(), RedoError> {
    bufpage::add_item(page, item, offnum, AddItem::default()).map(|_| ())
}

fn insert(rec: &Redo<'_>, posting: bool, page: &mut Page) -> Result<(), RedoError> {
    let offnum = Reader::new(&rec.record.main_data, "xl_btree_insert").u16()?;
    if !needs_redo(rec, page)? {
        return Ok(());
    }
    if !posting {
        return finish(rec, page, |page| add(page, rec.data(), offnum));
    }
    let mut r = Reader::new(rec.data(), "btree posting insert");
    let postingoff = r.u16()?;
    let mut newitem = r.rest().to_vec();
    let prev = offnum
        .checked_sub(1)
        .ok_or_else(|| corrupt("posting insert at offset 0"))?;
    let oposting = itup::on_page(page, prev)?;
    let nposting = itup::swap_posting(&mut newitem, oposting, postingoff)?;
    let at = bufpage::item_range(page, prev)?.start;
    bufpage::write_bytes(page, at, &nposting)?;
    finish(rec, page, |page| add(page, &newitem, offnum))
}

/// Add an item after the last one.
fn append(page: &mut Page, item: &[u8]) -> Result<(), RedoError> {
    let offnum = bufpage::max_offset(page) + 1;
    add(page, item, offnum)
}

/// Run `f` on the page, then set its LSN.
fn finish(
    rec: &Redo<'_>,
    page: &mut Page,
    f: impl FnOnce(&mut Page) -> Result<(), RedoError>,
) -> Result<(), RedoError> {
    f(page)?;
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// `_bt_restore_page`: items logged as the page region they occupied
/// (lowest address first), added back in line pointer order with their
/// MAXALIGNed sizes.
fn restore_items(page: &mut Page, mut data: &[u8]) -> Result<(), RedoError> {
    let mut items = Vec::new();
    while !data.is_empty() {
        let size = maxalign(itup::size(data)?);
        if size == 0 || size > data.len() {
            return Err(corrupt(format!("restored item of {size} bytes")));
        }
        let (item, rest) = data.split_at(size);
        items.push(item);
        data = rest;
    }
    for (i, item) in items.iter().rev().enumerate() {
        add(page, item, i as u16 + 1)?;
    }
    Ok(())
}

/// `xl_btree_split`.
struct SplitRec {
    level: u32,
    firstrightoff: u16,
    newitemoff: u16,
    postingoff: u16,
}

fn split(rec: &Redo<'_>, newitemonleft: bool, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_btree_split");
    let xl = SplitRec {
        level: r.u32()?,
        firstrightoff: r.u16()?,
        newitemoff: r.u16()?,
        postingoff: r.u16()?,
    };
    let block_no = |id| rec.record.block(id).map(|b| b.block);
    let left = block_no(0).ok_or(RedoError::NoSuchBlock(0))?;
    let right = block_no(1).ok_or(RedoError::NoSuchBlock(1))?;
    let leaf = xl.level == 0;
    match rec.block.id {
        0 => {
            if needs_redo(rec, page)? {
                split_left(rec, &xl, newitemonleft, right, page)?;
            }
            Ok(())
        }
        1 => {
            read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
            let opaque = Opaque {
                prev: left,
                next: block_no(2).unwrap_or(P_NONE),
                level: xl.level,
                flags: if leaf { BTP_LEAF } else { 0 },
                cycleid: 0,
            };
            init_page(page, opaque)?;
            restore_items(page, rec.data())?;
            bufpage::set_lsn(page, rec.end_lsn);
            Ok(())
        }
        2 => {
            if needs_redo(rec, page)? {
                update_opaque(page, |o| o.prev = right)?;
                bufpage::set_lsn(page, rec.end_lsn);
            }
            Ok(())
        }
        3 if !leaf => clear_incomplete_split(rec, page),
        id => Err(RedoError::NoSuchBlock(id)),
    }
}

/// The left half of a split: the original page rebuilt with the new high
/// key, the items before `firstrightoff` and the new item if it goes left.
fn split_left(
    rec: &Redo<'_>,
    xl: &SplitRec,
    newitemonleft: bool,
    right: u32,
    page: &mut Page,
) -> Result<(), RedoError> {
    let mut data = rec.data();
    let mut newitem = Vec::new();
    let mut nposting = None;
    let mut replace_off = 0;
    if newitemonleft || xl.postingoff != 0 {
        let size = maxalign(itup::tuple(data)?.len());
        let (item, rest) = data
            .split_at_checked(size)
            .ok_or_else(|| corrupt("short new item"))?;
        newitem = item.to_vec();
        data = rest;
        if xl.postingoff != 0 {
            replace_off = xl
                .newitemoff
                .checked_sub(1)
                .ok_or_else(|| corrupt("posting split at offset 0"))?;
            let oposting = itup::on_page(page, replace_off)?;
            nposting = Some(itup::swap_posting(&mut newitem, oposting, xl.postingoff)?);
        }
    }
    let hikey = itup::tuple(data)?;
    let hikey_size = maxalign(hikey.len());
    let hikey = data
        .get(..hikey_size)
        .ok_or_else(|| corrupt("short left high key"))?;

    let orig = Opaque::read(page)?;
    let mut left = temp_page_copy_special(page)?;
    add(&mut left, hikey, P_HIKEY)?;
    let mut off = orig.first_data_key();
    while off < xl.firstrightoff {
        if off == replace_off {
            let np = itup::padded(nposting.clone().unwrap_or_default());
            append(&mut left, &np)?;
            off += 1;
            continue;
        }
        if newitemonleft && off == xl.newitemoff {
            append(&mut left, &newitem)?;
        }
        let item = &page[bufpage::item_range(page, off)?];
        append(&mut left, item)?;
        off += 1;
    }
    if newitemonleft && off == xl.newitemoff {
        append(&mut left, &newitem)?;
    }
    page.copy_from_slice(&left[..]);
    update_opaque(page, |o| {
        o.flags = BTP_INCOMPLETE_SPLIT | if xl.level == 0 { BTP_LEAF } else { 0 };
        o.next = right;
        o.cycleid = 0;
    })?;
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// `PageGetTempPageCopySpecial`: an empty page with the special space of
/// `page`.
fn temp_page_copy_special(page: &Page) -> Result<Box<Page>, RedoError> {
    let special = bufpage::special(page);
    if special > BLCKSZ - BT_OPAQUE_SIZE || special != maxalign(special) {
        return Err(corrupt(format!("pd_special {special}")));
    }
    let mut temp: Box<Page> = Box::new([0; BLCKSZ]);
    bufpage::init(&mut temp, BLCKSZ - special);
    temp[special..].copy_from_slice(&page[special..]);
    Ok(temp)
}

fn dedup(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let nintervals = Reader::new(&rec.record.main_data, "xl_btree_dedup").u16()? as usize;
    if !needs_redo(rec, page)? {
        return Ok(());
    }
    let mut r = Reader::new(rec.data(), "BTDedupInterval");
    let mut intervals = Vec::with_capacity(nintervals.min(rec.data().len() / 4));
    for _ in 0..nintervals {
        intervals.push(Interval {
            baseoff: r.u16()?,
            nitems: r.u16()?,
        });
    }
    let opaque = Opaque::read(page)?;
    let mut newpage = temp_page_copy_special(page)?;
    if opaque.next != P_NONE {
        add(
            &mut newpage,
            &page[bufpage::item_range(page, P_HIKEY)?],
            P_HIKEY,
        )?;
    }
    itup::dedup_items(page, &mut newpage, opaque.first_data_key(), &intervals)?;
    update_opaque(&mut newpage, |o| o.flags &= !BTP_HAS_GARBAGE)?;
    page.copy_from_slice(&newpage[..]);
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// VACUUM and DELETE: shrink posting lists, delete items, clear the
/// garbage flag.
fn delete(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_btree_delete");
    if rec.info() == XLOG_BTREE_DELETE {
        r.skip(4)?; // latestRemovedXid
    }
    let ndeleted = r.u16()? as usize;
    let nupdated = r.u16()? as usize;
    if !needs_redo(rec, page)? {
        return Ok(());
    }
    let mut d = Reader::new(rec.data(), "btree delete offsets");
    let offsets = |d: &mut Reader<'_>, n: usize| -> Result<Vec<u16>, RedoError> {
        (0..n).map(|_| Ok(d.u16()?)).collect()
    };
    let deleted = offsets(&mut d, ndeleted)?;
    let updated = offsets(&mut d, nupdated)?;
    for off in updated {
        let ndeletedtids = d.u16()? as usize;
        let tids = offsets(&mut d, ndeletedtids)?;
        let new = itup::update_posting(itup::on_page(page, off)?, &tids)?;
        bufpage::index_tuple_overwrite(page, off, &itup::padded(new))?;
    }
    if !deleted.is_empty() {
        bufpage::index_multi_delete(page, &deleted)?;
    }
    update_opaque(page, |o| o.flags &= !BTP_HAS_GARBAGE)?;
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// The high key of a half-dead leaf: an empty pivot tuple whose downlink
/// is the top parent of the subtree being deleted.
fn half_dead_leaf(page: &mut Page, prev: u32, next: u32, topparent: u32) -> Result<(), RedoError> {
    let opaque = Opaque {
        prev,
        next,
        level: 0,
        flags: BTP_HALF_DEAD | BTP_LEAF,
        cycleid: 0,
    };
    init_page(page, opaque)?;
    let mut trunc = [0u8; itup::INDEX_TUPLE_HEADER];
    // t_info: size 8 with INDEX_ALT_TID_MASK; t_tid: (topparent, 0 attributes).
    itup::set_info(&mut trunc, itup::INDEX_TUPLE_HEADER as u16 | 0x2000)?;
    itup::set_tid_block(&mut trunc, topparent)?;
    add(page, &trunc, P_HIKEY)
}

fn mark_page_halfdead(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_btree_mark_page_halfdead");
    let poffset = r.u16()?;
    r.skip(2 + 4)?; // padding, leafblk
    let (leftblk, rightblk, topparent) = (r.u32()?, r.u32()?, r.u32()?);
    match rec.block.id {
        1 => {
            if !needs_redo(rec, page)? {
                return Ok(());
            }
            let next = poffset
                .checked_add(1)
                .ok_or_else(|| corrupt("parent offset"))?;
            let rightsib = itup::tid_block(itup::on_page(page, next)?)?;
            let range = bufpage::item_range(page, poffset)?;
            itup::set_tid_block(&mut page[range], rightsib)?;
            bufpage::index_tuple_delete(page, next)?;
            bufpage::set_lsn(page, rec.end_lsn);
            Ok(())
        }
        0 => {
            read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
            half_dead_leaf(page, leftblk, rightblk, topparent)?;
            bufpage::set_lsn(page, rec.end_lsn);
            Ok(())
        }
        id => Err(RedoError::NoSuchBlock(id)),
    }
}

fn unlink_page(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_btree_unlink_page");
    let (leftsib, rightsib, level) = (r.u32()?, r.u32()?, r.u32()?);
    r.skip(4)?;
    let safexid = r.u64()?;
    let (leafleftsib, leafrightsib, leaftopparent) = (r.u32()?, r.u32()?, r.u32()?);
    match rec.block.id {
        1 | 2 => {
            if needs_redo(rec, page)? {
                let left = rec.block.id == 1;
                update_opaque(page, |o| {
                    if left {
                        o.next = rightsib;
                    } else {
                        o.prev = leftsib;
                    }
                })?;
                bufpage::set_lsn(page, rec.end_lsn);
            }
            Ok(())
        }
        0 => {
            read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
            let leaf = if level == 0 { BTP_LEAF } else { 0 };
            let opaque = Opaque {
                prev: leftsib,
                next: rightsib,
                level,
                flags: BTP_DELETED | BTP_HAS_FULLXID | leaf,
                cycleid: 0,
            };
            init_page(page, opaque)?;
            // BTPageSetDeleted: the page holds only BTDeletedPageData.
            let contents = bufpage::SIZE_OF_PAGE_HEADER;
            bufpage::write_u16(page, 12, (contents + 8) as u16)?;
            let special = bufpage::special(page);
            bufpage::write_u16(page, 14, special as u16)?;
            bufpage::write_bytes(page, contents, &safexid.to_le_bytes())?;
            bufpage::set_lsn(page, rec.end_lsn);
            Ok(())
        }
        3 => {
            read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
            half_dead_leaf(page, leafleftsib, leafrightsib, leaftopparent)?;
            bufpage::set_lsn(page, rec.end_lsn);
            Ok(())
        }
        4 if rec.info() == XLOG_BTREE_UNLINK_PAGE_META => restore_meta(rec, page),
        id => Err(RedoError::NoSuchBlock(id)),
    }
}

fn newroot(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_btree_newroot");
    let _rootblk = r.u32()?;
    let level = r.u32()?;
    read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
    let opaque = Opaque {
        prev: P_NONE,
        next: P_NONE,
        level,
        flags: BTP_ROOT | if level == 0 { BTP_LEAF } else { 0 },
        cycleid: 0,
    };
    init_page(page, opaque)?;
    if level > 0 {
        restore_items(page, rec.data())?;
    }
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

#[cfg(test)]
#[path = "btree_tests.rs"]
mod tests;
