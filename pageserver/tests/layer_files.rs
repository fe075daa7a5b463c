//! Layer files: round trips against an in-memory model, lookup semantics,
//! names, writer misuse, corruption and a short seeded fuzz of the reader.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use pageserver::key::{Key, KeyRange, SlruKind};
use pageserver::tenant::layer::{
    DeltaLayerReader, DeltaLayerWriter, ImageLayerReader, ImageLayerWriter, LayerError, LayerName,
};
use pageserver::value::{ClogStatus, MultiXactStatus, RustRecord, Value};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use utils::Lsn;

const HEADER_SIZE: usize = 128;
const FOOTER_SIZE: usize = 32;
const INDEX_ENTRY_SIZE: usize = 80;

fn rel(n: u32, fork: ForkNumber) -> RelTag {
    RelTag {
        node: RelFileNode {
            spc_oid: 1663,
            db_oid: 5,
            rel_node: 16384 + n,
        },
        fork,
    }
}

/// Distinct keys of several kinds, sorted.
fn random_keys(rng: &mut StdRng, n: usize) -> Vec<Key> {
    let mut keys = BTreeSet::new();
    while keys.len() < n {
        let k = match rng.random_range(0..10) {
            0 => Key::rel_size(rel(rng.random_range(0..20), ForkNumber::Main)),
            1 => Key::slru_page(
                SlruKind::Clog,
                rng.random_range(0..4),
                rng.random_range(0..32),
            ),
            2 => Key::twophase_file(rng.random_range(0..1000)),
            3 => Key::rel_block(
                rel(rng.random_range(0..20), ForkNumber::VisibilityMap),
                rng.random_range(0..10),
            ),
            _ => Key::rel_block(
                rel(rng.random_range(0..20), ForkNumber::Main),
                rng.random_range(0..2000),
            ),
        };
        keys.insert(k);
    }
    keys.into_iter().collect()
}

fn random_image(rng: &mut StdRng) -> Bytes {
    if rng.random_bool(0.2) {
        // A small blob, like a size or a directory listing.
        let n = rng.random_range(0..64);
        return Bytes::from((0..n).map(|_| rng.random()).collect::<Vec<u8>>());
    }
    // A page: mostly compressible, with a random region.
    let mut page = vec![rng.random::<u8>(); 8192];
    let start = rng.random_range(0..8192);
    let end = (start + rng.random_range(0..2000)).min(8192);
    for b in &mut page[start..end] {
        *b = rng.random();
    }
    Bytes::from(page)
}

fn random_delta(rng: &mut StdRng) -> Value {
    let n = rng.random_range(0..8);
    Value::Delta(match rng.random_range(0..4) {
        0 => RustRecord::ClogSetStatus {
            xids: (0..n).map(|_| rng.random()).collect(),
            status: [
                ClogStatus::Committed,
                ClogStatus::Aborted,
                ClogStatus::SubCommitted,
            ][rng.random_range(0..3)],
        },
        1 => RustRecord::VmClearBits {
            heap_blocks: (0..n).map(|_| rng.random()).collect(),
            all_visible: rng.random(),
        },
        2 => RustRecord::MultixactOffset {
            multi: rng.random(),
            offset: rng.random(),
        },
        _ => RustRecord::MultixactMembers {
            first_offset: rng.random(),
            members: (0..n)
                .map(|_| (rng.random(), MultiXactStatus::ForUpdate))
                .collect(),
        },
    })
}

type Model = BTreeMap<(Key, Lsn), Value>;

/// Several versions per key, images and deltas mixed, LSNs in `lsns`.
fn random_model(rng: &mut StdRng, keys: &[Key], lsns: Range<u64>) -> Model {
    let mut model = Model::new();
    for &k in keys {
        let versions = rng.random_range(1..7);
        let mut ls: BTreeSet<u64> = BTreeSet::new();
        while ls.len() < versions {
            ls.insert(rng.random_range(lsns.clone()));
        }
        for (i, l) in ls.into_iter().enumerate() {
            let v = if (i == 0 && rng.random_bool(0.7)) || rng.random_bool(0.2) {
                Value::Image(random_image(rng))
            } else {
                random_delta(rng)
            };
            model.insert((k, Lsn(l)), v);
        }
    }
    model
}

