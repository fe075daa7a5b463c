//! Redo of the heap resource manager (`heap_redo` in `heapam.c`): insert,
//! delete, update, HOT update, confirm, lock, in-place update; plus the
//! heap tuple header that heap2 shares.
//!
//! The visibility-map bits that insert, delete, update and lock clear are
//! on VM pages the records do not reference; the pageserver clears those
//! itself. Here only the heap page changes (`PD_ALL_VISIBLE` included).

use utils::bytes_reader::Reader;

use crate::bufpage::{self, AddItem, Page};
use crate::{read_for_redo, Action, ReadMode, Redo, RedoError};

pub(crate) const XLOG_HEAP_INSERT: u8 = 0x00;
pub(crate) const XLOG_HEAP_DELETE: u8 = 0x10;
pub(crate) const XLOG_HEAP_UPDATE: u8 = 0x20;
pub(crate) const XLOG_HEAP_TRUNCATE: u8 = 0x30;
pub(crate) const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
pub(crate) const XLOG_HEAP_CONFIRM: u8 = 0x50;
pub(crate) const XLOG_HEAP_LOCK: u8 = 0x60;
pub(crate) const XLOG_HEAP_INPLACE: u8 = 0x70;
pub(crate) const XLOG_HEAP_OPMASK: u8 = 0x70;
pub(crate) const XLOG_HEAP_INIT_PAGE: u8 = 0x80;

// Flags of insert (and multi-insert), update, delete, lock.
pub(crate) const XLH_INSERT_ALL_VISIBLE_CLEARED: u8 = 0x01;
pub(crate) const XLH_INSERT_ALL_FROZEN_SET: u8 = 0x20;
pub(crate) const XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED: u8 = 0x01;
pub(crate) const XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED: u8 = 0x02;
pub(crate) const XLH_UPDATE_PREFIX_FROM_OLD: u8 = 0x20;
pub(crate) const XLH_UPDATE_SUFFIX_FROM_OLD: u8 = 0x40;
pub(crate) const XLH_DELETE_ALL_VISIBLE_CLEARED: u8 = 0x01;
pub(crate) const XLH_DELETE_IS_SUPER: u8 = 0x08;
pub(crate) const XLH_DELETE_IS_PARTITION_MOVE: u8 = 0x10;

// `infobits_set` of delete, update and lock records.
const XLHL_XMAX_IS_MULTI: u8 = 0x01;
const XLHL_XMAX_LOCK_ONLY: u8 = 0x02;
const XLHL_XMAX_EXCL_LOCK: u8 = 0x04;
const XLHL_XMAX_KEYSHR_LOCK: u8 = 0x08;
const XLHL_KEYS_UPDATED: u8 = 0x10;

// `t_infomask` bits.
pub(crate) const HEAP_XMAX_KEYSHR_LOCK: u16 = 0x0010;
pub(crate) const HEAP_COMBOCID: u16 = 0x0020;
pub(crate) const HEAP_XMAX_EXCL_LOCK: u16 = 0x0040;
pub(crate) const HEAP_XMAX_LOCK_ONLY: u16 = 0x0080;
pub(crate) const HEAP_XMAX_COMMITTED: u16 = 0x0400;
pub(crate) const HEAP_XMAX_INVALID: u16 = 0x0800;
pub(crate) const HEAP_XMAX_IS_MULTI: u16 = 0x1000;
pub(crate) const HEAP_MOVED: u16 = 0xC000;
const HEAP_LOCK_MASK: u16 = HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK;
pub(crate) const HEAP_XMAX_BITS: u16 = HEAP_XMAX_COMMITTED
    | HEAP_XMAX_INVALID
    | HEAP_XMAX_IS_MULTI
    | HEAP_LOCK_MASK
    | HEAP_XMAX_LOCK_ONLY;
// `t_infomask2` bits.
pub(crate) const HEAP_KEYS_UPDATED: u16 = 0x2000;
pub(crate) const HEAP_HOT_UPDATED: u16 = 0x4000;

/// `SizeofHeapTupleHeader`: the fixed part of a heap tuple header.
pub(crate) const SIZEOF_HEAP_TUPLE_HEADER: usize = 23;
/// `MaxHeapTupleSize`.
pub(crate) const MAX_HEAP_TUPLE_SIZE: usize = 8160;

