use super::*;
use crate::test_util::empty_page;

fn heap() -> AddItem {
    AddItem {
        overwrite: true,
        is_heap: true,
    }
}

/// An item of `len` bytes all equal to `fill`.
fn item(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

/// A page with items of 30, 40 and 8 bytes at offsets 1, 2, 3.
fn three_items() -> Box<Page> {
    let mut page = empty_page();
    for (i, (len, fill)) in [(30, 0xA1), (40, 0xB2), (8, 0xC3)].into_iter().enumerate() {
        let off = add_item(&mut page, &item(len, fill), i as u16 + 1, heap()).unwrap();
        assert_eq!(off, i as u16 + 1);
    }
    page
}

fn ids(page: &Page) -> Vec<ItemId> {
    (1..=max_offset(page))
        .map(|o| item_id(page, o).unwrap())
        .collect()
}

#[test]
fn init_layout() {
    let mut page = Box::new([0xFFu8; BLCKSZ]);
    init(&mut page, 4);
    assert_eq!(
        (lower(&page), upper(&page), special(&page)),
        (24, 8184, 8184)
    );
    assert_eq!(&page[18..20], &0x2004u16.to_le_bytes());
    assert_eq!(flags(&page), 0);
    assert!(page[20..].iter().all(|&b| b == 0));
    assert!(!is_new(&page));
    assert!(is_new(&[0u8; BLCKSZ]));
}

#[test]
fn item_id_bits() {
    let id = ItemId::normal(8160, 32);
    assert_eq!(id.encode(), 8160 | (1 << 15) | (32 << 17));
    assert_eq!(ItemId::decode(id.encode()), id);
    assert_eq!(ItemId::redirect(7).encode(), 7 | (2 << 15));
    assert_eq!(ItemId::DEAD.encode(), 3 << 15);
    assert!(!ItemId::DEAD.has_storage() && ItemId::DEAD.is_used());
}

#[test]
fn add_items_hand_computed() {
    let page = three_items();
    assert_eq!(lower(&page), 24 + 3 * 4);
    assert_eq!(upper(&page), 8192 - 32 - 40 - 8);
    assert_eq!(
        ids(&page),
        vec![
            ItemId::normal(8160, 30),
            ItemId::normal(8120, 40),
            ItemId::normal(8112, 8)
        ]
    );
    assert_eq!(&page[8160..8190], &item(30, 0xA1)[..]);
    // MAXALIGN padding keeps what the page had (zeroes).
    assert_eq!(&page[8190..8192], &[0, 0]);
    assert_eq!(free_space(&page), 8112 - 36 - 4);
    assert_eq!(heap_free_space(&page), free_space(&page));
}

#[test]
fn add_item_shuffles_or_refuses() {
    let mut page = three_items();
    // Without overwrite, an existing offset moves the line pointers up.
    let no_overwrite = AddItem::default();
    assert_eq!(
        add_item(&mut page, &item(5, 0xD4), 2, no_overwrite).unwrap(),
        2
    );
    let got = ids(&page);
    assert_eq!(got[1], ItemId::normal(8104, 5));
    assert_eq!(got[2], ItemId::normal(8120, 40));
    assert_eq!(got[3], ItemId::normal(8112, 8));
    // With overwrite, a used line pointer is refused; beyond the end too.
    assert!(add_item(&mut page, &item(5, 0), 1, heap()).is_err());
    assert!(add_item(&mut page, &item(5, 0), 9, heap()).is_err());
    assert!(add_item(&mut page, &item(9000, 0), 0, heap()).is_err());
    // Offset 0: first free line pointer, when the page says there is one.
    set_item_id(&mut page, 1, ItemId::UNUSED).unwrap();
    assert_eq!(add_item(&mut page, &item(5, 0), 0, heap()).unwrap(), 5);
    set_flags(&mut page, PD_HAS_FREE_LINES);
    assert_eq!(add_item(&mut page, &item(5, 0), 0, heap()).unwrap(), 1);
    assert_eq!(add_item(&mut page, &item(5, 0), 0, heap()).unwrap(), 6);
    assert_eq!(flags(&page) & PD_HAS_FREE_LINES, 0);
}

#[test]
fn repair_fragmentation_compacts_in_line_pointer_order() {
    let mut page = three_items();
    set_item_id(&mut page, 2, ItemId::UNUSED).unwrap();
    repair_fragmentation(&mut page).unwrap();
    assert_eq!(
        ids(&page),
        vec![
            ItemId::normal(8160, 30),
            ItemId::UNUSED,
            ItemId::normal(8152, 8)
        ]
    );
    assert_eq!(upper(&page), 8152);
    assert_eq!(&page[8152..8160], &item(8, 0xC3)[..]);
    assert_eq!(flags(&page) & PD_HAS_FREE_LINES, PD_HAS_FREE_LINES);

    // Unused line pointers at the end go; dead ones stay, without storage.
    set_item_id(&mut page, 3, ItemId::UNUSED).unwrap();
    set_item_id(&mut page, 1, ItemId::DEAD).unwrap();
    repair_fragmentation(&mut page).unwrap();
    assert_eq!(ids(&page), vec![ItemId::DEAD]);
    assert_eq!((lower(&page), upper(&page)), (28, 8192));
    assert_eq!(flags(&page) & PD_HAS_FREE_LINES, 0);
}

#[test]
fn repair_fragmentation_reorders_unsorted_items() {
    // Line pointer 1 points at the lowest item: not presorted.
    let mut page = empty_page();
    add_item(&mut page, &item(16, 1), 1, heap()).unwrap();
    add_item(&mut page, &item(16, 2), 2, heap()).unwrap();
    add_item(&mut page, &item(16, 3), 3, heap()).unwrap();
    let (a, c) = (item_id(&page, 1).unwrap(), item_id(&page, 3).unwrap());
    set_item_id(&mut page, 1, c).unwrap();
    set_item_id(&mut page, 3, a).unwrap();
    set_item_id(&mut page, 2, ItemId::redirect(3)).unwrap();
    repair_fragmentation(&mut page).unwrap();
    assert_eq!(
        ids(&page),
        vec![
            ItemId::normal(8176, 16),
            ItemId::redirect(3),
            ItemId::normal(8160, 16)
        ]
    );
    assert_eq!(&page[8176..8192], &item(16, 3)[..]);
    assert_eq!(&page[8160..8176], &item(16, 1)[..]);
    assert_eq!(upper(&page), 8160);
}

#[test]
fn truncate_line_pointers() {
    let mut page = three_items();
    set_item_id(&mut page, 3, ItemId::UNUSED).unwrap();
    set_item_id(&mut page, 2, ItemId::UNUSED).unwrap();
    truncate_line_pointer_array(&mut page).unwrap();
    assert_eq!(max_offset(&page), 1);
    assert_eq!(flags(&page) & PD_HAS_FREE_LINES, 0);
    // The first line pointer is kept even when unused; a hole sets the hint.
    let mut page = three_items();
    set_item_id(&mut page, 1, ItemId::UNUSED).unwrap();
    truncate_line_pointer_array(&mut page).unwrap();
    assert_eq!(max_offset(&page), 3);
    assert_eq!(flags(&page) & PD_HAS_FREE_LINES, PD_HAS_FREE_LINES);
}

#[test]
fn heap_free_space_with_full_line_pointer_array() {
    let mut page = empty_page();
    for off in 1..=MAX_HEAP_TUPLES_PER_PAGE as u16 {
        add_item(&mut page, &[], off, heap()).unwrap();
    }
    assert!(add_item(&mut page, &[], 292, heap()).is_err());
    assert!(free_space(&page) > 0);
    assert_eq!(heap_free_space(&page), 0);
    set_item_id(&mut page, 5, ItemId::UNUSED).unwrap();
    set_flags(&mut page, PD_HAS_FREE_LINES);
    assert_eq!(heap_free_space(&page), free_space(&page));
}

#[test]
fn prunable_keeps_oldest_xid() {
    let mut page = empty_page();
    set_prunable(&mut page, 100);
    set_prunable(&mut page, 200);
    assert_eq!(prune_xid(&page), 100);
    set_prunable(&mut page, 50);
    assert_eq!(prune_xid(&page), 50);
    // Wraparound: 0xFFFF_FF00 precedes 50.
    set_prunable(&mut page, 0xFFFF_FF00);
    assert_eq!(prune_xid(&page), 0xFFFF_FF00);
}

#[test]
fn lsn_halves() {
    let mut page = empty_page();
    set_lsn(&mut page, Lsn(0x0000_0001_0000_2000));
    assert_eq!(&page[0..8], &[1, 0, 0, 0, 0, 0x20, 0, 0]);
    assert_eq!(lsn(&page), Lsn(0x1_0000_2000));
}

/// Pages of random bytes: every primitive fails cleanly or succeeds.
#[test]
fn garbage_pages_never_panic() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..2000 {
        let mut page = three_items();
        // Scramble a few header fields and line pointers.
        for _ in 0..(round % 6 + 1) {
            let pos = (next() % 48) as usize;
            page[pos] = next() as u8;
        }
        let mut p = page.clone();
        let _ = repair_fragmentation(&mut p);
        let mut p = page.clone();
        let _ = truncate_line_pointer_array(&mut p);
        let mut p = page.clone();
        let _ = add_item(&mut p, &[7; 40], (next() % 8) as u16, heap());
        let _ = heap_free_space(&page);
        for off in 0..8 {
            let _ = item_range(&page, off);
        }
    }
}