/// What `get_values` must return, from the model.
fn expected_values(model: &Model, key: Key, lsn: Lsn) -> Vec<(Lsn, Value)> {
    let mut out = Vec::new();
    for ((_, l), v) in model.range((key, Lsn(0))..=(key, lsn)).rev() {
        out.push((*l, v.clone()));
        if v.will_init() {
            break;
        }
    }
    out
}

fn write_delta(dir: &Path, model: &Model, kr: KeyRange, lr: Range<Lsn>, block: usize) -> PathBuf {
    let name = LayerName::Delta {
        key_range: kr,
        lsn_range: lr.clone(),
    };
    let path = dir.join(name.to_string());
    let mut w = DeltaLayerWriter::new(&path, kr, lr).unwrap();
    w.set_target_block_size(block);
    for ((k, l), v) in model {
        w.put(*k, *l, v).unwrap();
    }
    let summary = w.finish().unwrap();
    assert_eq!(summary.entry_count, model.len() as u64);
    assert_eq!(summary.file_size, std::fs::metadata(&path).unwrap().len());
    assert!(!dir.join(format!("{name}.tmp")).exists());
    path
}

fn write_image(
    dir: &Path,
    images: &BTreeMap<Key, Bytes>,
    kr: KeyRange,
    lsn: Lsn,
    block: usize,
) -> PathBuf {
    let name = LayerName::Image { key_range: kr, lsn };
    let path = dir.join(name.to_string());
    let mut w = ImageLayerWriter::new(&path, kr, lsn).unwrap();
    w.set_target_block_size(block);
    for (k, v) in images {
        w.put(*k, v.clone()).unwrap();
    }
    w.finish().unwrap();
    path
}