/// A heap tuple on a page or being built: its bytes, at least the
/// fixed header long.
pub(crate) struct Tuple<'a>(&'a mut [u8]);

impl<'a> Tuple<'a> {
    const XMIN: usize = 0;
    const XMAX: usize = 4;
    const FIELD3: usize = 8;
    const CTID: usize = 12;
    const INFOMASK2: usize = 18;
    const INFOMASK: usize = 20;
    pub const HOFF: usize = 22;

    pub fn new(bytes: &'a mut [u8]) -> Result<Self, RedoError> {
        if bytes.len() < SIZEOF_HEAP_TUPLE_HEADER {
            return Err(bufpage::corrupt(format!(
                "heap tuple of {} bytes",
                bytes.len()
            )));
        }
        Ok(Tuple(bytes))
    }

    /// The tuple at `offnum` on `page`: its line pointer must be normal.
    pub fn on_page(page: &'a mut Page, offnum: u16) -> Result<Self, RedoError> {
        let id = bufpage::item_id(page, offnum)
            .map_err(|_| bufpage::corrupt(format!("invalid lp {offnum}")))?;
        if !id.is_normal() {
            return Err(bufpage::corrupt(format!("invalid lp {offnum}: {id:?}")));
        }
        let range = bufpage::item_range(page, offnum)?;
        Tuple::new(&mut page[range])
    }

    fn u16_at(&self, pos: usize) -> u16 {
        u16::from_le_bytes([self.0[pos], self.0[pos + 1]])
    }

