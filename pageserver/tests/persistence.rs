//! Persistent timelines: random puts with flushes at random points against
//! an in-memory model, branches, reload from disk, image compaction, GC,
//! corrupt metadata and O(1) branch creation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use pageserver::key::{Key, KeyRange, SlruKind};
use pageserver::tenant::layer::{DeltaLayerWriter, LayerName};
use pageserver::tenant::timeline::{BranchError, ReadError, RecordLsn, Timeline, TimelineConf};
use pageserver::tenant::{Tenant, TenantError, TenantState};
use pageserver::value::{
    ClogStatus, RustRecord, UnreadableRecord, Value, BLCKSZ, CLOG_XACTS_PER_PAGE,
};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::PgMajorVersion;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use utils::{Lsn, TenantId, TimelineId};

const START: RecordLsn = RecordLsn {
    last: Lsn(0x1000),
    prev: Lsn(0x0FD0),
};

fn conf(max: usize) -> TimelineConf {
    TimelineConf {
        open_layer_max_bytes: max,
        ..TimelineConf::default()
    }
}

fn rel_key(block: u32) -> Key {
    Key::rel_block(
        RelTag {
            node: RelFileNode {
                spc_oid: 1663,
                db_oid: 5,
                rel_node: 16384 + block % 3,
            },
            fork: ForkNumber::Main,
        },
        block,
    )
}

fn clog_key(block: u32) -> Key {
    Key::slru_page(SlruKind::Clog, 0, block)
}

fn page(rng: &mut StdRng) -> Bytes {
    let fill: u8 = rng.random();
    let mut p = vec![fill; BLCKSZ];
    for _ in 0..4 {
        let at = rng.random_range(0..BLCKSZ);
        p[at] = rng.random();
    }
    Bytes::from(p)
}

/// A record and the values it stored.
type Record = (RecordLsn, Vec<(Key, Value)>);

/// Every version of every key, per timeline, and the branch structure.
#[derive(Default)]
struct Model {
    versions: BTreeMap<TimelineId, BTreeMap<Key, BTreeMap<Lsn, Value>>>,
    ancestors: BTreeMap<TimelineId, (TimelineId, Lsn)>,
    /// Records ingested per timeline, in order: (record, values).
    log: BTreeMap<TimelineId, Vec<Record>>,
}

impl Model {
    fn get(&self, mut tl: TimelineId, key: Key, lsn: Lsn) -> Option<Bytes> {
        let mut at = lsn;
        let mut deltas = Vec::new();
        let base = loop {
            if let Some(h) = self.versions.get(&tl).and_then(|v| v.get(&key)) {
                let mut found = None;
                for (_, v) in h.range(..=at).rev() {
                    match v {
                        Value::Image(b) => {
                            found = Some(b.clone());
                            break;
                        }
                        Value::Delta(d) => deltas.push(d.clone()),
                        Value::Unreadable(_) => panic!("the model stores no unreadable versions"),
                    }
                }
                if found.is_some() {
                    break found;
                }
            }
            match self.ancestors.get(&tl) {
                Some((a, l)) => {
                    at = at.min(*l);
                    tl = *a;
                }
                None => break None,
            }
        };
        let base = base?;
        let mut p: [u8; BLCKSZ] = base.as_ref().try_into().unwrap();
        for d in deltas.iter().rev() {
            d.apply(&mut p).unwrap();
        }
        Some(Bytes::copy_from_slice(&p))
    }
}

fn keys() -> Vec<Key> {
    (0..24).map(rel_key).chain((0..4).map(clog_key)).collect()
}