#[test]
fn delta_layer_round_trip_and_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let keys = random_keys(&mut rng, 3000);
    let model = random_model(&mut rng, &keys, 1000..100_000);
    let kr = KeyRange::all();
    let lr = Lsn(1000)..Lsn(100_000);
    for block in [4096, 64 * 1024] {
        let path = write_delta(dir.path(), &model, kr, lr.clone(), block);
        let r = DeltaLayerReader::open(&path).unwrap();
        assert!(r.block_count() > 10, "{} blocks", r.block_count());
        assert_eq!(r.entry_count(), model.len() as u64);
        assert_eq!(r.key_range(), kr);
        assert_eq!(r.lsn_range(), lr);
        // The name round-trips and matches the file.
        let name: LayerName = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(name, r.layer_name());

        // iter() is the model, in order.
        let all: Vec<_> = r.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), model.len());
        for ((k, l, v), ((mk, ml), mv)) in all.iter().zip(&model) {
            assert_eq!((k, l, v), (mk, ml, mv));
        }

        // Lookups at many LSNs, present and absent keys.
        for _ in 0..3000 {
            let key = if rng.random_bool(0.9) {
                keys[rng.random_range(0..keys.len())]
            } else {
                Key::rel_block(rel(99, ForkNumber::Main), rng.random())
            };
            let lsn = Lsn(rng.random_range(0..110_000));
            assert_eq!(
                r.get_values(key, lsn).unwrap(),
                expected_values(&model, key, lsn),
                "{key:?} @ {lsn}"
            );
        }
        // Exactly at each version's LSN, and just below it.
        for (k, l) in model.keys().take(2000) {
            assert_eq!(
                r.get_values(*k, *l).unwrap(),
                expected_values(&model, *k, *l)
            );
            let below = Lsn(l.0 - 1);
            assert_eq!(
                r.get_values(*k, below).unwrap(),
                expected_values(&model, *k, below)
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn delta_layer_key_spanning_many_blocks() {
    // One key with many versions crosses many blocks; lookups walk back
    // across blocks and stop at the newest image.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let hot = Key::rel_block(rel(1, ForkNumber::Main), 0);
    let mut model = Model::new();
    model.insert(
        (Key::rel_block(rel(0, ForkNumber::Main), 0), Lsn(5)),
        Value::Image(random_image(&mut rng)),
    );
    for l in 1..400u64 {
        let v = if l % 97 == 1 {
            Value::Image(random_image(&mut rng))
        } else {
            random_delta(&mut rng)
        };
        model.insert((hot, Lsn(l * 10)), v);
    }
    model.insert(
        (Key::rel_block(rel(2, ForkNumber::Main), 0), Lsn(5)),
        random_delta(&mut rng),
    );
    let kr = KeyRange::new(Key::MIN, Key::db_dir());
    let path = write_delta(dir.path(), &model, kr, Lsn(1)..Lsn(10_000), 512);
    let r = DeltaLayerReader::open(&path).unwrap();
    assert!(r.block_count() > 20);
    for l in (0..4100).step_by(7) {
        let lsn = Lsn(l);
        assert_eq!(
            r.get_values(hot, lsn).unwrap(),
            expected_values(&model, hot, lsn)
        );
    }
    // Outside the layer's key range: nothing.
    assert!(r
        .get_values(Key::checkpoint(), Lsn(9999))
        .unwrap()
        .is_empty());
}

#[test]
fn image_layer_round_trip_and_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(12);
    let keys = random_keys(&mut rng, 5000);
    // Leave out every third key so there are absent keys between present ones.
    let images: BTreeMap<Key, Bytes> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, k)| (*k, random_image(&mut rng)))
        .collect();
    let kr = KeyRange::new(Key::MIN, Key::control_file());
    let lsn = Lsn(0x1_6B5A_5000);
    let path = write_image(dir.path(), &images, kr, lsn, 16 * 1024);
    let r = ImageLayerReader::open(&path).unwrap();
    assert!(r.block_count() > 100);
    assert_eq!(r.lsn(), lsn);
    assert_eq!(r.entry_count(), images.len() as u64);
    let name: LayerName = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(name, r.layer_name());
    for k in &keys {
        assert_eq!(
            r.get(*k).unwrap(),
            images.get(k).cloned().map(Value::Image),
            "{k:?}"
        );
    }
    for k in [
        Key::MIN,
        Key::checkpoint(),
        Key::MAX,
        keys[0].next(),
        keys[keys.len() - 1].next(),
    ] {
        assert_eq!(r.get(k).unwrap(), images.get(&k).cloned().map(Value::Image));
    }
    let all: Vec<(Key, Value)> = r.iter().collect::<Result<_, _>>().unwrap();
    let want: Vec<(Key, Value)> = images
        .into_iter()
        .map(|(k, b)| (k, Value::Image(b)))
        .collect();
    assert_eq!(all, want);
    // A delta reader refuses an image layer, and the reverse.
    let e = DeltaLayerReader::open(&path).err().unwrap();
    assert!(e.to_string().contains("expected a delta layer"), "{e}");
}

#[test]
fn empty_layers() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_delta(
        dir.path(),
        &Model::new(),
        KeyRange::all(),
        Lsn(1)..Lsn(2),
        1024,
    );
    let r = DeltaLayerReader::open(&path).unwrap();
    assert_eq!(r.block_count(), 0);
    assert!(r.get_values(Key::db_dir(), Lsn(1)).unwrap().is_empty());
    assert_eq!(r.iter().count(), 0);
    let path = write_image(dir.path(), &BTreeMap::new(), KeyRange::all(), Lsn(1), 1024);
    let r = ImageLayerReader::open(&path).unwrap();
    assert_eq!(r.get(Key::db_dir()).unwrap(), None);
}

