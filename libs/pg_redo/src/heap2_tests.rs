use postgres_format::constants::{RM_HEAP2_ID, RM_HEAP_ID, RM_SEQ_ID, RM_XLOG_ID};
use postgres_format::relfile::ForkNumber;
use postgres_format::wal::DecodedRecord;

use super::*;
use crate::bufpage::{item_id, item_range, PD_ALL_VISIBLE, PD_HAS_FREE_LINES};
use crate::le;
use crate::test_util::*;
use crate::{can_redo, redo_block};

const BLK: u32 = 7;

fn apply(rec: &DecodedRecord, id: u8, page: &mut Page) -> Result<(), RedoError> {
    redo_block(rec, END_LSN, id, page)
}

/// Block data of a multi-insert: per tuple (SHORTALIGNed) datalen,
/// infomask2, infomask, t_hoff, then `len` bytes of `fill`.
fn multi_data(tuples: &[(usize, u8)]) -> Vec<u8> {
    let mut d = Vec::new();
    for &(len, fill) in tuples {
        if d.len() % 2 == 1 {
            d.push(0);
        }
        d.extend_from_slice(&le!(len as u16, 1u16, 0x0800u16, 24u8));
        d.extend(std::iter::repeat_n(fill, len));
    }
    d
}

/// A page with `n` tuples of 1+8 bytes of data, laid out by a multi-insert
/// that initialises the page.
fn page_with(n: usize) -> Box<Page> {
    let tuples: Vec<(usize, u8)> = (0..n).map(|i| (9, i as u8 + 1)).collect();
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_MULTI_INSERT | XLOG_HEAP_INIT_PAGE,
        &le!(0u8, 0u8, n as u16),
        vec![init_block(0, BLK, &multi_data(&tuples))],
    );
    let mut page = Box::new([0u8; crate::BLCKSZ]);
    apply(&rec, 0, &mut page).unwrap();
    page
}

#[test]
fn multi_insert_init_and_offsets() {
    let page = page_with(3);
    assert_eq!(bufpage::max_offset(&page), 3);
    for off in 1..=3u16 {
        let r = item_range(&page, off).unwrap();
        assert_eq!(r.len(), 32);
        assert_eq!(r.start, 8192 - 32 * off as usize);
        let t = &page[r];
        assert_eq!(u32::from_le_bytes(t[0..4].try_into().unwrap()), XID);
        assert_eq!(u16::from_le_bytes([t[16], t[17]]), off);
        assert_eq!(t[23..], [off as u8; 9]);
    }
    // Without INIT_PAGE the offsets are in the main data; odd-length tuples
    // make the next header SHORTALIGNed.
    let mut page = page_with(1);
    bufpage::set_all_visible(&mut page);
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_MULTI_INSERT,
        &le!(XLH_INSERT_ALL_VISIBLE_CLEARED, 0u8, 2u16, 2u16, 3u16),
        vec![block(0, BLK, &multi_data(&[(4, 0xA), (3, 0xB)]))],
    );
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(item_range(&page, 2).unwrap().len(), 27);
    assert_eq!(item_range(&page, 3).unwrap().len(), 26);
    assert_eq!(bufpage::flags(&page) & PD_ALL_VISIBLE, 0);
    // Trailing bytes are an error.
    let mut data = multi_data(&[(3, 0xA)]);
    data.push(0);
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_MULTI_INSERT,
        &le!(0u8, 0u8, 1u16, 4u16),
        vec![block(0, BLK, &data)],
    );
    assert!(apply(&rec, 0, &mut page).is_err());
}

#[test]
fn prune_redirects_kills_and_compacts() {
    let mut page = page_with(4);
    // 1 -> 3 redirected, 2 dead, 4 unused.
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_PRUNE,
        &le!(0u32, 1u16, 1u16),
        vec![block(0, BLK, &le!(1u16, 3u16, 2u16, 4u16))],
    );
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(item_id(&page, 1).unwrap(), ItemId::redirect(3));
    assert_eq!(item_id(&page, 2).unwrap(), ItemId::DEAD);
    assert_eq!(item_id(&page, 3).unwrap(), ItemId::normal(8160, 32));
    assert_eq!(bufpage::max_offset(&page), 3);
    assert_eq!(bufpage::upper(&page), 8160);
    assert_eq!(page[8160 + 23], 3);
    assert_eq!(bufpage::lsn(&page), END_LSN);
    // Offsets beyond the line pointers are an error.
    let bad = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_PRUNE,
        &le!(0u32, 0u16, 1u16),
        vec![block(0, BLK, &le!(9u16))],
    );
    assert!(apply(&bad, 0, &mut page).is_err());
}

#[test]
fn vacuum_frees_dead_line_pointers() {
    let mut page = page_with(3);
    for off in [1, 3] {
        bufpage::set_item_id(&mut page, off, ItemId::DEAD).unwrap();
    }
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_VACUUM,
        &le!(2u16),
        vec![block(0, BLK, &le!(1u16, 3u16))],
    );
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(bufpage::max_offset(&page), 2);
    assert_eq!(item_id(&page, 1).unwrap(), ItemId::UNUSED);
    assert_eq!(bufpage::flags(&page) & PD_HAS_FREE_LINES, PD_HAS_FREE_LINES);
}