/// Ingest one random record into `tl` and the model.
fn ingest_one(rng: &mut StdRng, tl: &Timeline, model: &mut Model) -> RecordLsn {
    let id = tl.timeline_id;
    let prev = tl.last_record();
    let lsn = Lsn(prev.last.0 + rng.random_range(1..8u64) * 8);
    let mut values = Vec::new();
    let mut used = BTreeSet::new();
    for _ in 0..rng.random_range(1..4) {
        let key = if rng.random_bool(0.6) {
            rel_key(rng.random_range(0..24))
        } else {
            clog_key(rng.random_range(0..4))
        };
        if !used.insert(key) {
            continue;
        }
        let exists = model.get(id, key, prev.last).is_some();
        let value = if key.is_slru_page() && exists && rng.random_bool(0.75) {
            let block = key.slru_block().unwrap();
            let base = block * CLOG_XACTS_PER_PAGE;
            let xids = (0..rng.random_range(1..5))
                .map(|_| base + rng.random_range(0..CLOG_XACTS_PER_PAGE))
                .collect();
            let status = if rng.random_bool(0.5) {
                ClogStatus::Committed
            } else {
                ClogStatus::Aborted
            };
            Value::Delta(RustRecord::ClogSetStatus { xids, status })
        } else {
            Value::Image(page(rng))
        };
        values.push((key, value));
    }
    tl.put_batch(lsn, values.clone()).unwrap();
    let record = RecordLsn {
        last: lsn,
        prev: prev.last,
    };
    tl.advance_last_record(record);
    let v = model.versions.entry(id).or_default();
    for (k, val) in &values {
        v.entry(*k).or_default().insert(lsn, val.clone());
    }
    model.log.entry(id).or_default().push((record, values));
    record
}

/// Compare every key at LSNs in `from..=to` (record boundaries and the LSNs
/// next to them, sampled evenly) with the model.
fn check_reads(tl: &Timeline, model: &Model, from: Lsn, to: Lsn, what: &str) {
    let id = tl.timeline_id;
    let mut lsns: BTreeSet<Lsn> = BTreeSet::new();
    lsns.insert(from);
    lsns.insert(to);
    let mut t = Some(id);
    while let Some(cur) = t {
        for (r, _) in model.log.get(&cur).into_iter().flatten() {
            for l in [r.last, Lsn(r.last.0 - 1), Lsn(r.last.0 + 1)] {
                if l >= from && l <= to {
                    lsns.insert(l);
                }
            }
        }
        t = model.ancestors.get(&cur).map(|a| a.0);
    }
    // At most ~120 LSNs, spread evenly, always with both ends.
    let stride = lsns.len().div_ceil(120).max(1);
    let n = lsns.len();
    let lsns: Vec<Lsn> = lsns
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % stride == 0 || *i == n - 1)
        .map(|(_, l)| l)
        .collect();
    for lsn in lsns {
        for key in keys() {
            let got = tl
                .get(key, lsn)
                .unwrap_or_else(|e| panic!("{what}: {key:?} at {lsn}: {e}"));
            let want = model.get(id, key, lsn);
            assert!(got == want, "{what}: {key:?} at {lsn} differs");
        }
    }
}

fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path());
            }
        }
    }
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    workdir: PathBuf,
    tenant_id: TenantId,
    tenant: Arc<Tenant>,
    model: Model,
    rng: StdRng,
}

fn setup(seed: u64, max: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let workdir = tmp.path().to_path_buf();
    let tenant_id = TenantId::from_bytes([seed as u8; 16]);
    let tenant = Tenant::create(&workdir, tenant_id, conf(max)).unwrap();
    Setup {
        _tmp: tmp,
        workdir,
        tenant_id,
        tenant,
        model: Model::default(),
        rng: StdRng::seed_from_u64(seed),
    }
}

fn tid(n: u8) -> TimelineId {
    TimelineId::from_bytes([n; 16])
}

/// Ingest `n` records into `tl`, flushing at random points.
fn ingest(s: &mut Setup, tl: &Timeline, n: usize, flush_p: f64) {
    for _ in 0..n {
        ingest_one(&mut s.rng, tl, &mut s.model);
        if s.rng.random_bool(flush_p) {
            tl.flush().unwrap();
        }
    }
}

fn branch(s: &mut Setup, parent: &Timeline, child: TimelineId) -> Arc<Timeline> {
    // A random record boundary of the parent's own history.
    let log = &s.model.log[&parent.timeline_id];
    let at = log[s.rng.random_range(0..log.len())].0;
    let b = s
        .tenant
        .branch_timeline(parent.timeline_id, child, at)
        .unwrap();
    s.model
        .ancestors
        .insert(child, (parent.timeline_id, at.last));
    b
}

