//! The standard page layout of PostgreSQL (`bufpage.h`) and the page
//! primitives redo uses (`bufpage.c`): header fields, line pointers, adding
//! items, defragmenting.
//!
//! Every offset read from a page is checked before use: a page that is not
//! what PostgreSQL would have written gives [`RedoError::Malformed`], never
//! a panic or an out-of-bounds write.

use std::ops::Range;

use utils::Lsn;

use crate::{RedoError, BLCKSZ};

/// An 8 KiB page.
pub type Page = [u8; BLCKSZ];

/// `SizeOfPageHeaderData`.
pub const SIZE_OF_PAGE_HEADER: usize = 24;
/// `sizeof(ItemIdData)`.
pub const ITEM_ID_SIZE: usize = 4;

/// `pd_flags` bits.
pub const PD_HAS_FREE_LINES: u16 = 0x0001;
pub const PD_PAGE_FULL: u16 = 0x0002;
pub const PD_ALL_VISIBLE: u16 = 0x0004;

/// `lp_flags` values.
pub const LP_UNUSED: u8 = 0;
pub const LP_NORMAL: u8 = 1;
pub const LP_REDIRECT: u8 = 2;
pub const LP_DEAD: u8 = 3;

/// `MaxHeapTuplesPerPage` for 8 KiB pages.
pub const MAX_HEAP_TUPLES_PER_PAGE: usize = 291;
/// `PG_PAGE_LAYOUT_VERSION`.
const PAGE_LAYOUT_VERSION: u16 = 4;

// Byte offsets of the header fields.
/// `pd_checksum`.
pub(crate) const PD_CHECKSUM: usize = 8;
const PD_FLAGS: usize = 10;
pub(crate) const PD_LOWER: usize = 12;
pub(crate) const PD_UPPER: usize = 14;
const PD_SPECIAL: usize = 16;
const PD_PAGESIZE_VERSION: usize = 18;
pub(crate) const PD_PRUNE_XID: usize = 20;

/// `MAXALIGN` (8 bytes).
pub fn maxalign(n: usize) -> usize {
    n.saturating_add(7) & !7
}

pub(crate) fn corrupt(reason: impl Into<String>) -> RedoError {
    RedoError::Malformed {
        record: "page",
        reason: reason.into(),
    }
}

/// Little-endian `u16` at `pos`, if it lies in `buf`.
pub fn read_u16(buf: &[u8], pos: usize) -> Result<u16, RedoError> {
    let end = pos
        .checked_add(2)
        .ok_or_else(|| corrupt("offset overflow"))?;
    match buf.get(pos..end) {
        Some(&[a, b]) => Ok(u16::from_le_bytes([a, b])),
        _ => Err(corrupt(format!("u16 at {pos} outside {} bytes", buf.len()))),
    }
}

/// Little-endian `u32` at `pos`, if it lies in `buf`.
pub fn read_u32(buf: &[u8], pos: usize) -> Result<u32, RedoError> {
    let end = pos
        .checked_add(4)
        .ok_or_else(|| corrupt("offset overflow"))?;
    match buf.get(pos..end) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => Err(corrupt(format!("u32 at {pos} outside {} bytes", buf.len()))),
    }
}

/// Copy `bytes` into `buf` at `pos`, if they fit.
pub fn write_bytes(buf: &mut [u8], pos: usize, bytes: &[u8]) -> Result<(), RedoError> {
    let len = buf.len();
    let end = pos
        .checked_add(bytes.len())
        .ok_or_else(|| corrupt("offset overflow"))?;
    let dst = buf
        .get_mut(pos..end)
        .ok_or_else(|| corrupt(format!("bytes {pos}..{end} outside {len} bytes")))?;
    dst.copy_from_slice(bytes);
    Ok(())
}

pub fn write_u16(buf: &mut [u8], pos: usize, v: u16) -> Result<(), RedoError> {
    write_bytes(buf, pos, &v.to_le_bytes())
}

