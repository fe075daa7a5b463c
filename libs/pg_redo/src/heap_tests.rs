use postgres_format::constants::RM_HEAP_ID;
use postgres_format::wal::DecodedRecord;

use super::*;
use crate::bufpage::{item_id, item_range, ItemId, PD_ALL_VISIBLE};
use crate::le;
use crate::test_util::*;
use crate::{redo_block, BLCKSZ};

const BLK: u32 = 7;

/// The block data of an insert: `xl_heap_header` (2 attributes, t_hoff 24)
/// and 1 byte of padding and 8 bytes of data.
fn tuple_data(fill: u8) -> Vec<u8> {
    let mut d = le!(2u16, 0x0802u16, 24u8);
    d.push(0);
    d.extend_from_slice(&[fill; 8]);
    d
}

fn insert_record(offnum: u16, flags: u8, init: bool, fill: u8) -> DecodedRecord {
    let main = le!(offnum, flags);
    let (info, blk) = if init {
        (
            XLOG_HEAP_INSERT | XLOG_HEAP_INIT_PAGE,
            init_block(0, BLK, &tuple_data(fill)),
        )
    } else {
        (XLOG_HEAP_INSERT, block(0, BLK, &tuple_data(fill)))
    };
    record(RM_HEAP_ID, info, &main, vec![blk])
}

fn apply(rec: &DecodedRecord, id: u8, page: &mut Page) -> Result<(), RedoError> {
    redo_block(rec, END_LSN, id, page)
}

/// A page with `n` tuples inserted by redo, the first with INIT_PAGE.
fn page_with(n: u16) -> Box<Page> {
    let mut page = Box::new([0u8; BLCKSZ]);
    for off in 1..=n {
        apply(&insert_record(off, 0, off == 1, off as u8), 0, &mut page).unwrap();
    }
    page
}

fn tuple_bytes(page: &Page, off: u16) -> Vec<u8> {
    page[item_range(page, off).unwrap()].to_vec()
}

fn u16_at(b: &[u8], pos: usize) -> u16 {
    u16::from_le_bytes([b[pos], b[pos + 1]])
}

fn u32_at(b: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes(b[pos..pos + 4].try_into().unwrap())
}

/// (xmin, xmax, cid, ctid block, ctid offset, infomask2, infomask)
fn header(page: &Page, off: u16) -> (u32, u32, u32, u32, u16, u16, u16) {
    let t = tuple_bytes(page, off);
    let blk = ((u16_at(&t, 12) as u32) << 16) | u16_at(&t, 14) as u32;
    (
        u32_at(&t, 0),
        u32_at(&t, 4),
        u32_at(&t, 8),
        blk,
        u16_at(&t, 16),
        u16_at(&t, 18),
        u16_at(&t, 20),
    )
}

#[test]
fn insert_init_page_layout() {
    let page = page_with(1);
    assert_eq!(bufpage::lsn(&page), END_LSN);
    assert_eq!((bufpage::lower(&page), bufpage::upper(&page)), (28, 8160));
    assert_eq!(item_id(&page, 1).unwrap(), ItemId::normal(8160, 32));
    let t = tuple_bytes(&page, 1);
    assert_eq!(header(&page, 1), (XID, 0, 0, BLK, 1, 2, 0x0802));
    assert_eq!(t[22], 24);
    assert_eq!(&t[23..], &[0, 1, 1, 1, 1, 1, 1, 1, 1]);
}

#[test]
fn insert_clears_all_visible_and_appends() {
    let mut page = page_with(1);
    bufpage::set_all_visible(&mut page);
    apply(
        &insert_record(2, XLH_INSERT_ALL_VISIBLE_CLEARED, false, 9),
        0,
        &mut page,
    )
    .unwrap();
    assert_eq!(bufpage::flags(&page) & PD_ALL_VISIBLE, 0);
    assert_eq!(item_id(&page, 2).unwrap(), ItemId::normal(8128, 32));
    // Beyond max offset + 1 is an error.
    assert!(apply(&insert_record(4, 0, false, 9), 0, &mut page).is_err());
}

#[test]
fn insert_checks_will_init_and_skips_new_pages() {
    let mut page = Box::new([0u8; BLCKSZ]);
    apply(&insert_record(1, 0, false, 1), 0, &mut page).unwrap();
    assert!(
        page.iter().all(|&b| b == 0),
        "uninitialised page is left alone"
    );
    let mut rec = insert_record(1, 0, true, 1);
    rec.blocks[0].flags = 0;
    assert!(matches!(
        apply(&rec, 0, &mut page),
        Err(RedoError::Malformed { .. })
    ));
    assert_eq!(apply(&rec, 3, &mut page), Err(RedoError::NoSuchBlock(3)));
}

