//! PostgreSQL's page masks (`bufmask.c` and each resource manager's
//! `rm_mask`), applied to both pages before they are compared.
//!
//! Masking hides what redo need not reproduce byte for byte: the page LSN
//! and checksum, hint bits (set without WAL), unused space, command ids,
//! speculative-insertion tokens, and B-tree line pointer flags that
//! `_bt_killitems` sets without WAL. Every function here takes whatever
//! bytes it is given: a line pointer or special space that points outside
//! the page is left alone, never followed.

use crate::BLCKSZ;

/// What masked bytes are set to (`MASK_MARKER`).
pub const MASK_MARKER: u8 = 0;

const SIZE_OF_PAGE_HEADER: usize = 24;
const ITEM_ID_SIZE: usize = 4;
const MAXALIGN: usize = 8;

// Page header offsets and flags (bufpage.h).
const PD_CHECKSUM: usize = 8;
const PD_FLAGS: usize = 10;
const PD_LOWER: usize = 12;
const PD_UPPER: usize = 14;
const PD_SPECIAL: usize = 16;
const PD_PRUNE_XID: usize = 20;
const PD_HAS_FREE_LINES: u16 = 0x0001;
const PD_PAGE_FULL: u16 = 0x0002;
const PD_ALL_VISIBLE: u16 = 0x0004;

// Line pointer flags (itemid.h).
const LP_UNUSED: u32 = 0;
const LP_NORMAL: u32 = 1;

// Heap tuple header (htup_details.h).
const T_FIELD3: usize = 8;
const T_CTID: usize = 12;
const T_INFOMASK: usize = 20;
const HEAP_TUPLE_HEADER_SIZE: usize = 23;
const HEAP_XMIN_FROZEN: u16 = 0x0100 | 0x0200;
const HEAP_XMAX_COMMITTED: u16 = 0x0400;
const HEAP_XMAX_INVALID: u16 = 0x0800;
const HEAP_XACT_MASK: u16 = 0xFFF0;
const SPEC_TOKEN_OFFSET_NUMBER: u16 = 0xFFFE;

// B-tree special space (nbtree.h): prev, next, level, flags, cycle id.
const BT_OPAQUE_SIZE: usize = 16;
const BTPO_FLAGS: usize = 12;
const BTPO_CYCLEID: usize = 14;
const BTP_LEAF: u16 = 1 << 0;
const BTP_SPLIT_END: u16 = 1 << 5;
const BTP_HAS_GARBAGE: u16 = 1 << 6;

// Resource manager ids.
const RM_HEAP2_ID: u8 = 9;
const RM_HEAP_ID: u8 = 10;
const RM_BTREE_ID: u8 = 11;
const RM_SEQ_ID: u8 = 15;

type Page = [u8; BLCKSZ];

fn get_u16(page: &Page, at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}

fn set_u16(page: &mut Page, at: usize, value: u16) {
    page[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(page: &Page, at: usize) -> u32 {
    u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]])
}

