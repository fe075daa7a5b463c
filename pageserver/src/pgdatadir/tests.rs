use super::*;
use crate::tenant::timeline::RecordLsn;
use crate::value::RustRecord;
use postgres_format::PgMajorVersion;
use std::collections::BTreeMap;
use std::sync::Arc;
use utils::{TenantId, TimelineId};

fn rel(node: u32, fork: ForkNumber) -> RelTag {
    RelTag {
        node: RelFileNode {
            spc_oid: 1663,
            db_oid: 5,
            rel_node: node,
        },
        fork,
    }
}

/// An in-memory timeline whose history begins at 0x100.
fn root_timeline() -> Timeline {
    let start = RecordLsn {
        last: Lsn(0x100),
        prev: Lsn(0x80),
    };
    Timeline::new_root(
        TenantId::generate(),
        TimelineId::generate(),
        PgMajorVersion::V15,
        start,
    )
}

fn page(fill: u8) -> Bytes {
    Bytes::from(vec![fill; BLCKSZ])
}

#[test]
fn relations_versions_and_branches() {
    let tl = Arc::new(root_timeline());
    let r = rel(16384, ForkNumber::Main);
    let mut m = tl.begin_modification(Lsn(0x200));
    m.put_rel_creation(r, 0).unwrap();
    m.put_rel_page_image(r, 0, page(1)).unwrap();
    m.commit(RecordLsn {
        last: Lsn(0x210),
        prev: Lsn(0x200),
    })
    .unwrap();
    let mut m = tl.begin_modification(Lsn(0x300));
    m.put_rel_page_image(r, 2, page(3)).unwrap();
    m.commit(RecordLsn {
        last: Lsn(0x310),
        prev: Lsn(0x300),
    })
    .unwrap();

    assert_eq!(tl.get_rel_size(r, Lsn(0x150)).unwrap(), None);
    assert_eq!(tl.get_rel_size(r, Lsn(0x250)).unwrap(), Some(1));
    assert_eq!(tl.get_rel_size(r, Lsn(0x300)).unwrap(), Some(3));
    assert_eq!(tl.get_rel_page(r, 0, Lsn(0x300)).unwrap(), page(1));
    assert_eq!(tl.get_rel_page(r, 1, Lsn(0x300)).unwrap(), page(0));
    assert!(tl.get_rel_page(r, 2, Lsn(0x250)).is_err());
    assert_eq!(
        tl.list_dbs(Lsn(0x300)).unwrap(),
        BTreeSet::from([(1663, 5)])
    );

    // A branch at 0x210 sees the state there, and its own changes only.
    let branch = Arc::new(
        tl.branch(
            TimelineId::generate(),
            RecordLsn {
                last: Lsn(0x210),
                prev: Lsn(0x200),
            },
        )
        .unwrap(),
    );
    assert_eq!(branch.get_rel_size(r, Lsn(0x400)).unwrap(), Some(1));
    let mut m = branch.begin_modification(Lsn(0x220));
    m.put_rel_page_image(r, 0, page(9)).unwrap();
    m.commit(RecordLsn {
        last: Lsn(0x230),
        prev: Lsn(0x220),
    })
    .unwrap();
    assert_eq!(branch.get_rel_page(r, 0, Lsn(0x230)).unwrap(), page(9));
    assert_eq!(tl.get_rel_page(r, 0, Lsn(0x300)).unwrap(), page(1));
    assert!(tl
        .branch(
            TimelineId::generate(),
            RecordLsn {
                last: Lsn(0x999),
                prev: Lsn(0)
            }
        )
        .is_err());

    let mut m = tl.begin_modification(Lsn(0x400));
    m.put_rel_drop(r).unwrap();
    m.commit(RecordLsn {
        last: Lsn(0x410),
        prev: Lsn(0x400),
    })
    .unwrap();
    assert!(!tl.rel_exists(r, Lsn(0x410)).unwrap());
    assert!(tl.rel_exists(r, Lsn(0x310)).unwrap());
}

