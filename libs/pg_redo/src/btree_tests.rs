use postgres_format::constants::RM_BTREE_ID;
use postgres_format::wal::DecodedRecord;

use super::*;
use crate::btree_tuple::{swap_posting, update_posting};
use crate::bufpage::{item_id, ItemId};
use crate::le;
use crate::test_util::*;
use crate::{can_redo, redo_block};

fn apply(rec: &DecodedRecord, id: u8, page: &mut Page) -> Result<(), RedoError> {
    redo_block(rec, END_LSN, id, page)
}

/// A 16-byte index tuple pointing at heap TID (block, off), key `key`.
fn tup(block: u32, off: u16, key: u8) -> Vec<u8> {
    let mut t = le!((block >> 16) as u16, block as u16, off, 16u16);
    t.extend_from_slice(&[key; 8]);
    t
}

/// A posting tuple of key `key` with heap TIDs (1, 1..=n).
fn posting(key: u8, n: u16) -> Vec<u8> {
    let size = maxalign(16 + 6 * n as usize) as u16;
    let mut t = le!(0u16, 16u16, n | 0x2000, size | 0x2000);
    t.extend_from_slice(&[key; 8]);
    for i in 1..=n {
        t.extend_from_slice(&le!(0u16, 1u16, i));
    }
    t.resize(size as usize, 0);
    t
}

/// The region of `items` as `_bt_split` logs it: lowest address first,
/// i.e. the last line pointer's item first.
fn region(items: &[Vec<u8>]) -> Vec<u8> {
    items.iter().rev().flatten().copied().collect()
}

fn newroot_leaf(items: &[Vec<u8>]) -> Box<Page> {
    // A level-0 root has no items logged; build it, then insert leaves.
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_NEWROOT,
        &le!(3u32, 0u32),
        vec![init_block(0, 3, &[])],
    );
    let mut page = Box::new([0u8; BLCKSZ]);
    apply(&rec, 0, &mut page).unwrap();
    for (i, t) in items.iter().enumerate() {
        let rec = record(
            RM_BTREE_ID,
            XLOG_BTREE_INSERT_LEAF,
            &le!(i as u16 + 1),
            vec![block(0, 3, t)],
        );
        apply(&rec, 0, &mut page).unwrap();
    }
    page
}

#[test]
fn newroot_and_insert_leaf() {
    let page = newroot_leaf(&[tup(1, 1, 0xA), tup(1, 2, 0xB)]);
    let o = Opaque::read(&page).unwrap();
    assert_eq!(
        (o.flags, o.level, o.prev, o.next),
        (BTP_ROOT | BTP_LEAF, 0, 0, 0)
    );
    assert_eq!(bufpage::special(&page), BLCKSZ - 16);
    assert_eq!(item_id(&page, 2).unwrap(), ItemId::normal(8176 - 32, 16));
    assert_eq!(bufpage::lsn(&page), END_LSN);

    // A level-1 root restores its items in line pointer order.
    let items = [tup(4, 0, 0), tup(5, 0, 9)];
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_NEWROOT,
        &le!(6u32, 1u32),
        vec![
            init_block(0, 6, &region(&items)),
            block(1, 4, &[]),
            init_block(
                2,
                0,
                &le!(4u32, 6u32, 1u32, 6u32, 1u32, 0u32, 1u8, 0u8, 0u16),
            ),
        ],
    );
    let mut root = Box::new([0u8; BLCKSZ]);
    apply(&rec, 0, &mut root).unwrap();
    assert_eq!(&root[bufpage::item_range(&root, 1).unwrap()], &items[0][..]);
    assert_eq!(&root[bufpage::item_range(&root, 2).unwrap()], &items[1][..]);
    // The metapage.
    let mut meta = Box::new([0u8; BLCKSZ]);
    apply(&rec, 2, &mut meta).unwrap();
    assert_eq!(bufpage::lower(&meta), 72);
    assert_eq!(&meta[24..36], &le!(BTREE_MAGIC, 4u32, 6u32)[..]);
    assert_eq!(&meta[56..64], &(-1.0f64).to_le_bytes());
    assert_eq!(meta[64], 1);
    assert_eq!(Opaque::read(&meta).unwrap().flags, BTP_META);
    // The child loses its incomplete-split flag.
    let mut child = newroot_leaf(&[]);
    update_opaque(&mut child, |o| o.flags |= BTP_INCOMPLETE_SPLIT).unwrap();
    apply(&rec, 1, &mut child).unwrap();
    assert_eq!(
        Opaque::read(&child).unwrap().flags & BTP_INCOMPLETE_SPLIT,
        0
    );
}