#[test]
fn random_puts_flushes_branch_and_reload() {
    for seed in [1u64, 2, 3] {
        let mut s = setup(seed, 48 * 1024);
        let root = s
            .tenant
            .create_root_timeline(tid(1), PgMajorVersion::V15, START)
            .unwrap();
        ingest(&mut s, &root, 300, 0.03);
        let child = branch(&mut s, &root, tid(2));
        ingest(&mut s, &root, 100, 0.03);
        ingest(&mut s, &child, 150, 0.03);
        assert!(root.layer_names().len() > 5, "size-triggered flushes");
        check_reads(&root, &s.model, START.last, root.last_record_lsn(), "root");
        check_reads(
            &child,
            &s.model,
            child.start_lsn(),
            child.last_record_lsn(),
            "child",
        );
        // A put below the open layer is refused.
        root.flush().unwrap();
        let err = root
            .put_batch(
                root.disk_consistent_lsn(),
                vec![(rel_key(0), Value::Image(page(&mut s.rng)))],
            )
            .unwrap_err();
        assert!(matches!(err, ReadError::BelowOpenLayer { .. }), "{err}");

        // Unflushed WAL on both, then restart.
        ingest(&mut s, &root, 20, 0.0);
        ingest(&mut s, &child, 20, 0.0);
        let dcs: Vec<(TimelineId, RecordLsn)> = [&root, &child]
            .iter()
            .map(|t| (t.timeline_id, t.disk_consistent()))
            .collect();
        drop((root, child));
        s.tenant = Tenant::load(&s.workdir, s.tenant_id, conf(48 * 1024));
        assert_eq!(s.tenant.state(), TenantState::Active);
        assert_eq!(s.tenant.timelines().len(), 2);
        for (id, dc) in dcs {
            let tl = s.tenant.get_timeline(id).unwrap();
            assert_eq!(tl.last_record(), dc, "resumes at the disk-consistent LSN");
            assert_eq!(tl.disk_consistent(), dc);
            check_reads(&tl, &s.model, tl.start_lsn(), dc.last, "reloaded");
            // Re-ingest the WAL after the disk-consistent LSN, as from the
            // safekeepers: then every read matches again.
            let log = s.model.log[&id].clone();
            for (record, values) in log.iter().filter(|(r, _)| r.last > dc.last) {
                tl.put_batch(record.last, values.clone()).unwrap();
                tl.advance_last_record(*record);
            }
            check_reads(
                &tl,
                &s.model,
                tl.start_lsn(),
                tl.last_record_lsn(),
                "re-ingested",
            );
        }
    }
}