    fn set_u16_at(&mut self, pos: usize, v: u16) {
        self.0[pos..pos + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32_at(&mut self, pos: usize, v: u32) {
        self.0[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn infomask(&self) -> u16 {
        self.u16_at(Self::INFOMASK)
    }

    pub fn infomask2(&self) -> u16 {
        self.u16_at(Self::INFOMASK2)
    }

    pub fn hoff(&self) -> usize {
        self.0[Self::HOFF] as usize
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn bytes(&self) -> &[u8] {
        self.0
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.0
    }

    pub fn set_infomask(&mut self, v: u16) {
        self.set_u16_at(Self::INFOMASK, v);
    }

    pub fn set_infomask2(&mut self, v: u16) {
        self.set_u16_at(Self::INFOMASK2, v);
    }

    pub fn set_hoff(&mut self, v: u8) {
        self.0[Self::HOFF] = v;
    }

    pub fn set_xmin(&mut self, xid: u32) {
        self.set_u32_at(Self::XMIN, xid);
    }

    pub fn set_xmax(&mut self, xid: u32) {
        self.set_u32_at(Self::XMAX, xid);
    }

    /// `HeapTupleHeaderSetXvac`: the same field as the command id.
    pub fn set_xvac(&mut self, xid: u32) {
        self.set_u32_at(Self::FIELD3, xid);
    }

    /// `HeapTupleHeaderSetCmin`/`SetCmax` with `FirstCommandId`, not combo.
    /// Zero `t_field3` (the command id or xvac) alone, as masking does.
    pub fn clear_field3(&mut self) {
        self.set_u32_at(Self::FIELD3, 0);
    }

    /// The offset number of `t_ctid`.
    pub fn ctid_offnum(&self) -> u16 {
        self.u16_at(Self::CTID + 4)
    }

    pub fn set_first_command_id(&mut self) {
        self.set_u32_at(Self::FIELD3, 0);
        self.set_infomask(self.infomask() & !HEAP_COMBOCID);
    }

    /// `t_ctid = (block, offnum)`.
    pub fn set_ctid(&mut self, block: u32, offnum: u16) {
        self.set_u16_at(Self::CTID, (block >> 16) as u16);
        self.set_u16_at(Self::CTID + 2, block as u16);
        self.set_u16_at(Self::CTID + 4, offnum);
    }

    /// Forget the old xmax before a new one is set: the common start of
    /// delete, update and lock redo, then `fix_infomask_from_infobits`.
    pub fn reset_xmax_bits(&mut self, infobits: u8) {
        let mut infomask = self.infomask() & !(HEAP_XMAX_BITS | HEAP_MOVED);
        let mut infomask2 = self.infomask2() & !HEAP_KEYS_UPDATED;
        // fix_infomask_from_infobits (the bits it clears are already clear).
        if infobits & XLHL_XMAX_IS_MULTI != 0 {
            infomask |= HEAP_XMAX_IS_MULTI;
        }
        if infobits & XLHL_XMAX_LOCK_ONLY != 0 {
            infomask |= HEAP_XMAX_LOCK_ONLY;
        }
        if infobits & XLHL_XMAX_EXCL_LOCK != 0 {
            infomask |= HEAP_XMAX_EXCL_LOCK;
        }
        if infobits & XLHL_XMAX_KEYSHR_LOCK != 0 {
            infomask |= HEAP_XMAX_KEYSHR_LOCK;
        }
        if infobits & XLHL_KEYS_UPDATED != 0 {
            infomask2 |= HEAP_KEYS_UPDATED;
        }
        self.set_infomask(infomask);
        self.set_infomask2(infomask2);
    }
}

/// `HEAP_XMAX_IS_LOCKED_ONLY`.
fn xmax_is_locked_only(infomask: u16) -> bool {
    infomask & HEAP_XMAX_LOCK_ONLY != 0
        || infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK) == HEAP_XMAX_EXCL_LOCK
}

/// Build a new tuple: a zeroed fixed header with the logged infomasks and
/// `t_hoff`, then `body` (null bitmap, padding, data), xmin the record's
/// xid, command id `FirstCommandId` and `t_ctid = (block, offnum)`.
pub(crate) fn new_tuple(
    rec: &Redo<'_>,
    header: [u16; 2],
    hoff: u8,
    body: &[&[u8]],
    offnum: u16,
) -> Result<Vec<u8>, RedoError> {
    let len = SIZEOF_HEAP_TUPLE_HEADER + body.iter().map(|b| b.len()).sum::<usize>();
    if len > MAX_HEAP_TUPLE_SIZE {
        return Err(bufpage::corrupt(format!("heap tuple of {len} bytes")));
    }
    let mut buf = Vec::with_capacity(len);
    buf.resize(SIZEOF_HEAP_TUPLE_HEADER, 0);
    for part in body {
        buf.extend_from_slice(part);
    }
    let mut tuple = Tuple::new(&mut buf)?;
    tuple.set_infomask2(header[0]);
    tuple.set_infomask(header[1]);
    tuple.set_hoff(hoff);
    tuple.set_xmin(rec.xid());
    tuple.set_first_command_id();
    tuple.set_ctid(rec.block.block, offnum);
    Ok(buf)
}

/// `PageAddItem(page, tuple, offnum, overwrite = true, is_heap = true)`,
/// which must succeed, after the check that `offnum` is at most one past
/// the last line pointer.
pub(crate) fn add_tuple(page: &mut Page, tuple: &[u8], offnum: u16) -> Result<(), RedoError> {
    if bufpage::max_offset(page) as usize + 1 < offnum as usize {
        return Err(bufpage::corrupt("invalid max offset number"));
    }
    let how = AddItem {
        overwrite: true,
        is_heap: true,
    };
    bufpage::add_item(page, tuple, offnum, how).map(|_| ())
}

/// Read the page for a record that initialises it when `init` is set.
/// Returns false when there is nothing to do.
pub(crate) fn read_or_init(rec: &Redo<'_>, init: bool, page: &mut Page) -> Result<bool, RedoError> {
    if init {
        read_for_redo(rec, ReadMode::ZeroAndLock, page)?;
        bufpage::init(page, 0);
        return Ok(true);
    }
    Ok(read_for_redo(rec, ReadMode::Normal, page)? == Action::NeedsRedo)
}

pub(crate) fn redo(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    match rec.info() & XLOG_HEAP_OPMASK {
        XLOG_HEAP_INSERT => insert(rec, page),
        XLOG_HEAP_DELETE => delete(rec, page),
        XLOG_HEAP_UPDATE => update(rec, false, page),
        XLOG_HEAP_HOT_UPDATE => update(rec, true, page),
        XLOG_HEAP_CONFIRM => confirm(rec, page),
        XLOG_HEAP_LOCK => lock(rec, page),
        XLOG_HEAP_INPLACE => inplace(rec, page),
        // Logged for logical decoding only; it references no block.
        XLOG_HEAP_TRUNCATE => Ok(()),
        op => Err(RedoError::Unsupported {
            rmid: rec.record.header.rmid,
            info: op,
        }),
    }
}

/// An `xl_heap_header` and the tuple bytes after it.
fn heap_header<'a>(r: &mut Reader<'a>) -> Result<([u16; 2], u8), RedoError> {
    let infomask2 = r.u16()?;
    let infomask = r.u16()?;
    Ok(([infomask2, infomask], r.u8()?))
}

fn insert(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_insert");
    let offnum = r.u16()?;
    let flags = r.u8()?;
    if !read_or_init(rec, rec.info() & XLOG_HEAP_INIT_PAGE != 0, page)? {
        return Ok(());
    }
    let mut data = Reader::new(rec.data(), "heap insert tuple");
    let (header, hoff) = heap_header(&mut data)?;
    if data.remaining() == 0 {
        return Err(rec.malformed("heap insert", "no tuple data"));
    }
    let tuple = new_tuple(rec, header, hoff, &[data.rest()], offnum)?;
    add_tuple(page, &tuple, offnum)?;
    bufpage::set_lsn(page, rec.end_lsn);
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED != 0 {
        bufpage::clear_all_visible(page);
    }
    Ok(())
}

fn delete(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_delete");
    let xmax = r.u32()?;
    let offnum = r.u16()?;
    let infobits = r.u8()?;
    let flags = r.u8()?;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    let mut tuple = Tuple::on_page(page, offnum)?;
    tuple.reset_xmax_bits(infobits);
    tuple.set_infomask2(tuple.infomask2() & !HEAP_HOT_UPDATED);
    if flags & XLH_DELETE_IS_SUPER == 0 {
        tuple.set_xmax(xmax);
    } else {
        tuple.set_xmin(0);
    }
    tuple.set_first_command_id();
    if flags & XLH_DELETE_IS_PARTITION_MOVE != 0 {
        tuple.set_ctid(u32::MAX, 0xFFFD);
    } else {
        tuple.set_ctid(rec.block.block, offnum);
    }
    bufpage::set_prunable(page, rec.xid());
    if flags & XLH_DELETE_ALL_VISIBLE_CLEARED != 0 {
        bufpage::clear_all_visible(page);
    }
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// `xl_heap_update`.
struct UpdateRec {
    old_xmax: u32,
    old_offnum: u16,
    old_infobits: u8,
    flags: u8,
    new_xmax: u32,
    new_offnum: u16,
}

fn update(rec: &Redo<'_>, hot: bool, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_update");
    let xl = UpdateRec {
        old_xmax: r.u32()?,
        old_offnum: r.u16()?,
        old_infobits: r.u8()?,
        flags: r.u8()?,
        new_xmax: r.u32()?,
        new_offnum: r.u16()?,
    };
    // Block 0 holds the new tuple; block 1, if present, the old one.
    let same_page = rec.record.block(1).is_none();
    match (rec.block.id, same_page) {
        (0, true) => {
            if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
                return Ok(());
            }
            update_old(rec, &xl, hot, page)?;
            update_new(rec, &xl, page)
        }
        (0, false) => {
            let init = rec.info() & XLOG_HEAP_INIT_PAGE != 0;
            if !read_or_init(rec, init, page)? {
                return Ok(());
            }
            update_new(rec, &xl, page)
        }
        (1, false) => {
            if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
                return Ok(());
            }
            update_old(rec, &xl, hot, page)
        }
        (id, _) => Err(RedoError::NoSuchBlock(id)),
    }
}

/// The old tuple of an update: xmax set, `t_ctid` pointing at the new one.
fn update_old(rec: &Redo<'_>, xl: &UpdateRec, hot: bool, page: &mut Page) -> Result<(), RedoError> {
    let new_block = rec.record.block(0).ok_or(RedoError::NoSuchBlock(0))?.block;
    let mut tuple = Tuple::on_page(page, xl.old_offnum)?;
    tuple.reset_xmax_bits(xl.old_infobits);
    // reset_xmax_bits applied the infobits after clearing; HOT flag sits
    // in infomask2 outside the bits it touches, so order does not matter.
    let infomask2 = tuple.infomask2();
    if hot {
        tuple.set_infomask2(infomask2 | HEAP_HOT_UPDATED);
    } else {
        tuple.set_infomask2(infomask2 & !HEAP_HOT_UPDATED);
    }
    tuple.set_xmax(xl.old_xmax);
    tuple.set_first_command_id();
    tuple.set_ctid(new_block, xl.new_offnum);
    bufpage::set_prunable(page, rec.xid());
    if xl.flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED != 0 {
        bufpage::clear_all_visible(page);
    }
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

/// The new tuple of an update, rebuilt from the record and, when the
/// record says so, a prefix and suffix of the old tuple on the same page.
fn update_new(rec: &Redo<'_>, xl: &UpdateRec, page: &mut Page) -> Result<(), RedoError> {
    let name = "heap update";
    let mut r = Reader::new(rec.data(), "heap update new tuple");
    let prefix_len = match xl.flags & XLH_UPDATE_PREFIX_FROM_OLD {
        0 => 0,
        _ => r.u16()? as usize,
    };
    let suffix_len = match xl.flags & XLH_UPDATE_SUFFIX_FROM_OLD {
        0 => 0,
        _ => r.u16()? as usize,
    };
    let (header, hoff) = heap_header(&mut r)?;
    let body = r.rest();
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    if prefix_len > 0 || suffix_len > 0 {
        if rec.block.id != 0 || rec.record.block(1).is_some() {
            return Err(rec.malformed(name, "prefix or suffix from an old tuple on another page"));
        }
        let range = bufpage::item_range(page, xl.old_offnum)?;
        let old = Tuple::new(&mut page[range])?;
        let old_data = old.bytes().get(old.hoff()..).unwrap_or(&[]);
        prefix = old_data
            .get(..prefix_len)
            .ok_or_else(|| rec.malformed(name, "prefix longer than the old tuple"))?
            .to_vec();
        let start = old.len().checked_sub(suffix_len);
        suffix = start
            .and_then(|s| old.bytes().get(s..))
            .ok_or_else(|| rec.malformed(name, "suffix longer than the old tuple"))?
            .to_vec();
    }
    let parts: [&[u8]; 3] = if prefix_len > 0 {
        // The bitmap and padding come first, then the prefix, then the rest.
        let bitmap_len = (hoff as usize)
            .checked_sub(SIZEOF_HEAP_TUPLE_HEADER)
            .filter(|&n| n <= body.len())
            .ok_or_else(|| rec.malformed(name, format!("t_hoff {hoff}")))?;
        let (bitmap, rest) = body.split_at(bitmap_len);
        [bitmap, &prefix, rest]
    } else {
        [body, &[], &[]]
    };
    let mut tuple = new_tuple(
        rec,
        header,
        hoff,
        &[parts[0], parts[1], parts[2], &suffix],
        xl.new_offnum,
    )?;
    Tuple::new(&mut tuple)?.set_xmax(xl.new_xmax);
    add_tuple(page, &tuple, xl.new_offnum)?;
    if xl.flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED != 0 {
        bufpage::clear_all_visible(page);
    }
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

fn confirm(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let offnum = Reader::new(&rec.record.main_data, "xl_heap_confirm").u16()?;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    Tuple::on_page(page, offnum)?.set_ctid(rec.block.block, offnum);
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

fn lock(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let mut r = Reader::new(&rec.record.main_data, "xl_heap_lock");
    let locking_xid = r.u32()?;
    let offnum = r.u16()?;
    let infobits = r.u8()?;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    let mut tuple = Tuple::on_page(page, offnum)?;
    tuple.reset_xmax_bits(infobits);
    if xmax_is_locked_only(tuple.infomask()) {
        tuple.set_infomask2(tuple.infomask2() & !HEAP_HOT_UPDATED);
        tuple.set_ctid(rec.block.block, offnum);
    }
    tuple.set_xmax(locking_xid);
    tuple.set_first_command_id();
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

fn inplace(rec: &Redo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let offnum = Reader::new(&rec.record.main_data, "xl_heap_inplace").u16()?;
    if read_for_redo(rec, ReadMode::Normal, page)? != Action::NeedsRedo {
        return Ok(());
    }
    let new_data = rec.data();
    let mut tuple = Tuple::on_page(page, offnum)?;
    let hoff = tuple.hoff();
    if tuple.len().checked_sub(hoff) != Some(new_data.len()) {
        return Err(rec.malformed("heap inplace", "wrong tuple length"));
    }
    tuple.bytes_mut()[hoff..].copy_from_slice(new_data);
    bufpage::set_lsn(page, rec.end_lsn);
    Ok(())
}

#[cfg(test)]
#[path = "heap_tests.rs"]
mod tests;