fn delete_record(offnum: u16, infobits: u8, flags: u8) -> DecodedRecord {
    let main = le!(555u32, offnum, infobits, flags);
    record(
        RM_HEAP_ID,
        XLOG_HEAP_DELETE,
        &main,
        vec![block(0, BLK, &[])],
    )
}

#[test]
fn delete_sets_xmax_and_prune_hint() {
    let mut page = page_with(2);
    bufpage::set_all_visible(&mut page);
    apply(
        &delete_record(2, XLHL_KEYS_UPDATED, XLH_DELETE_ALL_VISIBLE_CLEARED),
        0,
        &mut page,
    )
    .unwrap();
    let (xmin, xmax, cid, blk, off, im2, im) = header(&page, 2);
    assert_eq!((xmin, xmax, cid, blk, off), (XID, 555, 0, BLK, 2));
    assert_eq!(im2, 2 | HEAP_KEYS_UPDATED);
    // XMAX_INVALID (0x0800) cleared.
    assert_eq!(im, 0x0002);
    assert_eq!(bufpage::prune_xid(&page), XID);
    assert_eq!(bufpage::flags(&page) & PD_ALL_VISIBLE, 0);
    // Super-delete clears xmin; partition move marks t_ctid.
    apply(
        &delete_record(1, 0, XLH_DELETE_IS_SUPER | XLH_DELETE_IS_PARTITION_MOVE),
        0,
        &mut page,
    )
    .unwrap();
    let (xmin, xmax, _, blk, off, ..) = header(&page, 1);
    assert_eq!((xmin, xmax, blk, off), (0, 0, u32::MAX, 0xFFFD));
    // A missing line pointer is an error.
    assert!(apply(&delete_record(3, 0, 0), 0, &mut page).is_err());
}

fn update_main(flags: u8, old_off: u16, new_off: u16) -> Vec<u8> {
    le!(777u32, old_off, XLHL_KEYS_UPDATED, flags, 0u32, new_off)
}

#[test]
fn update_on_one_page() {
    let mut page = page_with(1);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_UPDATE,
        &update_main(0, 1, 2),
        vec![block(0, BLK, &tuple_data(0x44))],
    );
    apply(&rec, 0, &mut page).unwrap();
    let (_, xmax, _, blk, off, im2, _) = header(&page, 1);
    assert_eq!((xmax, blk, off, im2), (777, BLK, 2, 2 | HEAP_KEYS_UPDATED));
    assert_eq!(header(&page, 2), (XID, 0, 0, BLK, 2, 2, 0x0802));
    assert_eq!(bufpage::prune_xid(&page), XID);
}

#[test]
fn hot_update_with_prefix_and_suffix() {
    let mut page = page_with(1);
    // Old tuple data (after t_hoff 24): 1 1 1 1 1 1 1 1.
    // New: prefix 3 bytes, suffix 2 bytes from the old; 4 new bytes.
    let flags = XLH_UPDATE_PREFIX_FROM_OLD | XLH_UPDATE_SUFFIX_FROM_OLD;
    let mut data = le!(3u16, 2u16, 0x8002u16, 0x2802u16, 24u8);
    data.push(0xEE); // the bitmap/padding byte before t_hoff
    data.extend_from_slice(&[9, 9, 9, 9]);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_HOT_UPDATE,
        &update_main(flags, 1, 2),
        vec![block(0, BLK, &data)],
    );
    apply(&rec, 0, &mut page).unwrap();
    let (.., im2, _) = header(&page, 1);
    assert_eq!(im2 & HEAP_HOT_UPDATED, HEAP_HOT_UPDATED);
    let t = tuple_bytes(&page, 2);
    assert_eq!(t.len(), 23 + 1 + 3 + 4 + 2);
    assert_eq!(&t[23..], &[0xEE, 1, 1, 1, 9, 9, 9, 9, 1, 1]);
    // A suffix longer than the old tuple is an error, not a panic.
    let mut page = page_with(1);
    let mut bad = le!(200u16, 0x8002u16, 0u16, 24u8);
    bad.push(0);
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_HOT_UPDATE,
        &update_main(XLH_UPDATE_SUFFIX_FROM_OLD, 1, 2),
        vec![block(0, BLK, &bad)],
    );
    assert!(apply(&rec, 0, &mut page).is_err());
}