#[test]
fn split_right_rebuilds_both_halves() {
    // Leaf 3 (not rightmost: next = 8) with high key and 3 items.
    let mut page = newroot_leaf(&[]);
    update_opaque(&mut page, |o| {
        o.flags = BTP_LEAF;
        o.next = 8;
    })
    .unwrap();
    for (i, t) in [tup(0, 0, 0xF), tup(1, 1, 1), tup(1, 2, 2), tup(1, 3, 3)]
        .iter()
        .enumerate()
    {
        add(&mut page, t, i as u16 + 1).unwrap();
    }
    // Split: items 2..3 stay left (firstrightoff 4), new item goes right.
    let right_items = [tup(0, 0, 0xF), tup(1, 3, 3), tup(1, 4, 4)];
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_SPLIT_R,
        &le!(0u32, 4u16, 5u16, 0u16),
        vec![
            block(0, 3, &tup(0, 0, 0xE)),
            init_block(1, 9, &region(&right_items)),
            block(2, 8, &[]),
        ],
    );
    let mut left = page.clone();
    apply(&rec, 0, &mut left).unwrap();
    assert_eq!(bufpage::max_offset(&left), 3);
    assert_eq!(
        &left[bufpage::item_range(&left, 1).unwrap()],
        &tup(0, 0, 0xE)[..]
    );
    assert_eq!(
        &left[bufpage::item_range(&left, 3).unwrap()],
        &tup(1, 2, 2)[..]
    );
    let o = Opaque::read(&left).unwrap();
    assert_eq!((o.flags, o.next), (BTP_LEAF | BTP_INCOMPLETE_SPLIT, 9));
    assert_eq!(bufpage::prune_xid(&left), 0);

    let mut right = Box::new([0u8; BLCKSZ]);
    apply(&rec, 1, &mut right).unwrap();
    let o = Opaque::read(&right).unwrap();
    assert_eq!((o.prev, o.next, o.flags), (3, 8, BTP_LEAF));
    assert_eq!(bufpage::max_offset(&right), 3);
    assert_eq!(
        &right[bufpage::item_range(&right, 3).unwrap()],
        &tup(1, 4, 4)[..]
    );

    let mut sibling = newroot_leaf(&[]);
    apply(&rec, 2, &mut sibling).unwrap();
    assert_eq!(Opaque::read(&sibling).unwrap().prev, 9);
}

#[test]
fn posting_swap_and_update() {
    let orig = posting(7, 3);
    let mut newitem = tup(1, 2, 7);
    // Heap TIDs (1,1) (1,2) (1,3); the new item's TID (1,2) goes at 1.
    let swapped = swap_posting(&mut newitem, &orig, 1).unwrap();
    assert_eq!(
        &swapped[16..34],
        &[
            le!(0u16, 1u16, 1u16),
            le!(0u16, 1u16, 2u16),
            le!(0u16, 1u16, 2u16)
        ]
        .concat()[..]
    );
    assert_eq!(&newitem[..6], &le!(0u16, 1u16, 3u16)[..]);
    assert!(swap_posting(&mut newitem, &orig, 3).is_err());

    // Deleting two of three TIDs leaves a plain tuple.
    let one = update_posting(&orig, &[0, 2]).unwrap();
    assert_eq!(one, tup(1, 2, 7));
    let two = update_posting(&orig, &[1]).unwrap();
    assert_eq!(two.len(), 32);
    assert_eq!(
        &two[..8],
        &le!(0u16, 16u16, 2u16 | 0x2000, 32u16 | 0x2000)[..]
    );
}

#[test]
fn vacuum_updates_and_deletes() {
    let mut page = newroot_leaf(&[tup(1, 1, 1), posting(2, 3), tup(1, 9, 3), tup(2, 1, 4)]);
    let mut data = le!(1u16, 3u16, 4u16, 2u16);
    data.extend_from_slice(&le!(1u16, 0u16));
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_VACUUM,
        &le!(3u16, 1u16),
        vec![block(0, 3, &data)],
    );
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(bufpage::max_offset(&page), 1);
    let t = &page[bufpage::item_range(&page, 1).unwrap()];
    assert_eq!(t.len(), 32);
    assert_eq!(
        &t[16..28],
        &[le!(0u16, 1u16, 2u16), le!(0u16, 1u16, 3u16)].concat()[..]
    );
}

