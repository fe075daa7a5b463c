//! The value codec and the Rust records.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn clog_get(page: &[u8; BLCKSZ], xid: u32) -> u8 {
    let idx = (xid % CLOG_XACTS_PER_PAGE) as usize;
    (page[idx / 4] >> ((idx % 4) * 2)) & 3
}

#[test]
fn constants_match_postgres() {
    assert_eq!(CLOG_XACTS_PER_PAGE, 32768);
    assert_eq!(VM_MAPSIZE, 8168);
    assert_eq!(VM_HEAPBLOCKS_PER_PAGE, 32672);
    assert_eq!(MULTIXACT_OFFSETS_PER_PAGE, 2048);
    assert_eq!(MULTIXACT_MEMBERGROUPS_PER_PAGE, 409);
    assert_eq!(MULTIXACT_MEMBERS_PER_PAGE, 1636);
}

#[test]
fn clog_apply_edges() {
    let mut page = [0u8; BLCKSZ];
    let base = 5 * CLOG_XACTS_PER_PAGE;
    let xids = vec![
        base,
        base + 1,
        base + 2,
        base + 3,
        base + CLOG_XACTS_PER_PAGE - 1,
    ];
    RustRecord::ClogSetStatus {
        xids: xids.clone(),
        status: ClogStatus::Committed,
    }
    .apply(&mut page)
    .unwrap();
    // xid 0 of the page is the low 2 bits of byte 0; xid 3 the high bits.
    assert_eq!(page[0], 0b0101_0101);
    assert_eq!(page[BLCKSZ - 1], 0b0100_0000);
    assert!(page[1..BLCKSZ - 1].iter().all(|&b| b == 0));
    // Abort overwrites one slot only.
    RustRecord::ClogSetStatus {
        xids: vec![base + 2],
        status: ClogStatus::Aborted,
    }
    .apply(&mut page)
    .unwrap();
    assert_eq!(page[0], 0b0110_0101);
    // Sub-committed does not downgrade committed, but sets in-progress ones.
    RustRecord::ClogSetStatus {
        xids: vec![base, base + 4],
        status: ClogStatus::SubCommitted,
    }
    .apply(&mut page)
    .unwrap();
    assert_eq!(clog_get(&page, base), 1);
    assert_eq!(clog_get(&page, base + 4), 3);
    assert_eq!(clog_get(&page, base + 5), CLOG_IN_PROGRESS);
    // Sub-committed then aborted.
    RustRecord::ClogSetStatus {
        xids: vec![base + 4],
        status: ClogStatus::Aborted,
    }
    .apply(&mut page)
    .unwrap();
    assert_eq!(clog_get(&page, base + 4), 2);
    // Xids of two pages are refused and change nothing.
    let before = page;
    let err = RustRecord::ClogSetStatus {
        xids: vec![base + 6, base + CLOG_XACTS_PER_PAGE],
        status: ClogStatus::Committed,
    }
    .apply(&mut page)
    .unwrap_err();
    assert!(err.to_string().contains("different pages"), "{err}");
    assert_eq!(page, before);
}

#[test]
fn vm_apply_edges() {
    let mut page = [0xFFu8; BLCKSZ];
    let base = 3 * VM_HEAPBLOCKS_PER_PAGE;
    // all_visible clears both bits of blocks 0 and the last of the page.
    RustRecord::VmClearBits {
        heap_blocks: vec![base, base + VM_HEAPBLOCKS_PER_PAGE - 1],
        all_visible: true,
    }
    .apply(&mut page)
    .unwrap();
    assert!(
        page[..VM_MAP_OFFSET].iter().all(|&b| b == 0xFF),
        "header untouched"
    );
    assert_eq!(page[VM_MAP_OFFSET], 0b1111_1100);
    assert_eq!(page[BLCKSZ - 1], 0b0011_1111);
    // Otherwise only all-frozen (the high bit of each pair).
    RustRecord::VmClearBits {
        heap_blocks: vec![base + 1, base + 6],
        all_visible: false,
    }
    .apply(&mut page)
    .unwrap();
    assert_eq!(page[VM_MAP_OFFSET], 0b1111_0100);
    assert_eq!(page[VM_MAP_OFFSET + 1], 0b1101_1111);
    let err = RustRecord::VmClearBits {
        heap_blocks: vec![base - 1, base],
        all_visible: true,
    }
    .apply(&mut page)
    .unwrap_err();
    assert!(err.to_string().contains("heap block"), "{err}");
}

#[test]
fn multixact_offset_apply_edges() {
    let mut page = [0u8; BLCKSZ];
    RustRecord::MultixactOffset {
        multi: 2048 * 7,
        offset: 0x0102_0304,
    }
    .apply(&mut page)
    .unwrap();
    RustRecord::MultixactOffset {
        multi: 2048 * 7 + 2047,
        offset: 0xAABB_CCDD,
    }
    .apply(&mut page)
    .unwrap();
    assert_eq!(&page[0..4], &[4, 3, 2, 1]);
    assert_eq!(&page[BLCKSZ - 4..], &[0xDD, 0xCC, 0xBB, 0xAA]);
    assert!(page[4..BLCKSZ - 4].iter().all(|&b| b == 0));
}