#[test]
fn update_across_pages_with_init() {
    let flags = XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED;
    let rec = record(
        RM_HEAP_ID,
        XLOG_HEAP_UPDATE | XLOG_HEAP_INIT_PAGE,
        &update_main(flags, 2, 1),
        vec![init_block(0, 9, &tuple_data(0x55)), block(1, BLK, &[])],
    );
    let mut new_page = Box::new([0u8; BLCKSZ]);
    apply(&rec, 0, &mut new_page).unwrap();
    assert_eq!(header(&new_page, 1), (XID, 0, 0, 9, 1, 2, 0x0802));
    let mut old_page = page_with(2);
    bufpage::set_all_visible(&mut old_page);
    apply(&rec, 1, &mut old_page).unwrap();
    let (_, xmax, _, blk, off, ..) = header(&old_page, 2);
    assert_eq!((xmax, blk, off), (777, 9, 1));
    assert_eq!(bufpage::flags(&old_page) & PD_ALL_VISIBLE, 0);
    assert_eq!(bufpage::lsn(&old_page), END_LSN);
}

#[test]
fn confirm_lock_inplace() {
    let mut page = page_with(2);
    let confirm = record(
        RM_HEAP_ID,
        XLOG_HEAP_CONFIRM,
        &le!(2u16),
        vec![block(0, BLK, &[])],
    );
    apply(&confirm, 0, &mut page).unwrap();
    assert_eq!(header(&page, 2).4, 2);

    // A lock-only xmax clears HOT_UPDATED and resets t_ctid.
    let t = item_range(&page, 1).unwrap();
    page[t.start + 18..t.start + 20].copy_from_slice(&(2u16 | HEAP_HOT_UPDATED).to_le_bytes());
    page[t.start + 16..t.start + 18].copy_from_slice(&9u16.to_le_bytes());
    let lock = record(
        RM_HEAP_ID,
        XLOG_HEAP_LOCK,
        &le!(888u32, 1u16, XLHL_XMAX_LOCK_ONLY | XLHL_XMAX_EXCL_LOCK, 0u8),
        vec![block(0, BLK, &[])],
    );
    apply(&lock, 0, &mut page).unwrap();
    let (_, xmax, cid, blk, off, im2, im) = header(&page, 1);
    assert_eq!((xmax, cid, blk, off, im2), (888, 0, BLK, 1, 2));
    assert_eq!(im, 0x0002 | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_EXCL_LOCK);

    let inplace = record(
        RM_HEAP_ID,
        XLOG_HEAP_INPLACE,
        &le!(2u16),
        vec![block(0, BLK, &[7; 8])],
    );
    apply(&inplace, 0, &mut page).unwrap();
    assert_eq!(&tuple_bytes(&page, 2)[24..], &[7; 8]);
    let wrong = record(
        RM_HEAP_ID,
        XLOG_HEAP_INPLACE,
        &le!(2u16),
        vec![block(0, BLK, &[1])],
    );
    assert!(apply(&wrong, 0, &mut page).is_err());
}

#[test]
fn image_is_restored_with_lsn() {
    use postgres_format::constants::{BKPBLOCK_HAS_IMAGE, BKPIMAGE_APPLY, BKPIMAGE_HAS_HOLE};
    use postgres_format::wal::BlockImage;
    let source = page_with(1);
    let (lower, upper) = (bufpage::lower(&source), bufpage::upper(&source));
    let mut stored = source[..lower].to_vec();
    stored.extend_from_slice(&source[upper..]);
    let mut rec = delete_record(1, 0, 0);
    rec.blocks[0].flags |= BKPBLOCK_HAS_IMAGE;
    rec.blocks[0].image = Some(BlockImage {
        data: stored.into(),
        hole_offset: lower as u16,
        hole_length: (upper - lower) as u16,
        info: BKPIMAGE_HAS_HOLE | BKPIMAGE_APPLY,
    });
    let mut page = Box::new([0xAAu8; BLCKSZ]);
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(&page[8..], &source[8..], "the image, not the delete");
    assert_eq!(bufpage::lsn(&page), END_LSN);
}

/// Random main and block data for every heap record type, applied to a
/// page with tuples: errors are fine, panics are not.
#[test]
fn garbage_records_never_panic() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = page_with(3);
    for round in 0..4000u32 {
        let info = ((round % 16) as u8) << 4;
        let main: Vec<u8> = (0..next() % 20).map(|_| (next() % 4) as u8).collect();
        let data: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
        let mut blocks = vec![block(0, BLK, &data)];
        if round % 3 == 0 {
            blocks.push(block(1, BLK + 1, &[]));
        }
        if info & XLOG_HEAP_INIT_PAGE != 0 {
            blocks[0].flags |= postgres_format::constants::BKPBLOCK_WILL_INIT;
        }
        let rec = record(RM_HEAP_ID, info, &main, blocks);
        for id in 0..2 {
            let mut page = base.clone();
            let _ = apply(&rec, id, &mut page);
        }
    }
}
