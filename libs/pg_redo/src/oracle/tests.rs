//! Tests of the oracle's bookkeeping and output.

use super::*;

#[test]
fn names() {
    assert_eq!(record_type_name(10, 0x80).unwrap(), "Heap/INSERT+INIT");
    assert_eq!(record_type_name(10, 0x40).unwrap(), "Heap/HOT_UPDATE");
    assert_eq!(record_type_name(10, 0x70).unwrap(), "Heap/INPLACE");
    assert_eq!(
        record_type_name(9, 0xD0).unwrap(),
        "Heap2/MULTI_INSERT+INIT"
    );
    assert_eq!(record_type_name(9, 0x60).unwrap(), "Heap2/LOCK_UPDATED");
    assert_eq!(record_type_name(11, 0x30).unwrap(), "Btree/SPLIT_L");
    assert_eq!(record_type_name(11, 0xE0).unwrap(), "Btree/META_CLEANUP");
    assert_eq!(record_type_name(15, 0x00).unwrap(), "Sequence/LOG");
    assert_eq!(record_type_name(0, 0xB0).unwrap(), "XLOG/FPI");
    assert_eq!(record_type_name(0, 0x10), None);
    assert_eq!(record_type_name(1, 0x00), None);
}

#[test]
fn first_difference() {
    let a = Box::new([0u8; BLCKSZ]);
    let mut b = a.clone();
    assert_eq!(compare(&a, &b), None);
    b[100] = 1;
    match compare(&a, &b) {
        Some(Difference::Bytes {
            offset,
            window_start,
            actual,
            ..
        }) => {
            assert_eq!(offset, 100);
            assert_eq!(window_start, 88);
            assert_eq!(actual[12], 1);
        }
        other => panic!("{other:?}"),
    }
}

use bytes::Bytes;
use postgres_format::constants::BKPIMAGE_APPLY;
use postgres_format::wal::{BlockReference, RecordHeader};

const NODE: RelFileNode = RelFileNode {
    spc_oid: 1663,
    db_oid: 5,
    rel_node: 16400,
};

fn record(rmid: u8, info: u8, blocks: Vec<BlockReference>, main_data: Vec<u8>) -> DecodedRecord {
    DecodedRecord {
        lsn: Lsn(0x100_0000),
        header: RecordHeader {
            total_length: 0,
            xid: 0,
            prev: Lsn(0),
            info,
            rmid,
            crc: 0,
        },
        blocks,
        main_data: Bytes::from(main_data),
        origin: None,
        toplevel_xid: None,
    }
}

/// An empty standard page with a distinctive byte.
fn standard_page(mark: u8) -> Vec<u8> {
    let mut page = vec![0u8; BLCKSZ];
    page[12..14].copy_from_slice(&24u16.to_le_bytes());
    page[14..16].copy_from_slice(&8192u16.to_le_bytes());
    page[16..18].copy_from_slice(&8192u16.to_le_bytes());
    page[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes());
    page[8000] = mark;
    page
}

fn block(blkno: u32, image: Option<(Vec<u8>, bool)>) -> BlockReference {
    BlockReference {
        id: 0,
        rel: NODE,
        fork: ForkNumber::Main,
        block: blkno,
        flags: if image.is_some() { 0x10 } else { 0 },
        image: image.map(|(page, apply)| BlockImage {
            data: Bytes::from(page),
            hole_offset: 0,
            hole_length: 0,
            info: if apply { BKPIMAGE_APPLY } else { 0 },
        }),
        data: None,
    }
}

fn known(oracle: &Oracle, blkno: u32) -> Option<&Page> {
    let tag = RelTag {
        node: NODE,
        fork: ForkNumber::Main,
    };
    oracle.known.get(&(tag, blkno)).map(|p| &**p)
}

#[test]
fn images_become_known_pages_with_the_record_end_lsn() {
    let mut oracle = Oracle::new();
    let fpi = record(
        RM_XLOG_ID,
        XLOG_FPI,
        vec![block(3, Some((standard_page(7), true)))],
        vec![],
    );
    oracle.process(&fpi, Lsn(0x1_0000_0040));
    let page = known(&oracle, 3).expect("the image is the known page");
    assert_eq!(page[8000], 7);
    assert_eq!(&page[0..8], &[1, 0, 0, 0, 0x40, 0, 0, 0]);
    let stats = &oracle.stats().by_type["XLOG/FPI"];
    assert_eq!(stats.records, 1);
    if can_redo(RM_XLOG_ID, XLOG_FPI) {
        assert_eq!((stats.redone, stats.matched, stats.mismatched), (1, 1, 0));
    }

    // A block reference without an image makes the page unknown.
    let other = record(RM_BTREE_ID, 0x00, vec![block(3, None)], vec![]);
    oracle.process(&other, Lsn(0x1_0000_0080));
    assert!(known(&oracle, 3).is_none());
    assert_eq!(oracle.stats().by_type["Btree/INSERT_LEAF"].records, 1);
}

#[test]
fn truncation_and_creation_forget_pages() {
    let mut oracle = Oracle::new();
    let blocks = (0..4)
        .map(|b| BlockReference {
            id: b as u8,
            ..block(b, Some((standard_page(b as u8), true)))
        })
        .collect();
    oracle.process(
        &record(RM_XLOG_ID, XLOG_FPI, blocks, vec![]),
        Lsn(0x200_0000),
    );
    assert!((0..4).all(|b| known(&oracle, b).is_some()));

    let mut truncate = 2u32.to_le_bytes().to_vec();
    for v in [NODE.spc_oid, NODE.db_oid, NODE.rel_node, SMGR_TRUNCATE_HEAP] {
        truncate.extend_from_slice(&v.to_le_bytes());
    }
    oracle.process(
        &record(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, vec![], truncate),
        Lsn(0x200_0100),
    );
    assert!(known(&oracle, 1).is_some());
    assert!(known(&oracle, 2).is_none() && known(&oracle, 3).is_none());

    let mut create = Vec::new();
    for v in [NODE.spc_oid, NODE.db_oid, NODE.rel_node, 0] {
        create.extend_from_slice(&v.to_le_bytes());
    }
    oracle.process(
        &record(RM_SMGR_ID, XLOG_SMGR_CREATE, vec![], create),
        Lsn(0x200_0200),
    );
    assert!(known(&oracle, 0).is_none() && known(&oracle, 1).is_none());
}

#[test]
fn a_block_with_no_previous_version_is_not_checked() {
    let mut oracle = Oracle::new();
    let image = Some((standard_page(1), false));
    oracle.process(
        &record(RM_HEAP_ID, 0x00, vec![block(9, image)], vec![]),
        Lsn(0x300_0000),
    );
    let stats = &oracle.stats().by_type["Heap/INSERT"];
    assert_eq!(stats.blocks_compared, 0);
    assert_eq!(stats.redone + stats.mismatched, 0);
    // The image (not marked for apply) still becomes the known page.
    assert_eq!(known(&oracle, 9).map(|p| p[8000]), Some(1));
}

#[test]
fn the_report_has_counts_per_type_and_in_total() {
    let mut oracle = Oracle::new();
    let image = Some((standard_page(1), false));
    oracle.process(
        &record(RM_HEAP_ID, 0x00, vec![block(9, image)], vec![]),
        Lsn(0x300_0000),
    );
    let report = oracle.stats().report();
    assert_eq!(report["types"]["Heap/INSERT"]["records"], 1);
    assert_eq!(report["total"]["records"], 1);
    assert_eq!(report["mismatches"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["records"], 1);
}