fn set_u32(page: &mut Page, at: usize, value: u32) {
    page[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// A line pointer (`ItemIdData`): offset, flags and length bit fields.
#[derive(Clone, Copy)]
struct ItemId(u32);

impl ItemId {
    fn offset(self) -> usize {
        (self.0 & 0x7FFF) as usize
    }
    fn flags(self) -> u32 {
        (self.0 >> 15) & 0x3
    }
    fn len(self) -> usize {
        (self.0 >> 17) as usize
    }
}

/// `PageGetMaxOffsetNumber`, limited to line pointers that lie in the page.
fn max_offset_number(page: &Page) -> usize {
    let lower = get_u16(page, PD_LOWER) as usize;
    if lower <= SIZE_OF_PAGE_HEADER {
        return 0;
    }
    (lower.min(BLCKSZ) - SIZE_OF_PAGE_HEADER) / ITEM_ID_SIZE
}

fn item_id_pos(offnum: usize) -> usize {
    SIZE_OF_PAGE_HEADER + (offnum - 1) * ITEM_ID_SIZE
}

fn item_id(page: &Page, offnum: usize) -> ItemId {
    ItemId(get_u32(page, item_id_pos(offnum)))
}

/// `mask_page_lsn_and_checksum`.
pub fn mask_page_lsn_and_checksum(page: &mut Page) {
    page[..PD_CHECKSUM].fill(MASK_MARKER);
    page[PD_CHECKSUM..PD_CHECKSUM + 2].fill(MASK_MARKER);
}

/// `mask_page_hint_bits`: `pd_prune_xid` and the hint flags of `pd_flags`.
pub fn mask_page_hint_bits(page: &mut Page) {
    page[PD_PRUNE_XID..PD_PRUNE_XID + 4].fill(MASK_MARKER);
    let flags = get_u16(page, PD_FLAGS);
    set_u16(
        page,
        PD_FLAGS,
        flags & !(PD_PAGE_FULL | PD_HAS_FREE_LINES | PD_ALL_VISIBLE),
    );
}

/// `mask_unused_space`: the hole between `pd_lower` and `pd_upper`.
/// PostgreSQL raises an error on a page whose header is not sane; here such
/// a page is left as it is (and will most likely compare unequal).
pub fn mask_unused_space(page: &mut Page) {
    let lower = get_u16(page, PD_LOWER) as usize;
    let upper = get_u16(page, PD_UPPER) as usize;
    let special = get_u16(page, PD_SPECIAL) as usize;
    if lower > upper || special < upper || lower < SIZE_OF_PAGE_HEADER || special > BLCKSZ {
        return;
    }
    page[lower..upper].fill(MASK_MARKER);
}

/// `mask_lp_flags`: every used line pointer is marked unused.
pub fn mask_lp_flags(page: &mut Page) {
    for offnum in 1..=max_offset_number(page) {
        let pos = item_id_pos(offnum);
        let id = get_u32(page, pos);
        if ItemId(id).flags() != LP_UNUSED {
            set_u32(page, pos, id & !(0x3 << 15));
        }
    }
}

/// `mask_page_content`: everything after the header, and `pd_lower`/`pd_upper`.
pub fn mask_page_content(page: &mut Page) {
    page[SIZE_OF_PAGE_HEADER..].fill(MASK_MARKER);
    page[PD_LOWER..PD_LOWER + 2].fill(MASK_MARKER);
    page[PD_UPPER..PD_UPPER + 2].fill(MASK_MARKER);
}

/// `heap_mask`: heap pages (resource managers heap and heap2).
pub fn heap_mask(page: &mut Page, blkno: u32) {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);

    for offnum in 1..=max_offset_number(page) {
        let iid = item_id(page, offnum);
        let item = iid.offset();
        if iid.flags() == LP_NORMAL && item + HEAP_TUPLE_HEADER_SIZE <= BLCKSZ {
            mask_heap_tuple(page, item, blkno, offnum as u16);
        }
        // Padding after an item whose length is not MAXALIGNed.
        let len = iid.len();
        if len != 0 {
            let end = item + len;
            let padded = end.next_multiple_of(MAXALIGN);
            if padded <= BLCKSZ {
                page[end..padded].fill(MASK_MARKER);
            }
        }
    }
}

/// The per-tuple part of `heap_mask`: the tuple header begins at `item`
/// (checked to lie in the page).
fn mask_heap_tuple(page: &mut Page, item: usize, blkno: u32, offnum: u16) {
    let infomask = get_u16(page, item + T_INFOMASK);
    // Hint bits may be set without WAL: unless xmin is frozen, all of
    // them; if it is, the xmax ones.
    let infomask = if infomask & HEAP_XMIN_FROZEN != HEAP_XMIN_FROZEN {
        infomask & !HEAP_XACT_MASK
    } else {
        infomask & !(HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED)
    };
    set_u16(page, item + T_INFOMASK, infomask);
    // Redo sets the command id to FirstCommandId.
    page[item + T_FIELD3..item + T_FIELD3 + 4].fill(MASK_MARKER);
    // A speculative insertion's ctid holds a token that is not WAL-logged;
    // redo sets it to the tuple's own position.
    let ctid_posid = get_u16(page, item + T_CTID + 4);
    if ctid_posid == SPEC_TOKEN_OFFSET_NUMBER {
        set_u16(page, item + T_CTID, (blkno >> 16) as u16);
        set_u16(page, item + T_CTID + 2, blkno as u16);
        set_u16(page, item + T_CTID + 4, offnum);
    }
}

/// `btree_mask`: B-tree pages, including the metapage.
pub fn btree_mask(page: &mut Page, _blkno: u32) {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);

    let special = get_u16(page, PD_SPECIAL) as usize;
    if special + BT_OPAQUE_SIZE > BLCKSZ {
        return;
    }
    let flags = get_u16(page, special + BTPO_FLAGS);
    // On leaf pages, _bt_killitems and _bt_check_unique set LP_DEAD without WAL.
    if flags & BTP_LEAF != 0 {
        mask_lp_flags(page);
    }
    // BTP_HAS_GARBAGE is an unlogged hint; redo of a split neither sets
    // BTP_SPLIT_END nor keeps the cycle id.
    set_u16(
        page,
        special + BTPO_FLAGS,
        flags & !(BTP_HAS_GARBAGE | BTP_SPLIT_END),
    );
    set_u16(page, special + BTPO_CYCLEID, 0);
}

/// `seq_mask`: sequence pages.
pub fn seq_mask(page: &mut Page, _blkno: u32) {
    mask_page_lsn_and_checksum(page);
    mask_unused_space(page);
}