#[test]
fn compaction_and_gc() {
    let mut s = setup(7, 32 * 1024);
    let root = s
        .tenant
        .create_root_timeline(tid(1), PgMajorVersion::V15, START)
        .unwrap();
    ingest(&mut s, &root, 250, 0.05);
    let child = branch(&mut s, &root, tid(2));
    let branch_lsn = child.start_lsn();
    ingest(&mut s, &root, 250, 0.05);
    ingest(&mut s, &child, 50, 0.05);
    root.flush().unwrap();
    child.flush().unwrap();
    let dc = root.disk_consistent_lsn();
    let log: Vec<Lsn> = s.model.log[&root.timeline_id]
        .iter()
        .map(|r| r.0.last)
        .collect();
    let mid = log[log.len() * 3 / 4];
    let deltas_before = root.layer_names().len();

    // Images at two LSNs; reads unchanged.
    let err = root.compact_images(Lsn(dc.0 + 1)).unwrap_err();
    assert!(err.to_string().contains("disk-consistent"), "{err}");
    let i1 = root.compact_images(mid).unwrap().unwrap();
    let i2 = root.compact_images(dc).unwrap().unwrap();
    assert!(!i1.is_delta() && !i2.is_delta());
    assert_eq!(root.layer_names().len(), deltas_before + 2);
    let ci = child.compact_images(child.disk_consistent_lsn()).unwrap();
    assert!(ci.is_some());
    check_reads(
        &root,
        &s.model,
        START.last,
        root.last_record_lsn(),
        "compacted",
    );
    check_reads(
        &child,
        &s.model,
        child.start_lsn(),
        child.last_record_lsn(),
        "child compacted",
    );

    // GC at `mid`, keeping the branch point.
    let before: HashSet<LayerName> = root.layer_names().into_iter().collect();
    let removed = s.tenant.gc_timeline(root.timeline_id, mid).unwrap();
    assert!(!removed.is_empty(), "GC removes covered layers");
    let after: HashSet<LayerName> = root.layer_names().into_iter().collect();
    for r in &removed {
        assert!(r.lsn_range().end <= mid, "{r} is below the horizon");
        assert!(!after.contains(r));
        assert!(!root.dir().unwrap().join(r.to_string()).exists());
    }
    assert!(after.contains(&i1) && after.contains(&i2));
    assert_eq!(before.len(), after.len() + removed.len());
    // Layers holding the branch point are kept.
    assert!(
        after.iter().any(|l| l.is_delta()
            && l.lsn_range().start <= branch_lsn
            && branch_lsn < l.lsn_range().end)
            || s.model.log[&root.timeline_id]
                .iter()
                .all(|r| r.0.last > branch_lsn),
        "the branch point's layer is retained"
    );
    check_reads(&root, &s.model, mid, root.last_record_lsn(), "after GC");
    check_reads(
        &child,
        &s.model,
        child.start_lsn(),
        child.last_record_lsn(),
        "child after GC",
    );
    assert_eq!(root.gc_horizon(), mid);
    let err = s
        .tenant
        .branch_timeline(
            root.timeline_id,
            tid(3),
            RecordLsn {
                last: Lsn(mid.0 - 8),
                prev: Lsn(0),
            },
        )
        .err()
        .expect("branching below the GC horizon is refused");
    assert!(
        matches!(err, TenantError::Branch(BranchError::BelowGcHorizon { .. })),
        "{err}"
    );

    // A second GC at the newest image removes everything older that no
    // read at or above it needs.
    let removed2 = s.tenant.gc_timeline(root.timeline_id, dc).unwrap();
    assert!(!removed2.is_empty());
    check_reads(&root, &s.model, dc, root.last_record_lsn(), "after GC 2");
    check_reads(
        &child,
        &s.model,
        child.start_lsn(),
        child.last_record_lsn(),
        "child after GC 2",
    );

    // All of it survives a restart, the horizon too.
    let (root_id, child_id) = (root.timeline_id, child.timeline_id);
    drop((root, child));
    s.tenant = Tenant::load(&s.workdir, s.tenant_id, conf(32 * 1024));
    let root = s.tenant.get_timeline(root_id).unwrap();
    let child = s.tenant.get_timeline(child_id).unwrap();
    assert_eq!(root.gc_horizon(), dc);
    check_reads(&root, &s.model, dc, root.last_record_lsn(), "reloaded GC");
    check_reads(
        &child,
        &s.model,
        child.start_lsn(),
        child.last_record_lsn(),
        "reloaded child",
    );
}

#[test]
fn corrupt_metadata_breaks_the_tenant() {
    let mut s = setup(11, 16 * 1024);
    let root = s
        .tenant
        .create_root_timeline(tid(1), PgMajorVersion::V15, START)
        .unwrap();
    ingest(&mut s, &root, 100, 0.1);
    root.flush().unwrap();
    let dir = root.dir().unwrap().to_path_buf();
    drop(root);
    drop(s.tenant);
    let files = files_under(&s.workdir);
    let md = dir.join("metadata");
    let mut bytes = std::fs::read(&md).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&md, &bytes).unwrap();

    let tenant = Tenant::load(&s.workdir, s.tenant_id, conf(16 * 1024));
    let TenantState::Broken(reason) = tenant.state() else {
        panic!("a corrupt metadata file must break the tenant");
    };
    assert!(
        reason.contains("metadata") && reason.contains("checksum"),
        "{reason}"
    );
    let err = tenant.get_timeline(tid(1)).err().expect("broken");
    assert!(matches!(err, TenantError::Broken { .. }), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(files_under(&s.workdir), files, "nothing deleted");

    // A truncated metadata file too.
    std::fs::write(&md, &bytes[..50]).unwrap();
    let tenant = Tenant::load(&s.workdir, s.tenant_id, conf(16 * 1024));
    assert!(matches!(tenant.state(), TenantState::Broken(r) if r.contains("truncated")));
}