#[test]
fn writer_misuse_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer");
    let kr = KeyRange::new(Key::db_dir(), Key::checkpoint());
    let img = Value::Image(Bytes::from_static(b"x"));
    let mut w = DeltaLayerWriter::new(&path, kr, Lsn(10)..Lsn(20)).unwrap();
    w.put(Key::db_dir(), Lsn(12), &img).unwrap();
    for (k, l, what) in [
        (Key::db_dir(), Lsn(12), "out of order"),
        (Key::db_dir(), Lsn(11), "out of order"),
        (Key::MIN, Lsn(15), "outside the layer's key range"),
        (Key::checkpoint(), Lsn(15), "outside the layer's key range"),
        (
            Key::twophase_dir(),
            Lsn(20),
            "outside the layer's LSN range",
        ),
        (Key::twophase_dir(), Lsn(9), "outside the layer's LSN range"),
    ] {
        let e = w.put(k, l, &img).unwrap_err();
        assert!(matches!(e, LayerError::Misuse { .. }));
        assert!(e.to_string().contains(what), "{e}");
    }
    w.put(Key::db_dir(), Lsn(13), &img).unwrap();
    assert!(dir.path().join("layer.tmp").exists());
    // Dropped unfinished: no file, no temporary file.
    drop(w);
    assert!(!path.exists());
    assert!(!dir.path().join("layer.tmp").exists());

    let mut w = ImageLayerWriter::new(&path, kr, Lsn(10)).unwrap();
    w.put(Key::twophase_dir(), Bytes::new()).unwrap();
    assert!(w.put(Key::twophase_dir(), Bytes::new()).is_err());
    assert!(w.put(Key::db_dir(), Bytes::new()).is_err());
    assert!(ImageLayerWriter::new(&path, kr, Lsn::MAX).is_err());
    assert!(DeltaLayerWriter::new(&path, kr, Lsn(5)..Lsn(5)).is_err());
    assert!(
        DeltaLayerWriter::new(&path, KeyRange::new(Key::MAX, Key::MIN), Lsn(5)..Lsn(6)).is_err()
    );
}

/// A small real delta layer with many blocks, and its bytes.
fn sample_delta(dir: &Path, seed: u64) -> (PathBuf, Model, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = random_keys(&mut rng, 60);
    let model = random_model(&mut rng, &keys, 100..1000);
    let path = write_delta(dir, &model, KeyRange::all(), Lsn(100)..Lsn(1000), 2048);
    let bytes = std::fs::read(&path).unwrap();
    (path, model, bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// (offset, stored length) of each block, from the documented format.
fn blocks_of(file: &[u8]) -> Vec<(usize, usize)> {
    let f = file.len() - FOOTER_SIZE;
    let index_offset = u64_at(file, f) as usize;
    let n = u32_at(file, f + 20) as usize;
    (0..n)
        .map(|i| {
            let e = index_offset + i * INDEX_ENTRY_SIZE;
            (u64_at(file, e + 56) as usize, u32_at(file, e + 64) as usize)
        })
        .collect()
}

/// Recompute the block CRCs in the index, the index CRC and the footer CRC,
/// so that a mutation inside blocks reaches the parsers behind the checksums.
fn reseal(file: &mut [u8]) {
    let f = file.len() - FOOTER_SIZE;
    let index_offset = u64_at(file, f) as usize;
    for (i, (off, len)) in blocks_of(file).into_iter().enumerate() {
        let crc = crc32c::crc32c(&file[off..off + len]);
        let e = index_offset + i * INDEX_ENTRY_SIZE;
        file[e + 76..e + 80].copy_from_slice(&crc.to_le_bytes());
    }
    reseal_index(file);
}

/// Recompute the index CRC and the footer CRC.
fn reseal_index(file: &mut [u8]) {
    let f = file.len() - FOOTER_SIZE;
    let index_offset = u64_at(file, f) as usize;
    let index_len = u64_at(file, f + 8) as usize;
    let crc = crc32c::crc32c(&file[index_offset..index_offset + index_len]);
    file[f + 16..f + 20].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&file[f..f + 28]);
    file[f + 28..f + 32].copy_from_slice(&crc.to_le_bytes());
}

fn open_err(path: &Path) -> String {
    match DeltaLayerReader::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            assert!(e.is_corruption(), "{e}");
            let s = e.to_string();
            assert!(s.contains(&path.display().to_string()), "{s}");
            s
        }
    }
}