/// Items of 16, 24 and 8 bytes, as an index page would hold them.
fn index_items() -> Box<Page> {
    let mut page = empty_page();
    for (len, fill) in [(16, 1u8), (24, 2), (8, 3)] {
        let off = max_offset(&page) + 1;
        add_item(&mut page, &item(len, fill), off, AddItem::default()).unwrap();
    }
    page
}

#[test]
fn index_tuple_delete_closes_gaps() {
    let mut page = index_items();
    index_tuple_delete(&mut page, 2).unwrap();
    assert_eq!(
        ids(&page),
        vec![ItemId::normal(8176, 16), ItemId::normal(8168, 8)]
    );
    assert_eq!((lower(&page), upper(&page)), (32, 8168));
    assert_eq!(&page[8168..8176], &item(8, 3)[..]);
    assert!(index_tuple_delete(&mut page, 3).is_err());
}

#[test]
fn index_multi_delete_compacts() {
    let mut page = index_items();
    let off = max_offset(&page) + 1;
    add_item(&mut page, &item(8, 4), off, AddItem::default()).unwrap();
    index_multi_delete(&mut page, &[1, 2, 4]).unwrap();
    assert_eq!(ids(&page), vec![ItemId::normal(8184, 8)]);
    assert_eq!((lower(&page), upper(&page)), (28, 8184));
    assert_eq!(&page[8184..8192], &item(8, 3)[..]);
    assert!(index_multi_delete(&mut index_items(), &[1, 2, 9]).is_err());
    // Two or fewer: one by one.
    let mut page = index_items();
    index_multi_delete(&mut page, &[1, 3]).unwrap();
    assert_eq!(ids(&page), vec![ItemId::normal(8168, 24)]);
}

#[test]
fn index_tuple_overwrite_moves_lower_items() {
    let mut page = index_items();
    // Grow item 1 from 16 to 32 bytes: items 2 and 3 move down by 16.
    index_tuple_overwrite(&mut page, 1, &item(32, 9)).unwrap();
    assert_eq!(
        ids(&page),
        vec![
            ItemId::normal(8160, 32),
            ItemId::normal(8136, 24),
            ItemId::normal(8128, 8)
        ]
    );
    assert_eq!(upper(&page), 8128);
    assert_eq!(&page[8136..8160], &item(24, 2)[..]);
    // Shrink item 2 to 8 bytes.
    index_tuple_overwrite(&mut page, 2, &item(8, 7)).unwrap();
    assert_eq!(ids(&page)[1], ItemId::normal(8152, 8));
    assert_eq!(ids(&page)[2], ItemId::normal(8144, 8));
    assert_eq!(upper(&page), 8144);
    assert!(index_tuple_overwrite(&mut page, 2, &item(9000, 0)).is_err());
}