#[test]
fn freeze_sets_xmax_xvac_infomasks() {
    let mut page = page_with(2);
    let plan = le!(0u32, 2u16, 0x0001u16, 0x0B00u16, XLH_FREEZE_XVAC, 0u8);
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_FREEZE_PAGE,
        &le!(100u32, 1u16),
        vec![block(0, BLK, &plan)],
    );
    apply(&rec, 0, &mut page).unwrap();
    let t = &page[item_range(&page, 2).unwrap()];
    assert_eq!(u32::from_le_bytes(t[8..12].try_into().unwrap()), 2);
    assert_eq!(&t[18..22], &le!(0x0001u16, 0x0B00u16)[..]);
}

fn visible_record(heap_block: u32, flags: u8) -> DecodedRecord {
    let mut vm = block(0, heap_block / VM_HEAPBLOCKS_PER_PAGE, &[]);
    vm.fork = ForkNumber::VisibilityMap;
    record(
        RM_HEAP2_ID,
        XLOG_HEAP2_VISIBLE,
        &le!(100u32, flags),
        vec![vm, block(1, heap_block, &[])],
    )
}

#[test]
fn visible_sets_heap_flag_and_vm_bits() {
    let mut heap_page = page_with(1);
    apply(&visible_record(BLK, 3), 1, &mut heap_page).unwrap();
    assert_eq!(bufpage::flags(&heap_page) & PD_ALL_VISIBLE, PD_ALL_VISIBLE);

    // Heap block 7: byte 24 + 1, bits 6..7.
    let mut vm = Box::new([0u8; crate::BLCKSZ]);
    apply(&visible_record(BLK, 1), 0, &mut vm).unwrap();
    assert_eq!((bufpage::lower(&vm), bufpage::upper(&vm)), (24, 8192));
    assert_eq!(vm[25], 0x40);
    assert_eq!(bufpage::lsn(&vm), END_LSN);
    apply(&visible_record(BLK, 3), 0, &mut vm).unwrap();
    assert_eq!(vm[25], 0xC0);
    // Bits already set: the LSN stays.
    bufpage::set_lsn(&mut vm, utils::Lsn(5));
    apply(&visible_record(BLK, 3), 0, &mut vm).unwrap();
    assert_eq!(bufpage::lsn(&vm), utils::Lsn(5));
    // A heap block on the second VM page.
    let mut vm2 = Box::new([0u8; crate::BLCKSZ]);
    apply(&visible_record(VM_HEAPBLOCKS_PER_PAGE + 5, 2), 0, &mut vm2).unwrap();
    assert_eq!(vm2[25], 0x08);
}

#[test]
fn lock_updated_sets_xmax() {
    let mut page = page_with(1);
    let rec = record(
        RM_HEAP2_ID,
        XLOG_HEAP2_LOCK_UPDATED,
        &le!(4242u32, 1u16, 0x01u8, 0u8),
        vec![block(0, BLK, &[])],
    );
    apply(&rec, 0, &mut page).unwrap();
    let t = &page[item_range(&page, 1).unwrap()];
    assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 4242);
    assert_eq!(
        u16::from_le_bytes([t[20], t[21]]),
        crate::heap::HEAP_XMAX_IS_MULTI
    );
}

#[test]
fn sequence_page_is_rebuilt() {
    let mut main = le!(1663u32, 5u32, 16390u32);
    main.extend_from_slice(&[0x5A; 41]);
    let rec = record(RM_SEQ_ID, 0, &main, vec![init_block(0, 0, &[])]);
    let mut page = Box::new([0u8; crate::BLCKSZ]);
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(bufpage::special(&page), 8184);
    assert_eq!(&page[8184..8188], &0x1717u32.to_le_bytes());
    assert_eq!(item_id(&page, 1).unwrap(), ItemId::normal(8136, 41));
    assert_eq!(page[8136..8177], [0x5A; 41]);
    assert_eq!(bufpage::lsn(&page), END_LSN);
}

#[test]
fn can_redo_matrix() {
    for info in (0..16).map(|i| i << 4) {
        assert!(can_redo(RM_HEAP_ID, info));
        assert!(can_redo(RM_HEAP2_ID, info));
    }
    assert!(can_redo(RM_SEQ_ID, 0));
    assert!(!can_redo(RM_SEQ_ID, 0x10));
    assert!(can_redo(RM_XLOG_ID, 0xA0) && can_redo(RM_XLOG_ID, 0xB0));
    assert!(!can_redo(RM_XLOG_ID, 0x10));
    assert!(!can_redo(12, 0)); // hash
}

#[test]
fn fpi_for_hint_without_image_does_nothing() {
    let rec = record(RM_XLOG_ID, 0xA0, &[], vec![block(0, BLK, &[])]);
    let mut page = page_with(1);
    let before = page.clone();
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(page, before);
    let rec = record(RM_XLOG_ID, 0xB0, &[], vec![block(0, BLK, &[])]);
    assert!(apply(&rec, 0, &mut page).is_err());
}

#[test]
fn garbage_records_never_panic() {
    let mut seed = 0xD1B5_4A32_D192_ED03u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = page_with(4);
    for round in 0..4000u32 {
        let info = ((round % 16) as u8) << 4;
        let main: Vec<u8> = (0..next() % 16).map(|_| (next() % 5) as u8).collect();
        let data: Vec<u8> = (0..next() % 40).map(|_| (next() % 6) as u8).collect();
        let mut blocks = vec![block(0, BLK, &data), block(1, BLK, &data)];
        if info & XLOG_HEAP_INIT_PAGE != 0 {
            blocks[0].flags |= postgres_format::constants::BKPBLOCK_WILL_INIT;
        }
        let rec = record(RM_HEAP2_ID, info, &main, blocks);
        for id in 0..2 {
            let mut page = base.clone();
            let _ = apply(&rec, id, &mut page);
        }
    }
}