#[test]
fn branch_writes_only_metadata() {
    let mut s = setup(13, 8 * 1024);
    let root = s
        .tenant
        .create_root_timeline(tid(1), PgMajorVersion::V15, START)
        .unwrap();
    ingest(&mut s, &root, 400, 0.0);
    root.flush().unwrap();
    assert!(root.layer_names().len() >= 50, "many layers");
    let before = files_under(&s.workdir);
    let started = std::time::Instant::now();
    let child = branch(&mut s, &root, tid(2));
    let took = started.elapsed();
    let after = files_under(&s.workdir);
    let new: Vec<_> = after.difference(&before).collect();
    assert_eq!(new, vec![&child.dir().unwrap().join("metadata")]);
    assert!(before.is_subset(&after));
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    check_reads(
        &child,
        &s.model,
        child.start_lsn(),
        child.last_record_lsn(),
        "branch",
    );

    // Deleting: refused while the root has a child; the child's directory
    // goes away.
    let err = s.tenant.delete_timeline(root.timeline_id).unwrap_err();
    assert!(matches!(err, TenantError::HasChildren { .. }), "{err}");
    let child_dir = child.dir().unwrap().to_path_buf();
    s.tenant.delete_timeline(child.timeline_id).unwrap();
    assert!(!child_dir.exists());
    assert!(s.tenant.get_timeline(tid(2)).is_err());
    s.tenant.delete_timeline(root.timeline_id).unwrap();
    assert!(s.tenant.timelines().is_empty());
}

#[test]
fn layers_beyond_disk_consistent_are_dropped_on_load() {
    let mut s = setup(17, usize::MAX);
    let root = s
        .tenant
        .create_root_timeline(tid(1), PgMajorVersion::V15, START)
        .unwrap();
    ingest(&mut s, &root, 50, 0.0);
    root.flush().unwrap();
    ingest(&mut s, &root, 50, 0.0);
    let dc = root.disk_consistent();
    let dir = root.dir().unwrap().to_path_buf();
    // As if a flush wrote its layer and crashed before the metadata.
    let key = rel_key(0);
    let range = Lsn(dc.last.0 + 1)..Lsn(root.last_record_lsn().0 + 1);
    let name = LayerName::Delta {
        key_range: KeyRange::singleton(key),
        lsn_range: range.clone(),
    };
    let mut w =
        DeltaLayerWriter::new(&dir.join(name.to_string()), name.key_range(), range).unwrap();
    w.put(key, Lsn(dc.last.0 + 1), &Value::Image(page(&mut s.rng)))
        .unwrap();
    w.finish().unwrap();
    std::fs::write(dir.join("junk.tmp"), b"x").unwrap();
    drop(root);
    s.tenant = Tenant::load(&s.workdir, s.tenant_id, conf(usize::MAX));
    let root = s.tenant.get_timeline(tid(1)).unwrap();
    assert!(!dir.join(name.to_string()).exists());
    assert!(!dir.join("junk.tmp").exists());
    assert!(!root.layer_names().contains(&name));
    check_reads(&root, &s.model, START.last, dc.last, "after crash");
}

#[test]
fn in_memory_timeline_cannot_flush() {
    let tl = Timeline::new_root(TenantId::generate(), tid(1), PgMajorVersion::V15, START);
    assert!(tl.flush().is_err());
    assert!(tl.dir().is_none());
}

