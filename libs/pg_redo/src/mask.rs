//! PostgreSQL's page masks (`bufmask.c` and each resource manager's
//! `rm_mask`), applied to both pages before they are compared.
//!
//! Masking hides what redo need not reproduce byte for byte: the page LSN
//! and checksum, hint bits (set without WAL), unused space, command ids,
//! speculative-insertion tokens, and B-tree line pointer flags that
//! `_bt_killitems` sets without WAL. Every function here takes whatever
//! bytes it is given: a line pointer, tuple or special space that lies
//! outside the page is left alone, never followed. The page layout comes
//! from [`crate::bufpage`], the heap tuple and B-tree special space from
//! the redo's own definitions.

use postgres_format::constants::{RM_BTREE_ID, RM_HEAP2_ID, RM_HEAP_ID, RM_SEQ_ID};

use crate::btree::{Opaque, BTP_HAS_GARBAGE, BTP_LEAF, BTP_SPLIT_END};
use crate::bufpage::{
    self, maxalign, ItemId, Page, LP_UNUSED, PD_ALL_VISIBLE, PD_CHECKSUM, PD_HAS_FREE_LINES,
    PD_LOWER, PD_PAGE_FULL, PD_PRUNE_XID, PD_UPPER, SIZE_OF_PAGE_HEADER,
};
use crate::heap::{Tuple, HEAP_XMAX_COMMITTED, HEAP_XMAX_INVALID};
use crate::BLCKSZ;

/// What masked bytes are set to (`MASK_MARKER`).
pub const MASK_MARKER: u8 = 0;

/// `HEAP_XMIN_FROZEN`: both xmin hint bits.
const HEAP_XMIN_FROZEN: u16 = 0x0100 | 0x0200;
/// `HEAP_XACT_MASK`: every transaction-status bit of `t_infomask`.
const HEAP_XACT_MASK: u16 = 0xFFF0;
/// `SpecTokenOffsetNumber`: a `t_ctid` holding a speculative token.
const SPEC_TOKEN_OFFSET_NUMBER: u16 = 0xFFFE;

/// The line pointers of `page` that lie in the page, with their numbers.
fn line_pointers(page: &Page) -> impl Iterator<Item = (u16, ItemId)> + '_ {
    (1..=bufpage::max_offset(page))
        .map_while(|offnum| bufpage::item_id(page, offnum).ok().map(|id| (offnum, id)))
}

/// `mask_page_lsn_and_checksum`.
pub fn mask_page_lsn_and_checksum(page: &mut Page) {
    page[..PD_CHECKSUM + 2].fill(MASK_MARKER);
}

/// `mask_page_hint_bits`: `pd_prune_xid` and the hint flags of `pd_flags`.
pub fn mask_page_hint_bits(page: &mut Page) {
    page[PD_PRUNE_XID..PD_PRUNE_XID + 4].fill(MASK_MARKER);
    let flags = bufpage::flags(page);
    bufpage::set_flags(
        page,
        flags & !(PD_PAGE_FULL | PD_HAS_FREE_LINES | PD_ALL_VISIBLE),
    );
}

/// `mask_unused_space`: the hole between `pd_lower` and `pd_upper`.
/// PostgreSQL raises an error on a page whose header is not sane; here such
/// a page is left as it is (and will most likely compare unequal).
pub fn mask_unused_space(page: &mut Page) {
    let (lower, upper, special) = (
        bufpage::lower(page),
        bufpage::upper(page),
        bufpage::special(page),
    );
    if lower > upper || special < upper || lower < SIZE_OF_PAGE_HEADER || special > BLCKSZ {
        return;
    }
    page[lower..upper].fill(MASK_MARKER);
}