#[test]
fn deltas_apply_on_read() {
    let tl = root_timeline();
    let mut m = tl.begin_modification(Lsn(0x200));
    m.put_slru_page_image(SlruKind::Clog, 0, 0, page(0))
        .unwrap();
    m.commit(RecordLsn {
        last: Lsn(0x210),
        prev: Lsn(0x200),
    })
    .unwrap();
    let mut m = tl.begin_modification(Lsn(0x300));
    let record = RustRecord::ClogSetStatus {
        xids: vec![3],
        status: crate::value::ClogStatus::Committed,
    };
    m.put_slru_delta(SlruKind::Clog, 0, 0, record).unwrap();
    m.commit(RecordLsn {
        last: Lsn(0x310),
        prev: Lsn(0x300),
    })
    .unwrap();
    let before = tl.get_slru_page(SlruKind::Clog, 0, 0, Lsn(0x250)).unwrap();
    let after = tl.get_slru_page(SlruKind::Clog, 0, 0, Lsn(0x310)).unwrap();
    assert_eq!(before[0], 0);
    assert_eq!(after[0], 0b0100_0000, "xid 3 committed: bits 6-7 of byte 0");
    assert_eq!(
        tl.list_slru_segments(SlruKind::Clog, Lsn(0x310)).unwrap(),
        BTreeSet::from([0])
    );
}

fn tablespace_rel(spc: u32, node: u32) -> RelTag {
    RelTag {
        node: RelFileNode {
            spc_oid: spc,
            db_oid: 5,
            rel_node: node,
        },
        fork: ForkNumber::Main,
    }
}

/// Random creations, extensions, truncations and drops (and a database
/// drop) through a cached modification per record: after every record the
/// cache and the stored sizes agree with a model.
#[test]
fn cached_sizes_match_storage() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let tl = root_timeline();
    let mut cache = RelSizeCache::default();
    let mut model: BTreeMap<RelTag, u32> = BTreeMap::new();
    let rels: Vec<RelTag> = (0..8).map(|i| rel(16384 + i, ForkNumber::Main)).collect();
    let mut lsn = 0x200;
    for step in 0..2000 {
        let r = rels[rng.random_range(0..rels.len())];
        let mut m = tl.begin_cached_modification(Lsn(lsn), &mut cache);
        match rng.random_range(0..10) {
            0 => {
                m.put_rel_creation(r, 0).unwrap();
                model.insert(r, 0);
            }
            1 => {
                m.put_rel_drop(r).unwrap();
                model.remove(&r);
            }
            2 => {
                let n = rng.random_range(0..4);
                m.put_rel_truncation(r, n).unwrap();
                if let Some(size) = model.get_mut(&r) {
                    *size = (*size).min(n);
                }
            }
            3 if step % 500 == 499 => {
                m.put_db_drop(1663, 5).unwrap();
                model.clear();
            }
            _ => {
                let block = rng.random_range(0..6);
                m.put_rel_page_image(r, block, page(1)).unwrap();
                let size = model.entry(r).or_insert(0);
                *size = (*size).max(block + 1);
            }
        }
        m.commit(RecordLsn {
            last: Lsn(lsn),
            prev: Lsn(lsn - 0x10),
        })
        .unwrap();
        for r in &rels {
            let stored = tl.get_rel_size(*r, Lsn(lsn)).unwrap();
            assert_eq!(stored, model.get(r).copied(), "step {step}: {r:?} stored");
            if let Some(cached) = cache.get(r) {
                assert_eq!(Some(cached), stored, "step {step}: {r:?} cached");
            }
        }
        lsn += 0x100;
    }
    assert!(!cache.is_empty());
}

/// Apply `change` in one modification at `lsn`, committed as a record there.
fn commit_at(tl: &Timeline, lsn: u64, change: impl FnOnce(&mut DatadirModification<'_>)) {
    let mut m = tl.begin_modification(Lsn(lsn));
    change(&mut m);
    m.commit(RecordLsn {
        last: Lsn(lsn),
        prev: Lsn(lsn - 0x100),
    })
    .unwrap();
}

/// A tablespace's last relation dropped takes the database's entry in
/// that tablespace with it: base backups refuse tablespaces in use only.
#[test]
fn an_emptied_tablespace_leaves_the_database_directory() {
    let tl = root_timeline();
    let (a, b) = (tablespace_rel(16502, 16600), tablespace_rel(16502, 16601));
    commit_at(&tl, 0x200, |m| {
        for r in [rel(16384, ForkNumber::Main), a, b] {
            m.put_rel_creation(r, 0).unwrap();
        }
    });
    assert!(tl.list_dbs(Lsn(0x200)).unwrap().contains(&(16502, 5)));
    commit_at(&tl, 0x300, |m| m.put_rel_drop(a).unwrap());
    assert!(tl.list_dbs(Lsn(0x300)).unwrap().contains(&(16502, 5)));
    commit_at(&tl, 0x400, |m| m.put_rel_drop(b).unwrap());
    assert_eq!(
        tl.list_dbs(Lsn(0x400)).unwrap(),
        BTreeSet::from([(1663, 5)])
    );
}