fn dir_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// A steady update workload over a fixed key space, with the background
/// work a pageserver does (flush, partitioned compaction, GC at a window
/// below the last record): the space on disk levels off instead of growing
/// with the WAL, and every read in the window stays right.
#[test]
fn steady_updates_keep_physical_size_bounded() {
    let mut s = setup(11, 16 * 1024);
    let conf = TimelineConf {
        open_layer_max_bytes: 16 * 1024,
        image_partition_keys: 8,
        ..TimelineConf::default()
    };
    s.tenant = Tenant::create(&s.workdir.join("bounded"), s.tenant_id, conf).unwrap();
    let tl = s
        .tenant
        .create_root_timeline(tid(1), PgMajorVersion::V15, START)
        .unwrap();
    let dir = tl.dir().unwrap().to_path_buf();
    let window = 400u64; // LSN bytes of history kept
    let mut sizes = Vec::new();
    let mut images_per_round = Vec::new();
    for round in 0..60 {
        ingest(&mut s, &tl, 40, 0.0);
        tl.flush().unwrap();
        images_per_round.push(tl.compact(2).unwrap().len());
        let horizon =
            Lsn(tl.last_record_lsn().0.saturating_sub(window)).min(tl.disk_consistent_lsn());
        if horizon > tl.gc_horizon() && horizon > tl.start_lsn() {
            s.tenant.gc_timeline(tl.timeline_id, horizon).unwrap();
        }
        sizes.push(dir_bytes(&dir));
        if round % 10 == 9 {
            check_reads(
                &tl,
                &s.model,
                tl.gc_horizon(),
                tl.last_record_lsn(),
                "steady",
            );
        }
    }
    // 28 keys in partitions of about 8: several partitions.
    let partitions = tl.partitioning();
    assert!(partitions.len() >= 3, "{partitions:?}");
    let early = *sizes[10..30].iter().max().unwrap();
    let late = *sizes[40..].iter().max().unwrap();
    assert!(
        late * 2 <= early * 3,
        "physical size grows with the WAL: {early} bytes in rounds 10-30, {late} in 40-60 ({sizes:?})"
    );

    // Updates to one key re-image only its partition.
    let key = rel_key(0);
    for _ in 0..3 {
        let prev = tl.last_record();
        let record = RecordLsn {
            last: Lsn(prev.last.0 + 8),
            prev: prev.last,
        };
        let value = Value::Image(page(&mut s.rng));
        tl.put_batch(record.last, vec![(key, value.clone())])
            .unwrap();
        tl.advance_last_record(record);
        s.model
            .versions
            .entry(tl.timeline_id)
            .or_default()
            .entry(key)
            .or_default()
            .insert(record.last, value.clone());
        s.model
            .log
            .entry(tl.timeline_id)
            .or_default()
            .push((record, vec![(key, value)]));
        tl.flush().unwrap();
    }
    let written = tl.compact(2).unwrap();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(written[0].key_range().contains(&key));
    check_reads(
        &tl,
        &s.model,
        tl.gc_horizon(),
        tl.last_record_lsn(),
        "one partition",
    );
}

/// A page changed by a record with neither an image nor a redo is never
/// served from its older version: reads at and after that record fail,
/// naming it, through flushes, compaction and a reload, until a newer image.
#[test]
fn unreadable_versions_fail_reads_until_an_image() {
    let mut s = setup(23, 16 * 1024);
    let tl = s
        .tenant
        .create_root_timeline(tid(1), PgMajorVersion::V15, START)
        .unwrap();
    let key = rel_key(0);
    let other = rel_key(1);
    let record = UnreadableRecord {
        lsn: Lsn(0x1FF8),
        rmgr: 10, // Heap
        info: 0x00,
    };
    let commit = |tl: &Timeline, lsn: u64, values: Vec<(Key, Value)>| {
        let prev = tl.last_record();
        tl.put_batch(Lsn(lsn), values).unwrap();
        tl.advance_last_record(RecordLsn {
            last: Lsn(lsn),
            prev: prev.last,
        });
    };
    let old = Bytes::from(vec![1u8; BLCKSZ]);
    let new = Bytes::from(vec![2u8; BLCKSZ]);
    commit(
        &tl,
        0x1800,
        vec![
            (key, Value::Image(old.clone())),
            (other, Value::Image(old.clone())),
        ],
    );
    commit(&tl, 0x2000, vec![(key, Value::Unreadable(record))]);
    // A delta on top, and two in one record, stay unreadable.
    let vm = Value::Delta(RustRecord::VmClearBits {
        heap_blocks: vec![0],
        all_visible: true,
    });
    commit(&tl, 0x2800, vec![(key, vm.clone()), (key, vm)]);
    commit(&tl, 0x3000, vec![(key, Value::Image(new.clone()))]);

    let check = |tl: &Timeline, what: &str| {
        assert_eq!(
            tl.get(key, Lsn(0x1FFF)).unwrap(),
            Some(old.clone()),
            "{what}"
        );
        for lsn in [0x2000, 0x2400, 0x2800, 0x2FFF] {
            match tl.get(key, Lsn(lsn)) {
                Err(ReadError::Unreadable { record: r, .. }) => assert_eq!(r, record, "{what}"),
                other => panic!("{what}: at {lsn:#x}: expected an unreadable page, got {other:?}"),
            }
        }
        let message = tl.get(key, Lsn(0x2000)).unwrap_err().to_string();
        assert!(
            message.contains("0/1FF8") && message.contains("rmgr Heap"),
            "{message}"
        );
        assert_eq!(
            tl.get(key, Lsn(0x3000)).unwrap(),
            Some(new.clone()),
            "{what}"
        );
        assert_eq!(
            tl.get(other, Lsn(0x2800)).unwrap(),
            Some(old.clone()),
            "{what}"
        );
    };
    check(&tl, "in memory");
    tl.flush().unwrap();
    check(&tl, "flushed");
    // An image layer at an LSN where the page is unreadable keeps it so.
    tl.compact_images(Lsn(0x2800)).unwrap().unwrap();
    tl.compact_images(tl.disk_consistent_lsn())
        .unwrap()
        .unwrap();
    check(&tl, "compacted");
    let id = tl.timeline_id;
    drop(tl);
    s.tenant = Tenant::load(&s.workdir, s.tenant_id, conf(16 * 1024));
    let tl = s.tenant.get_timeline(id).unwrap();
    check(&tl, "reloaded");
}