/// `mask_lp_flags`: every used line pointer is marked unused.
pub fn mask_lp_flags(page: &mut Page) {
    let used: Vec<(u16, ItemId)> = line_pointers(page).filter(|(_, id)| id.is_used()).collect();
    for (offnum, id) in used {
        let unused = ItemId {
            flags: LP_UNUSED,
            ..id
        };
        // The line pointer was just read: it lies in the page.
        let _ = bufpage::set_item_id(page, offnum, unused);
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

    let items: Vec<(u16, ItemId)> = line_pointers(page).collect();
    for (offnum, id) in items {
        if id.is_normal() {
            if let Ok(mut tuple) = Tuple::on_page(page, offnum) {
                mask_heap_tuple(&mut tuple, blkno, offnum);
            }
        }
        // Padding after an item whose length is not MAXALIGNed.
        if id.has_storage() {
            let end = id.off as usize + id.len as usize;
            let padded = maxalign(end);
            if padded <= BLCKSZ {
                page[end..padded].fill(MASK_MARKER);
            }
        }
    }
}

/// The per-tuple part of `heap_mask`.
fn mask_heap_tuple(tuple: &mut Tuple<'_>, blkno: u32, offnum: u16) {
    let infomask = tuple.infomask();
    // Hint bits may be set without WAL: unless xmin is frozen, all of
    // them; if it is, the xmax ones.
    tuple.set_infomask(if infomask & HEAP_XMIN_FROZEN != HEAP_XMIN_FROZEN {
        infomask & !HEAP_XACT_MASK
    } else {
        infomask & !(HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED)
    });
    // Redo sets the command id to FirstCommandId.
    tuple.clear_field3();
    // A speculative insertion's ctid holds a token that is not WAL-logged;
    // redo sets it to the tuple's own position.
    if tuple.ctid_offnum() == SPEC_TOKEN_OFFSET_NUMBER {
        tuple.set_ctid(blkno, offnum);
    }
}

/// `btree_mask`: B-tree pages, including the metapage.
pub fn btree_mask(page: &mut Page, _blkno: u32) {
    mask_page_lsn_and_checksum(page);
    mask_page_hint_bits(page);
    mask_unused_space(page);

    let Ok(mut opaque) = Opaque::read(page) else {
        return;
    };
    // On leaf pages, _bt_killitems and _bt_check_unique set LP_DEAD without WAL.
    if opaque.flags & BTP_LEAF != 0 {
        mask_lp_flags(page);
    }
    // BTP_HAS_GARBAGE is an unlogged hint; redo of a split neither sets
    // BTP_SPLIT_END nor keeps the cycle id.
    opaque.flags &= !(BTP_HAS_GARBAGE | BTP_SPLIT_END);
    opaque.cycleid = 0;
    // The special space was just read: it lies in the page.
    let _ = opaque.write(page);
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
    use crate::btree::BT_OPAQUE_SIZE;
    use crate::bufpage::{read_u16, read_u32, write_u16, write_u32, LP_NORMAL};

    // Byte offsets in a heap tuple header and in the B-tree special space.
    const T_FIELD3: usize = 8;
    const T_CTID: usize = 12;
    const T_INFOMASK: usize = 20;
    const BTPO_FLAGS: usize = 12;
    const BTPO_CYCLEID: usize = 14;
    const PD_SPECIAL: usize = 16;

    fn get_u16(page: &Page, at: usize) -> u16 {
        read_u16(page, at).unwrap()
    }

    fn set_u16(page: &mut Page, at: usize, v: u16) {
        write_u16(page, at, v).unwrap()
    }

    fn page_with_items(items: &[(u16, u8, u16)]) -> Box<Page> {
        let mut page = Box::new([0u8; BLCKSZ]);
        let lower = SIZE_OF_PAGE_HEADER + items.len() * bufpage::ITEM_ID_SIZE;
        set_u16(&mut page, PD_LOWER, lower as u16);
        let upper = items.iter().map(|i| i.0).min().unwrap_or(BLCKSZ as u16);
        set_u16(&mut page, PD_UPPER, upper);
        set_u16(&mut page, PD_SPECIAL, BLCKSZ as u16);
        for (i, &(off, flags, len)) in items.iter().enumerate() {
            let id = ItemId { off, flags, len };
            bufpage::set_item_id(&mut page, i as u16 + 1, id).unwrap();
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
        write_u32(&mut page[..], 8000 + T_FIELD3, 7).unwrap();
        page[8027..8032].fill(0xAA);
        page[100] = 0x55; // unused space
        bufpage::set_flags(&mut page, PD_ALL_VISIBLE | PD_PAGE_FULL);
        heap_mask(&mut page, 3);
        assert_eq!(get_u16(&page, 8000 + T_INFOMASK), 0x0002);
        assert_eq!(read_u32(&page[..], 8000 + T_FIELD3).unwrap(), 0);
        assert!(page[8027..8032].iter().all(|&b| b == 0));
        assert_eq!(page[100], 0);
        assert_eq!(bufpage::flags(&page), 0);
    }

    #[test]
    fn heap_mask_resets_speculative_ctid() {
        let mut page = page_with_items(&[(8000, LP_NORMAL, 24), (7968, LP_NORMAL, 24)]);
        set_u16(&mut page, 7968 + T_CTID + 4, SPEC_TOKEN_OFFSET_NUMBER);
        write_u32(&mut page[..], 7968 + T_CTID, 12345).unwrap();
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
        let id = bufpage::item_id(&page, 1).unwrap();
        assert_eq!((id.flags, id.len), (LP_UNUSED, 16));
        assert_eq!(get_u16(&page, special + BTPO_FLAGS), BTP_LEAF);
        assert_eq!(get_u16(&page, special + BTPO_CYCLEID), 0);
    }
}