pub fn write_u32(buf: &mut [u8], pos: usize, v: u32) -> Result<(), RedoError> {
    write_bytes(buf, pos, &v.to_le_bytes())
}

// Header fields: the offsets are constants inside the page, so these cannot fail.
fn header_u16(page: &Page, pos: usize) -> u16 {
    u16::from_le_bytes([page[pos], page[pos + 1]])
}

fn set_header_u16(page: &mut Page, pos: usize, v: u16) {
    page[pos..pos + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn lower(page: &Page) -> usize {
    header_u16(page, PD_LOWER) as usize
}

pub fn upper(page: &Page) -> usize {
    header_u16(page, PD_UPPER) as usize
}

pub fn special(page: &Page) -> usize {
    header_u16(page, PD_SPECIAL) as usize
}

pub fn flags(page: &Page) -> u16 {
    header_u16(page, PD_FLAGS)
}

fn set_lower(page: &mut Page, v: usize) {
    set_header_u16(page, PD_LOWER, v as u16);
}

fn set_upper(page: &mut Page, v: usize) {
    set_header_u16(page, PD_UPPER, v as u16);
}

pub fn set_flags(page: &mut Page, v: u16) {
    set_header_u16(page, PD_FLAGS, v);
}

/// `PageGetLSN`: stored as two 32-bit halves, high first.
pub fn lsn(page: &Page) -> Lsn {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
    Lsn(((hi as u64) << 32) | lo as u64)
}

/// `PageSetLSN`.
pub fn set_lsn(page: &mut Page, lsn: Lsn) {
    page[0..4].copy_from_slice(&((lsn.0 >> 32) as u32).to_le_bytes());
    page[4..8].copy_from_slice(&(lsn.0 as u32).to_le_bytes());
}

pub fn prune_xid(page: &Page) -> u32 {
    u32::from_le_bytes([
        page[PD_PRUNE_XID],
        page[PD_PRUNE_XID + 1],
        page[PD_PRUNE_XID + 2],
        page[PD_PRUNE_XID + 3],
    ])
}

/// `TransactionIdPrecedes`: modulo-2^32 comparison of normal xids.
pub fn xid_precedes(a: u32, b: u32) -> bool {
    if a < 3 || b < 3 {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

/// `PageSetPrunable`: remember the oldest xid that may make a tuple prunable.
pub fn set_prunable(page: &mut Page, xid: u32) {
    let old = prune_xid(page);
    if old == 0 || xid_precedes(xid, old) {
        page[PD_PRUNE_XID..PD_PRUNE_XID + 4].copy_from_slice(&xid.to_le_bytes());
    }
}

pub fn set_all_visible(page: &mut Page) {
    set_flags(page, flags(page) | PD_ALL_VISIBLE);
}

pub fn clear_all_visible(page: &mut Page) {
    set_flags(page, flags(page) & !PD_ALL_VISIBLE);
}

/// `PageIsNew`: the page was never initialised.
pub fn is_new(page: &Page) -> bool {
    upper(page) == 0
}

/// `PageGetMaxOffsetNumber`.
pub fn max_offset(page: &Page) -> u16 {
    let lower = lower(page);
    if lower <= SIZE_OF_PAGE_HEADER {
        0
    } else {
        ((lower - SIZE_OF_PAGE_HEADER) / ITEM_ID_SIZE) as u16
    }
}

/// `PageInit`: an empty page with `special_size` bytes of special space.
pub fn init(page: &mut Page, special_size: usize) {
    let special = BLCKSZ - maxalign(special_size).min(BLCKSZ - SIZE_OF_PAGE_HEADER);
    page.fill(0);
    set_lower(page, SIZE_OF_PAGE_HEADER);
    set_upper(page, special);
    set_header_u16(page, PD_SPECIAL, special as u16);
    set_header_u16(
        page,
        PD_PAGESIZE_VERSION,
        BLCKSZ as u16 | PAGE_LAYOUT_VERSION,
    );
}

/// A line pointer (`ItemIdData`): 15 bits offset, 2 bits flags, 15 bits length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemId {
    pub off: u16,
    pub flags: u8,
    pub len: u16,
}

impl ItemId {
    pub const UNUSED: ItemId = ItemId {
        off: 0,
        flags: LP_UNUSED,
        len: 0,
    };
    pub const DEAD: ItemId = ItemId {
        off: 0,
        flags: LP_DEAD,
        len: 0,
    };

    pub fn normal(off: u16, len: u16) -> ItemId {
        ItemId {
            off,
            flags: LP_NORMAL,
            len,
        }
    }

    pub fn redirect(to: u16) -> ItemId {
        ItemId {
            off: to,
            flags: LP_REDIRECT,
            len: 0,
        }
    }

    pub fn decode(raw: u32) -> ItemId {
        ItemId {
            off: (raw & 0x7FFF) as u16,
            flags: ((raw >> 15) & 0x3) as u8,
            len: (raw >> 17) as u16,
        }
    }

    pub fn encode(self) -> u32 {
        (self.off as u32 & 0x7FFF) | ((self.flags as u32 & 0x3) << 15) | ((self.len as u32) << 17)
    }

    pub fn is_used(self) -> bool {
        self.flags != LP_UNUSED
    }

    pub fn is_normal(self) -> bool {
        self.flags == LP_NORMAL
    }

    pub fn has_storage(self) -> bool {
        self.len != 0
    }
}

/// Byte position of line pointer `offnum` (1-based).
fn item_id_pos(offnum: u16) -> Result<usize, RedoError> {
    if offnum == 0 {
        return Err(corrupt("line pointer 0"));
    }
    Ok(SIZE_OF_PAGE_HEADER + (offnum as usize - 1) * ITEM_ID_SIZE)
}

/// `PageGetItemId` for an existing line pointer (`1..=max_offset`).
pub fn item_id(page: &Page, offnum: u16) -> Result<ItemId, RedoError> {
    if offnum == 0 || offnum > max_offset(page) {
        return Err(corrupt(format!(
            "line pointer {offnum} beyond {}",
            max_offset(page)
        )));
    }
    Ok(ItemId::decode(read_u32(page, item_id_pos(offnum)?)?))
}

/// Overwrite the existing line pointer `offnum`.
pub fn set_item_id(page: &mut Page, offnum: u16, id: ItemId) -> Result<(), RedoError> {
    if offnum == 0 || offnum > max_offset(page) {
        return Err(corrupt(format!(
            "line pointer {offnum} beyond {}",
            max_offset(page)
        )));
    }
    write_u32(page, item_id_pos(offnum)?, id.encode())
}

/// Where the storage of line pointer `offnum` lies in the page
/// (`PageGetItem`, with `lp_len` bytes).
pub fn item_range(page: &Page, offnum: u16) -> Result<Range<usize>, RedoError> {
    let id = item_id(page, offnum)?;
    if !id.has_storage() {
        return Err(corrupt(format!("line pointer {offnum} has no storage")));
    }
    let start = id.off as usize;
    let end = start + id.len as usize;
    if start < SIZE_OF_PAGE_HEADER || end > BLCKSZ {
        return Err(corrupt(format!(
            "line pointer {offnum} points at {start}..{end}"
        )));
    }
    Ok(start..end)
}

/// The sanity check of the page pointers that `PageAddItemExtended`,
/// `PageRepairFragmentation` and others make first.
fn check_pointers(page: &Page, special_aligned: bool) -> Result<(), RedoError> {
    let (lower, upper, special) = (lower(page), upper(page), special(page));
    if lower < SIZE_OF_PAGE_HEADER
        || lower > upper
        || upper > special
        || special > BLCKSZ
        || (special_aligned && special != maxalign(special))
    {
        return Err(corrupt(format!(
            "corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}"
        )));
    }
    Ok(())
}

/// `PageAddItemExtended` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddItem {
    /// `PAI_OVERWRITE`: reuse an unused line pointer at the offset instead
    /// of shifting the following ones.
    pub overwrite: bool,
    /// `PAI_IS_HEAP`: at most `MaxHeapTuplesPerPage` line pointers.
    pub is_heap: bool,
}

/// `PageAddItemExtended`: put `item` on the page at `offnum` (0 for the
/// first free line pointer). Where PostgreSQL returns
/// `InvalidOffsetNumber`, this returns an error.
pub fn add_item(page: &mut Page, item: &[u8], offnum: u16, how: AddItem) -> Result<u16, RedoError> {
    check_pointers(page, false)?;
    let limit = max_offset(page) + 1;
    let mut offnum = offnum;
    let mut shuffle = false;
    if offnum != 0 {
        if how.overwrite {
            if offnum < limit {
                let id = item_id(page, offnum)?;
                if id.is_used() || id.has_storage() {
                    return Err(corrupt(format!(
                        "will not overwrite used line pointer {offnum}"
                    )));
                }
            }
        } else if offnum < limit {
            shuffle = true;
        }
    } else {
        offnum = limit;
        if flags(page) & PD_HAS_FREE_LINES != 0 {
            let free = (1..limit)
                .find(|&o| item_id(page, o).is_ok_and(|id| !id.is_used() && !id.has_storage()));
            match free {
                Some(o) => offnum = o,
                None => set_flags(page, flags(page) & !PD_HAS_FREE_LINES),
            }
        }
    }
    if offnum > limit {
        return Err(corrupt(format!("item offset {offnum} beyond {limit}")));
    }
    if how.is_heap && offnum as usize > MAX_HEAP_TUPLES_PER_PAGE {
        return Err(corrupt(format!("heap item offset {offnum} too large")));
    }
    let new_lower = if offnum == limit || shuffle {
        lower(page) + ITEM_ID_SIZE
    } else {
        lower(page)
    };
    let new_upper = upper(page)
        .checked_sub(maxalign(item.len()))
        .filter(|&u| u >= new_lower)
        .ok_or_else(|| corrupt(format!("no room for an item of {} bytes", item.len())))?;
    let pos = item_id_pos(offnum)?;
    if shuffle {
        let end = lower(page);
        page.copy_within(pos..end, pos + ITEM_ID_SIZE);
    }
    write_u32(
        page,
        pos,
        ItemId::normal(new_upper as u16, item.len() as u16).encode(),
    )?;
    write_bytes(page, new_upper, item)?;
    set_lower(page, new_lower);
    set_upper(page, new_upper);
    Ok(offnum)
}

/// One item with storage to keep when compacting (`itemIdCompactData`).
struct Compact {
    /// The line pointer that points to it.
    offnum: u16,
    itemoff: usize,
    alignedlen: usize,
}

/// `compactify_tuples`: move the items to the end of the page, in reverse
/// line pointer order without gaps, and point their line pointers there.
fn compactify(page: &mut Page, items: &[Compact]) -> Result<(), RedoError> {
    let scratch: Box<Page> = Box::new(*page);
    let mut upper = special(page);
    for item in items {
        upper = upper
            .checked_sub(item.alignedlen)
            .ok_or_else(|| corrupt("items do not fit the page"))?;
        let src = scratch
            .get(item.itemoff..item.itemoff + item.alignedlen)
            .ok_or_else(|| corrupt("item outside the page"))?;
        write_bytes(page, upper, src)?;
        let mut id = item_id(page, item.offnum)?;
        id.off = upper as u16;
        set_item_id(page, item.offnum, id)?;
    }
    set_upper(page, upper);
    Ok(())
}

/// `PageRepairFragmentation`: compact the storage of the items, make
/// unused line pointers plain, drop the unused ones at the end, and set
/// `PD_HAS_FREE_LINES` when unused ones remain.
pub fn repair_fragmentation(page: &mut Page) -> Result<(), RedoError> {
    check_pointers(page, true)?;
    let (upper, special) = (upper(page), special(page));
    let nline = max_offset(page);
    let mut items = Vec::new();
    let mut totallen = 0usize;
    let mut nunused = 0usize;
    let mut final_used = 0u16;
    for offnum in 1..=nline {
        let id = item_id(page, offnum)?;
        if id.is_used() {
            if id.has_storage() {
                let itemoff = id.off as usize;
                let alignedlen = maxalign(id.len as usize);
                if itemoff < upper || itemoff >= special || itemoff + alignedlen > special {
                    return Err(corrupt(format!("corrupted line pointer: {itemoff}")));
                }
                totallen += alignedlen;
                items.push(Compact {
                    offnum,
                    itemoff,
                    alignedlen,
                });
            }
            final_used = offnum;
        } else {
            set_item_id(page, offnum, ItemId::UNUSED)?;
            nunused += 1;
        }
    }
    if items.is_empty() {
        set_upper(page, special);
    } else {
        if totallen > special - lower(page) {
            return Err(corrupt(format!(
                "corrupted item lengths: total {totallen}, available space {}",
                special - lower(page)
            )));
        }
        compactify(page, &items)?;
    }
    if final_used != nline {
        let unused_at_end = (nline - final_used) as usize;
        nunused -= unused_at_end;
        set_lower(page, lower(page) - ITEM_ID_SIZE * unused_at_end);
    }
    if nunused > 0 {
        set_flags(page, flags(page) | PD_HAS_FREE_LINES);
    } else {
        set_flags(page, flags(page) & !PD_HAS_FREE_LINES);
    }
    Ok(())
}

/// `PageTruncateLinePointerArray`: drop the unused line pointers at the
/// end (keeping at least one), and set `PD_HAS_FREE_LINES` by whether
/// unused ones remain.
pub fn truncate_line_pointer_array(page: &mut Page) -> Result<(), RedoError> {
    let mut counting = true;
    let mut has_free = false;
    let mut unused_at_end = 0usize;
    for offnum in (1..=max_offset(page)).rev() {
        let used = item_id(page, offnum)?.is_used();
        if counting && offnum > 1 {
            if used {
                counting = false;
            } else {
                unused_at_end += 1;
            }
        } else if !used {
            has_free = true;
            break;
        }
    }
    set_lower(page, lower(page) - ITEM_ID_SIZE * unused_at_end);
    let flags = flags(page);
    if has_free {
        set_flags(page, flags | PD_HAS_FREE_LINES);
    } else {
        set_flags(page, flags & !PD_HAS_FREE_LINES);
    }
    Ok(())
}

/// Check an index line pointer as `PageIndexTupleDelete` and friends do:
/// its storage lies between `pd_upper` and `pd_special`, MAXALIGNed.
fn index_item(page: &Page, offnum: u16) -> Result<(ItemId, usize), RedoError> {
    let id = item_id(page, offnum)?;
    let offset = id.off as usize;
    if offset < upper(page)
        || offset + id.len as usize > special(page)
        || offset != maxalign(offset)
    {
        return Err(corrupt(format!(
            "corrupted line pointer: offset = {offset}, size = {}",
            id.len
        )));
    }
    Ok((id, offset))
}

/// `PageIndexTupleDelete`: remove an item and its line pointer, closing
/// both gaps.
pub fn index_tuple_delete(page: &mut Page, offnum: u16) -> Result<(), RedoError> {
    check_pointers(page, true)?;
    let nline = max_offset(page);
    let (id, offset) = index_item(page, offnum)?;
    let size = maxalign(id.len as usize);
    let pos = item_id_pos(offnum)?;
    let (lower, upper) = (lower(page), upper(page));
    page.copy_within(pos + ITEM_ID_SIZE..lower, pos);
    if offset > upper {
        page.copy_within(upper..offset, upper + size);
    }
    set_upper(page, upper + size);
    set_lower(page, lower - ITEM_ID_SIZE);
    for i in 1..nline {
        let mut other = item_id(page, i)?;
        if other.off as usize <= offset {
            other.off += size as u16;
            set_item_id(page, i, other)?;
        }
    }
    Ok(())
}

/// `PageIndexMultiDelete`: remove the items at `offnums` (ascending).
pub fn index_multi_delete(page: &mut Page, offnums: &[u16]) -> Result<(), RedoError> {
    if offnums.len() <= 2 {
        for &offnum in offnums.iter().rev() {
            index_tuple_delete(page, offnum)?;
        }
        return Ok(());
    }
    check_pointers(page, true)?;
    let mut kept_ids = Vec::new();
    let mut items = Vec::new();
    let mut totallen = 0;
    let mut next = 0;
    for offnum in 1..=max_offset(page) {
        let (id, offset) = index_item(page, offnum)?;
        if offnums.get(next) == Some(&offnum) {
            next += 1;
            continue;
        }
        let alignedlen = maxalign(id.len as usize);
        totallen += alignedlen;
        kept_ids.push(id);
        items.push(Compact {
            offnum: kept_ids.len() as u16,
            itemoff: offset,
            alignedlen,
        });
    }
    if next != offnums.len() {
        return Err(corrupt("incorrect index offsets supplied"));
    }
    if totallen > special(page) - lower(page) {
        return Err(corrupt("corrupted item lengths"));
    }
    set_lower(page, SIZE_OF_PAGE_HEADER + kept_ids.len() * ITEM_ID_SIZE);
    for (i, id) in kept_ids.iter().enumerate() {
        set_item_id(page, i as u16 + 1, *id)?;
    }
    if items.is_empty() {
        set_upper(page, special(page));
        Ok(())
    } else {
        compactify(page, &items)
    }
}

/// `PageIndexTupleOverwrite`: replace the item at `offnum` by `item`,
/// moving the items below it when the size changes.
pub fn index_tuple_overwrite(page: &mut Page, offnum: u16, item: &[u8]) -> Result<(), RedoError> {
    check_pointers(page, true)?;
    let (mut id, offset) = index_item(page, offnum)?;
    let old_size = maxalign(id.len as usize);
    let new_size = maxalign(item.len());
    let (lower, upper) = (lower(page), upper(page));
    if new_size > old_size + (upper - lower) {
        return Err(corrupt("no room to overwrite the item"));
    }
    // The new position of the item and of the upper bound.
    let new_offset = offset + old_size - new_size;
    let new_upper = upper + old_size - new_size;
    if new_size != old_size {
        page.copy_within(upper..offset, new_upper);
        set_upper(page, new_upper);
        for i in 1..=max_offset(page) {
            let mut other = item_id(page, i)?;
            if other.has_storage() && other.off as usize <= offset {
                let moved = (other.off as usize + old_size)
                    .checked_sub(new_size)
                    .ok_or_else(|| corrupt("line pointer below the items"))?;
                other.off = moved as u16;
                set_item_id(page, i, other)?;
            }
        }
    }
    id.off = new_offset as u16;
    id.len = item.len() as u16;
    set_item_id(page, offnum, id)?;
    write_bytes(page, new_offset, item)
}

/// `PageGetFreeSpace`: room between the line pointers and the items, less
/// one line pointer.
pub fn free_space(page: &Page) -> usize {
    upper(page)
        .saturating_sub(lower(page))
        .saturating_sub(ITEM_ID_SIZE)
}

/// `PageGetHeapFreeSpace`: as [`free_space`], but zero when no line
/// pointer can be added or reused.
pub fn heap_free_space(page: &Page) -> usize {
    let space = free_space(page);
    let nline = max_offset(page);
    if space == 0 || (nline as usize) < MAX_HEAP_TUPLES_PER_PAGE {
        return space;
    }
    let reusable = flags(page) & PD_HAS_FREE_LINES != 0
        && (1..=nline).any(|o| item_id(page, o).is_ok_and(|id| !id.is_used()));
    if reusable {
        space
    } else {
        0
    }
}

#[cfg(test)]
#[path = "bufpage_tests.rs"]
mod tests;