/// Branch creation and GC race: a branch whose point passed the horizon
/// check must have its point retained by any GC that follows, or be refused.
/// Each round makes the branch point's layers collectable (an image layer
/// above it), then creates a branch; at the moment its point has passed
/// the checks (a failpoint), a GC above the branch point starts, and the
/// branch creation waits for it (a second at most: with branch creation
/// and GC serialised, the GC waits instead). The branch must read what the
/// model says at its start, then and after a restart.
#[test]
fn branch_creation_and_gc_interleaved() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    use std::time::Duration;

    type Round = (Arc<Tenant>, TimelineId, Lsn);
    let mut s = setup(11, 16 * 1024);
    let root = s
        .tenant
        .create_root_timeline(tid(1), PgMajorVersion::V15, START)
        .unwrap();
    let round: Arc<Mutex<Option<Round>>> = Arc::default();
    let gc_threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
    let tenant_id = s.tenant_id.to_string();
    {
        let (round, gc_threads) = (round.clone(), gc_threads.clone());
        utils::failpoint::set(pageserver::tenant::BRANCH_POINT_CHECKED, move |context| {
            if context != tenant_id {
                return;
            }
            let Some((tenant, timeline_id, horizon)) = round.lock().unwrap().take() else {
                return;
            };
            let (done_tx, done_rx) = mpsc::channel();
            gc_threads.lock().unwrap().push(std::thread::spawn(move || {
                tenant.gc_timeline(timeline_id, horizon).unwrap();
                let _ = done_tx.send(());
            }));
            let _ = done_rx.recv_timeout(Duration::from_secs(1));
        });
    }
    for n in 0..4u8 {
        ingest(&mut s, &root, 12, 0.0);
        root.flush().unwrap();
        let at = root.last_record();
        ingest(&mut s, &root, 12, 0.0);
        root.flush().unwrap();
        let horizon = root.disk_consistent_lsn();
        root.compact_images(horizon).unwrap();
        *round.lock().unwrap() = Some((s.tenant.clone(), root.timeline_id, horizon));

        let child_id = TimelineId::from_bytes([n + 100; 16]);
        let child = s
            .tenant
            .branch_timeline(root.timeline_id, child_id, at)
            .unwrap();
        for t in gc_threads.lock().unwrap().drain(..) {
            t.join().unwrap();
        }
        assert_eq!(root.gc_horizon(), horizon, "the GC ran");
        s.model
            .ancestors
            .insert(child_id, (root.timeline_id, at.last));
        check_reads(
            &child,
            &s.model,
            at.last,
            at.last,
            "branch created during GC",
        );
    }
    utils::failpoint::clear(pageserver::tenant::BRANCH_POINT_CHECKED);
    // After a restart every branch still reads its start.
    let children: Vec<(TimelineId, Lsn)> = s.tenant.children(root.timeline_id);
    assert_eq!(children.len(), 4);
    drop(root);
    s.tenant = Tenant::load(&s.workdir, s.tenant_id, conf(16 * 1024));
    assert_eq!(s.tenant.state(), TenantState::Active);
    for (id, at) in children {
        let child = s.tenant.get_timeline(id).unwrap();
        check_reads(&child, &s.model, at, at, "branch reloaded");
    }
}