#[test]
fn dedup_merges_intervals() {
    let mut page = newroot_leaf(&[tup(1, 1, 5), tup(1, 2, 5), tup(1, 3, 5), tup(1, 4, 6)]);
    update_opaque(&mut page, |o| o.flags |= BTP_HAS_GARBAGE).unwrap();
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_DEDUP,
        &le!(1u16),
        vec![block(0, 3, &le!(1u16, 3u16))],
    );
    apply(&rec, 0, &mut page).unwrap();
    assert_eq!(bufpage::max_offset(&page), 2);
    let t = &page[bufpage::item_range(&page, 1).unwrap()];
    assert_eq!(t.len(), 40);
    assert_eq!(
        &t[..8],
        &le!(0u16, 16u16, 3u16 | 0x2000, 40u16 | 0x2000)[..]
    );
    assert_eq!(
        &page[bufpage::item_range(&page, 2).unwrap()],
        &tup(1, 4, 6)[..]
    );
    assert_eq!(Opaque::read(&page).unwrap().flags & BTP_HAS_GARBAGE, 0);
    // Intervals that do not match the page are an error.
    let mut page = newroot_leaf(&[tup(1, 1, 5), tup(1, 2, 5)]);
    let bad = record(
        RM_BTREE_ID,
        XLOG_BTREE_DEDUP,
        &le!(1u16),
        vec![block(0, 3, &le!(2u16, 2u16))],
    );
    assert!(apply(&bad, 0, &mut page).is_err());
}

#[test]
fn page_deletion() {
    // Parent 6: items pointing at 3 (offset 1) and 8 (offset 2).
    let mut parent = newroot_leaf(&[tup(3, 0, 1), tup(8, 0, 2)]);
    let main = le!(1u16, 0u16, 3u32, 2u32, 8u32, 6u32);
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_MARK_PAGE_HALFDEAD,
        &main,
        vec![init_block(0, 3, &[]), block(1, 6, &[])],
    );
    apply(&rec, 1, &mut parent).unwrap();
    assert_eq!(bufpage::max_offset(&parent), 1);
    assert_eq!(
        &parent[bufpage::item_range(&parent, 1).unwrap()][..6],
        &le!(0u16, 8u16, 0u16)[..]
    );
    let mut leaf = Box::new([0u8; BLCKSZ]);
    apply(&rec, 0, &mut leaf).unwrap();
    let o = Opaque::read(&leaf).unwrap();
    assert_eq!((o.prev, o.next, o.flags), (2, 8, BTP_HALF_DEAD | BTP_LEAF));
    assert_eq!(
        &leaf[bufpage::item_range(&leaf, 1).unwrap()],
        &le!(0u16, 6u16, 0u16, 8u16 | 0x2000)[..]
    );

    let main = le!(2u32, 8u32, 0u32, 0u32, 1234u64, 0u32, 0u32, 0u32);
    let rec = record(
        RM_BTREE_ID,
        XLOG_BTREE_UNLINK_PAGE,
        &main,
        vec![init_block(0, 3, &[]), block(1, 2, &[]), block(2, 8, &[])],
    );
    let mut target = leaf.clone();
    apply(&rec, 0, &mut target).unwrap();
    let o = Opaque::read(&target).unwrap();
    assert_eq!(o.flags, BTP_DELETED | BTP_HAS_FULLXID | BTP_LEAF);
    assert_eq!(
        (bufpage::lower(&target), bufpage::upper(&target)),
        (32, 8176)
    );
    assert_eq!(&target[24..32], &1234u64.to_le_bytes());
    let mut left = newroot_leaf(&[]);
    apply(&rec, 1, &mut left).unwrap();
    assert_eq!(Opaque::read(&left).unwrap().next, 8);
    let mut right = newroot_leaf(&[]);
    apply(&rec, 2, &mut right).unwrap();
    assert_eq!(Opaque::read(&right).unwrap().prev, 2);
}

#[test]
fn btree_can_redo() {
    for info in (0..15).map(|i| i << 4) {
        assert!(can_redo(RM_BTREE_ID, info), "{info:#x}");
    }
    assert!(!can_redo(RM_BTREE_ID, 0xF0));
}

#[test]
fn garbage_records_never_panic() {
    let mut seed = 0x5851_F42D_4C95_7F2Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = newroot_leaf(&[tup(1, 1, 5), posting(5, 4), tup(1, 3, 5), tup(1, 4, 6)]);
    for round in 0..6000u32 {
        let info = ((round % 15) as u8) << 4;
        let main: Vec<u8> = (0..next() % 24).map(|_| (next() % 5) as u8).collect();
        let data: Vec<u8> = (0..next() % 64).map(|_| (next() % 20) as u8).collect();
        let mut blocks: Vec<_> = (0..5).map(|id| block(id, id as u32, &data)).collect();
        for b in &mut blocks {
            if next() % 2 == 0 {
                b.flags |= postgres_format::constants::BKPBLOCK_WILL_INIT;
            }
        }
        let rec = record(RM_BTREE_ID, info, &main, blocks);
        for id in 0..5 {
            let mut page = base.clone();
            let _ = apply(&rec, id, &mut page);
        }
    }
}