#[test]
fn corruption_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model, good) = sample_delta(dir.path(), 21);
    let blocks = blocks_of(&good);
    assert!(blocks.len() > 5);
    let bad_path = dir.path().join("bad");

    // A flipped byte in data block 2: opening succeeds (it reads no data),
    // reading that block fails naming file and block; other blocks still read.
    let mut b = good.clone();
    let (off, len) = blocks[2];
    b[off + len / 2] ^= 0x40;
    std::fs::write(&bad_path, &b).unwrap();
    let r = DeltaLayerReader::open(&bad_path).unwrap();
    let errs: Vec<LayerError> = r.iter().filter_map(Result::err).collect();
    assert_eq!(errs.len(), 1);
    let s = errs[0].to_string();
    assert!(
        matches!(errs[0], LayerError::CorruptBlock { block: 2, .. }),
        "{s}"
    );
    assert!(
        s.contains("data block 2") && s.contains("checksum mismatch") && s.contains("bad"),
        "{s}"
    );
    // Lookups of keys in block 2 fail; every lookup either errs or is right.
    let mut failed = 0;
    for (k, l) in model.keys() {
        match r.get_values(*k, *l) {
            Ok(v) => assert_eq!(v, expected_values(&model, *k, *l)),
            Err(e) => {
                assert!(e.to_string().contains("data block 2"), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0);

    // Header, index, footer: refused at open.
    for (at, what) in [
        (3, "bad magic"),
        (60, "header checksum mismatch"),
        (
            blocks_of(&good).last().map(|(o, l)| o + l + 5).unwrap(),
            "index checksum mismatch",
        ),
        (good.len() - 10, "footer"),
        (good.len() - 3, "footer checksum mismatch"),
    ] {
        let mut b = good.clone();
        b[at] ^= 0x01;
        std::fs::write(&bad_path, &b).unwrap();
        let s = open_err(&bad_path);
        assert!(s.contains(what), "flip at {at}: {s}");
    }

    // Truncated (anywhere) or extended files.
    for len in [
        0,
        10,
        HEADER_SIZE + FOOTER_SIZE - 1,
        good.len() / 2,
        good.len() - 1,
    ] {
        std::fs::write(&bad_path, &good[..len]).unwrap();
        let s = open_err(&bad_path);
        assert!(
            s.contains("truncated") || s.contains("footer"),
            "len {len}: {s}"
        );
    }
    let mut b = good.clone();
    b.extend_from_slice(&good[good.len() - FOOTER_SIZE..]);
    std::fs::write(&bad_path, &b).unwrap();
    assert!(open_err(&bad_path).contains("truncated or overwritten"));

    // A block whose content is damaged behind valid checksums is still caught.
    let mut b = good.clone();
    let (off, _) = blocks[1];
    b[off] ^= 0xFF;
    reseal(&mut b);
    std::fs::write(&bad_path, &b).unwrap();
    let r = DeltaLayerReader::open(&bad_path).unwrap();
    let e = r.iter().find_map(Result::err).expect("damage detected");
    assert!(
        matches!(e, LayerError::CorruptBlock { block: 1, .. }),
        "{e}"
    );

    // The original is intact.
    assert_eq!(
        DeltaLayerReader::open(&path).unwrap().iter().count(),
        model.len()
    );
}

/// An entry count read from disk never sizes an allocation: a block that
/// claims more entries than its bytes can hold is refused at open, even
/// when every checksum and the header's total agree with it.
#[test]
fn impossible_entry_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, _model, good) = sample_delta(dir.path(), 22);
    let bad_path = dir.path().join("bad");
    let f = good.len() - FOOTER_SIZE;
    let index_offset = u64_at(&good, f) as usize;
    let mut b = good.clone();
    let e = index_offset; // block 0
    let old = u32_at(&b, e + 72) as u64;
    b[e + 72..e + 76].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal_index(&mut b);
    // The header's total follows, so only the per-block check can object.
    let total = u64_at(&b, 72) - old + u64::from(u32::MAX);
    b[72..80].copy_from_slice(&total.to_le_bytes());
    let crc = crc32c::crc32c(&b[..HEADER_SIZE - 4]);
    b[HEADER_SIZE - 4..HEADER_SIZE].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&bad_path, &b).unwrap();
    let s = open_err(&bad_path);
    assert!(s.contains("claims 4294967295 entries"), "{s}");
}