#[test]
fn multixact_members_apply_edges() {
    let mut page = [0u8; BLCKSZ];
    let base = 2 * MULTIXACT_MEMBERS_PER_PAGE;
    // Members 2..6 of the page: cross from group 0 into group 1.
    RustRecord::MultixactMembers {
        first_offset: base + 2,
        members: vec![
            (100, MultiXactStatus::ForShare),
            (101, MultiXactStatus::Update),
            (102, MultiXactStatus::ForKeyShare),
            (103, MultiXactStatus::NoKeyUpdate),
        ],
    }
    .apply(&mut page)
    .unwrap();
    // Group 0: flags bytes 0..4, xids at 4..20.
    assert_eq!(&page[0..4], &[0, 0, 1, 5]);
    assert_eq!(&page[12..16], &100u32.to_le_bytes());
    assert_eq!(&page[16..20], &101u32.to_le_bytes());
    // Group 1 starts at byte 20.
    assert_eq!(&page[20..24], &[0, 4, 0, 0]);
    assert_eq!(&page[24..28], &102u32.to_le_bytes());
    assert_eq!(&page[28..32], &103u32.to_le_bytes());
    // The last member of the page: group 408, slot 3; bytes 8180..8192 unused.
    RustRecord::MultixactMembers {
        first_offset: base + MULTIXACT_MEMBERS_PER_PAGE - 1,
        members: vec![(7, MultiXactStatus::ForUpdate)],
    }
    .apply(&mut page)
    .unwrap();
    let g = 408 * 20;
    assert_eq!(page[g + 3], 3);
    assert_eq!(&page[g + 16..g + 20], &7u32.to_le_bytes());
    assert_eq!(g + 20, 8180);
    assert!(page[8180..].iter().all(|&b| b == 0));
    // Spanning two pages, or wrapping, is refused.
    for (first, n) in [(base + MULTIXACT_MEMBERS_PER_PAGE - 1, 2), (u32::MAX, 2)] {
        let rec = RustRecord::MultixactMembers {
            first_offset: first,
            members: vec![(1, MultiXactStatus::ForShare); n],
        };
        assert!(rec.apply(&mut page).is_err());
    }
}

fn sample_values() -> Vec<Value> {
    vec![
        Value::Image(Bytes::from_static(b"")),
        Value::Image(Bytes::from(vec![7u8; BLCKSZ])),
        Value::Unreadable(UnreadableRecord {
            lsn: Lsn(0x016B_5A50),
            rmgr: 10,
            info: 0x20,
        }),
        Value::Delta(RustRecord::ClogSetStatus {
            xids: vec![1, 2, 3],
            status: ClogStatus::SubCommitted,
        }),
        Value::Delta(RustRecord::VmClearBits {
            heap_blocks: vec![],
            all_visible: false,
        }),
        Value::Delta(RustRecord::MultixactOffset {
            multi: 9,
            offset: u32::MAX,
        }),
        Value::Delta(RustRecord::MultixactMembers {
            first_offset: 4,
            members: vec![
                (5, MultiXactStatus::Update),
                (6, MultiXactStatus::ForKeyShare),
            ],
        }),
    ]
}

#[test]
fn encode_round_trip() {
    for v in sample_values() {
        let enc = v.encode();
        assert_eq!(enc.len(), v.encoded_len());
        assert_eq!(Value::decode(&enc).unwrap(), v);
        assert_eq!(Value::decode_bytes(Bytes::from(enc)).unwrap(), v);
    }
}

#[test]
fn decode_rejects_malformed() {
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![2, 0],
        vec![1, 2],
        vec![1, 1, 9],
        vec![1, 1, 1, 4, 0, 0, 0, 0],
        vec![1, 1, 1, 1, 1, 0, 0, 0],
        vec![1, 1, 1, 1, 0xFF, 0xFF, 0xFF, 0xFF],
        vec![1, 1, 2, 2, 0, 0, 0, 0],
        vec![1, 1, 3, 0, 0, 0, 0, 0, 0, 0],
        vec![1, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![1, 1, 4, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 6],
        // Unreadable: short, and with a trailing byte.
        vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 10],
        vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0],
    ];
    for b in bad {
        assert!(Value::decode(&b).is_err(), "{b:?}");
    }
    // Random bytes and mutated encodings never panic.
    let mut rng = StdRng::seed_from_u64(3);
    let samples: Vec<Vec<u8>> = sample_values().iter().map(Value::encode).collect();
    for i in 0..20000 {
        let mut b = if i % 2 == 0 {
            samples[rng.random_range(0..samples.len())].clone()
        } else {
            (0..rng.random_range(0..40)).map(|_| rng.random()).collect()
        };
        if !b.is_empty() {
            let at = rng.random_range(0..b.len());
            b[at] = rng.random();
            if rng.random_bool(0.3) {
                b.truncate(rng.random_range(0..b.len()));
            }
        }
        let _ = Value::decode(&b);
    }
}