/// Mask `page` (block `blkno` of its relation) as the `rm_mask` of
/// resource manager `rmid` does. Resource managers without a mask here
/// (XLOG's full-page images among them, which PostgreSQL never compares)
/// get only their LSN and checksum masked: redo sets the LSN, the image
/// holds the one before.
pub fn mask_page(rmid: u8, page: &mut Page, blkno: u32) {
    match rmid {
        RM_HEAP_ID | RM_HEAP2_ID => heap_mask(page, blkno),
        RM_BTREE_ID => btree_mask(page, blkno),
        RM_SEQ_ID => seq_mask(page, blkno),
        _ => mask_page_lsn_and_checksum(page),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with_items(items: &[(u16, u32, u16)]) -> Box<Page> {
        let mut page = Box::new([0u8; BLCKSZ]);
        let lower = SIZE_OF_PAGE_HEADER + items.len() * ITEM_ID_SIZE;
        set_u16(&mut page, PD_LOWER, lower as u16);
        let upper = items.iter().map(|i| i.0).min().unwrap_or(BLCKSZ as u16);
        set_u16(&mut page, PD_UPPER, upper);
        set_u16(&mut page, PD_SPECIAL, BLCKSZ as u16);
        for (i, &(off, flags, len)) in items.iter().enumerate() {
            let id = off as u32 | (flags << 15) | ((len as u32) << 17);
            set_u32(&mut page, item_id_pos(i + 1), id);
        }
        page
    }

    #[test]
    fn garbage_pages_do_not_panic() {
        for seed in 0u32..200 {
            let mut page = Box::new([0u8; BLCKSZ]);
            let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
            for b in page.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            for rmid in [RM_HEAP_ID, RM_HEAP2_ID, RM_BTREE_ID, RM_SEQ_ID, 0] {
                let mut copy = page.clone();
                mask_page(rmid, &mut copy, seed);
            }
        }
        let mut page = Box::new([0xFFu8; BLCKSZ]);
        mask_page(RM_HEAP_ID, &mut page, 0);
        mask_page(RM_BTREE_ID, &mut page, 0);
    }

    #[test]
    fn heap_mask_hides_hints_cid_and_padding() {
        // One normal tuple of 27 bytes at 8000 (pad to 32).
        let mut page = page_with_items(&[(8000, LP_NORMAL, 27)]);
        set_u16(&mut page, 8000 + T_INFOMASK, 0x0902); // XMAX_INVALID | has varwidth
        set_u32(&mut page, 8000 + T_FIELD3, 7);
        page[8027..8032].fill(0xAA);
        page[100] = 0x55; // unused space
        set_u16(&mut page, PD_FLAGS, PD_ALL_VISIBLE | PD_PAGE_FULL);
        heap_mask(&mut page, 3);
        assert_eq!(get_u16(&page, 8000 + T_INFOMASK), 0x0002);
        assert_eq!(get_u32(&page, 8000 + T_FIELD3), 0);
        assert!(page[8027..8032].iter().all(|&b| b == 0));
        assert_eq!(page[100], 0);
        assert_eq!(get_u16(&page, PD_FLAGS), 0);
    }

    #[test]
    fn heap_mask_resets_speculative_ctid() {
        let mut page = page_with_items(&[(8000, LP_NORMAL, 24), (7968, LP_NORMAL, 24)]);
        set_u16(&mut page, 7968 + T_CTID + 4, SPEC_TOKEN_OFFSET_NUMBER);
        set_u32(&mut page, 7968 + T_CTID, 12345);
        heap_mask(&mut page, 0x0001_0002);
        assert_eq!(get_u16(&page, 7968 + T_CTID), 1);
        assert_eq!(get_u16(&page, 7968 + T_CTID + 2), 2);
        assert_eq!(get_u16(&page, 7968 + T_CTID + 4), 2);
    }

    #[test]
    fn btree_mask_leaf() {
        let mut page = page_with_items(&[(8000, 3, 16)]);
        let special = BLCKSZ - BT_OPAQUE_SIZE;
        set_u16(&mut page, PD_SPECIAL, special as u16);
        set_u16(&mut page, PD_UPPER, 7990);
        set_u16(
            &mut page,
            special + BTPO_FLAGS,
            BTP_LEAF | BTP_HAS_GARBAGE | BTP_SPLIT_END,
        );
        set_u16(&mut page, special + BTPO_CYCLEID, 9);
        btree_mask(&mut page, 1);
        assert_eq!(item_id(&page, 1).flags(), LP_UNUSED);
        assert_eq!(item_id(&page, 1).len(), 16);
        assert_eq!(get_u16(&page, special + BTPO_FLAGS), BTP_LEAF);
        assert_eq!(get_u16(&page, special + BTPO_CYCLEID), 0);
    }
}