/// Open, iterate and look up: never a panic. With `check`, any value returned
/// must be one the model has (corruption must surface as an error); without,
/// checksums were forged and only the absence of panics is checked.
fn exercise(path: &Path, model: &Model, check: bool) {
    if let Ok(r) = DeltaLayerReader::open(path) {
        for item in r.iter() {
            match item {
                Ok((k, l, v)) => {
                    if check {
                        assert_eq!(model.get(&(k, l)), Some(&v), "wrong data for {k:?} @ {l}");
                    }
                }
                Err(_) => break,
            }
        }
        for (k, l) in model.keys().step_by(7) {
            if let Ok(v) = r.get_values(*k, *l) {
                if check {
                    assert_eq!(v, expected_values(model, *k, *l));
                }
            }
        }
    }
    if let Ok(r) = ImageLayerReader::open(path) {
        let _ = r.iter().count();
        let _ = r.get(Key::db_dir());
    }
}

#[test]
fn fuzz_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model, good) = sample_delta(dir.path(), 33);
    let blocks = blocks_of(&good);
    let path = dir.path().join("fuzz");
    let mut rng = StdRng::seed_from_u64(99);
    let started = std::time::Instant::now();
    for i in 0..1500 {
        let mut b = match i % 4 {
            // Random bytes, sometimes behind a valid magic.
            0 => {
                let mut b: Vec<u8> = (0..rng.random_range(0..600))
                    .map(|_| rng.random())
                    .collect();
                if b.len() >= 8 && rng.random_bool(0.5) {
                    b[..8].copy_from_slice(&good[..8]);
                }
                b
            }
            // Random flips anywhere, maybe truncated.
            1 => {
                let mut b = good.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                if rng.random_bool(0.2) {
                    b.truncate(rng.random_range(0..b.len()));
                }
                b
            }
            // Flips inside blocks behind valid checksums.
            _ => {
                let mut b = good.clone();
                let (off, len) = blocks[rng.random_range(0..blocks.len())];
                for _ in 0..rng.random_range(1..6) {
                    let at = off + rng.random_range(0..len);
                    b[at] = rng.random();
                }
                reseal(&mut b);
                b
            }
        };
        if i % 4 == 3 && b.len() > 200 {
            // Damage the index itself behind a valid checksum.
            let f = b.len() - FOOTER_SIZE;
            let io = u64_at(&b, f) as usize;
            let at = io + rng.random_range(0..(f - io).max(1));
            if at < f {
                b[at] = rng.random();
                reseal_index(&mut b);
            }
        }
        std::fs::write(&path, &b).unwrap();
        exercise(&path, &model, i % 4 < 2);
    }
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn compressible_and_incompressible_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let t = rel(3, ForkNumber::Main);
    for compressible in [true, false] {
        let images: BTreeMap<Key, Bytes> = (0..200)
            .map(|b| {
                let page: Vec<u8> = if compressible {
                    vec![b as u8; 8192]
                } else {
                    (0..8192).map(|_| rng.random()).collect()
                };
                (Key::rel_block(t, b), Bytes::from(page))
            })
            .collect();
        let lsn = Lsn(if compressible { 1 } else { 2 });
        let path = write_image(dir.path(), &images, Key::rel_fork_range(t), lsn, 32 * 1024);
        let size = std::fs::metadata(&path).unwrap().len();
        let raw = 200 * 8192;
        if compressible {
            assert!(size < raw / 20, "{size}");
        } else {
            // Stored as they are: only per-entry and per-file overhead.
            assert!(size > raw && size < raw + raw / 50, "{size}");
        }
        let r = ImageLayerReader::open(&path).unwrap();
        for (k, v) in &images {
            assert_eq!(r.get(*k).unwrap(), Some(Value::Image(v.clone())));
        }
    }
}
