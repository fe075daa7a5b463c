//! WAL storage: flush LSN at record boundaries, end of WAL found again
//! after a restart, truncation that leaves nothing behind, corrupt WAL refused.

use postgres_format::constants::{RM_HEAP_ID, SIZE_OF_XLOG_LONG_PHD};
use postgres_format::wal_writer::{next_record_lsn, record_end, RecordBuilder, SegmentWriter};
use postgres_format::PgMajorVersion;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safekeeper::acceptor::WalStore;
use safekeeper::wal_storage::PhysicalWal;
use utils::Lsn;

const SEG: usize = 1 << 20;
const V15: PgMajorVersion = PgMajorVersion::V15;

/// WAL bytes from `start` holding records; returns (bytes, record ends).
fn make_wal(rng: &mut StdRng, start: Lsn, count: usize) -> (Vec<u8>, Vec<Lsn>) {
    let mut writer = SegmentWriter::new(V15, SEG, 1, 1);
    let (mut lsn, mut prev) = (start, Lsn(0));
    let mut ends = Vec::new();
    for _ in 0..count {
        let len = rng.random_range(10..6000);
        let record = RecordBuilder {
            rmid: RM_HEAP_ID,
            main_data: (0..len).map(|_| rng.random()).collect(),
            ..Default::default()
        }
        .encode(prev);
        writer.write_record(lsn, &record);
        let end = record_end(lsn, record.len(), SEG);
        ends.push(end);
        prev = lsn;
        lsn = next_record_lsn(end, SEG);
    }
    let segs: Vec<u8> = writer
        .into_files()
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    let base = start.0 / SEG as u64 * SEG as u64;
    let last = *ends.last().unwrap();
    (
        segs[(start.0 - base) as usize..(last.0 - base) as usize].to_vec(),
        ends,
    )
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sk-wal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn flush_lsn_follows_complete_records() {
    let mut rng = StdRng::seed_from_u64(1);
    let start = Lsn(SEG as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let (bytes, ends) = make_wal(&mut rng, start, 400);
    let dir = tempdir("flush");
    let mut wal = PhysicalWal::open(&dir, SEG, V15, Lsn::INVALID).unwrap();
    assert_eq!(wal.flush_lsn(), Lsn::INVALID);
    wal.truncate(start).unwrap();
    let mut pos = 0;
    while pos < bytes.len() {
        let n = rng.random_range(1..30000).min(bytes.len() - pos);
        wal.write(start + pos as u64, &bytes[pos..pos + n]).unwrap();
        pos += n;
        wal.flush().unwrap();
        let written = start + pos as u64;
        let last = ends
            .iter()
            .copied()
            .filter(|&e| e <= written)
            .max()
            .unwrap_or(start);
        // The record's end, MAXALIGNed once the padding arrived.
        assert_eq!(wal.flush_lsn(), last.align_up(8).min(written).max(last));
    }
    assert_eq!(wal.flush_lsn(), *ends.last().unwrap());
    assert!(ends.last().unwrap().segment_number(SEG as u64) > start.segment_number(SEG as u64));

    // A restart finds the same end from any earlier record boundary.
    let reopened = PhysicalWal::open(&dir, SEG, V15, ends[10]).unwrap();
    assert_eq!(reopened.flush_lsn(), ends.last().unwrap().align_up(8));

    // Truncation: later WAL is gone, and stays gone after a restart.
    wal.truncate(ends[100]).unwrap();
    assert_eq!((wal.write_lsn(), wal.flush_lsn()), (ends[100], ends[100]));
    let reopened = PhysicalWal::open(&dir, SEG, V15, ends[10]).unwrap();
    assert_eq!(reopened.flush_lsn(), ends[100].align_up(8));
    let mut buf = vec![0u8; 64];
    wal.read(ends[100], &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_wal_is_refused() {
    let mut rng = StdRng::seed_from_u64(2);
    let start = Lsn(SEG as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let (mut bytes, ends) = make_wal(&mut rng, start, 5);
    let dir = tempdir("corrupt");
    let mut wal = PhysicalWal::open(&dir, SEG, V15, Lsn::INVALID).unwrap();
    wal.truncate(start).unwrap();
    let at = (ends[2] - start) as usize + 40;
    bytes[at] ^= 0xff;
    let err = wal.write(start, &bytes).unwrap_err();
    assert!(err.to_string().contains("refusing WAL"), "{err}");
    assert_eq!(wal.flush_lsn(), start);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn switch_record_counts_only_once_its_padding_is_written() {
    use postgres_format::constants::{RM_XLOG_ID, XLOG_SWITCH};
    let mut rng = StdRng::seed_from_u64(5);
    let start = Lsn(SEG as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let (bytes, ends) = make_wal(&mut rng, start, 3);
    // An XLOG_SWITCH record after them; the rest of the segment is padding.
    let switch_at = next_record_lsn(*ends.last().unwrap(), SEG);
    let last_start = next_record_lsn(ends[ends.len() - 2], SEG);
    let switch = RecordBuilder {
        rmid: RM_XLOG_ID,
        info: XLOG_SWITCH,
        ..Default::default()
    }
    .encode(last_start);
    let mut writer = SegmentWriter::new(V15, SEG, 1, 1);
    writer.write_record(switch_at, &switch);
    let segment: Vec<u8> = writer
        .into_files()
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    let segment_end = Lsn(2 * SEG as u64);
    let mut stream = bytes.clone();
    let tail_from = (switch_at.0 - SEG as u64) as usize;
    stream.resize((switch_at - start) as usize, 0);
    stream.extend_from_slice(&segment[tail_from..]);
    assert_eq!(start + stream.len() as u64, segment_end);

    let dir = tempdir("switch");
    let mut wal = PhysicalWal::open(&dir, SEG, V15, Lsn::INVALID).unwrap();
    wal.truncate(start).unwrap();
    let mut pos = 0;
    while pos < stream.len() {
        let n = rng.random_range(1..200_000).min(stream.len() - pos);
        wal.write(start + pos as u64, &stream[pos..pos + n])
            .unwrap();
        pos += n;
        wal.flush().unwrap();
        assert!(
            wal.flush_lsn() <= wal.write_lsn(),
            "flush {} beyond the bytes written {}",
            wal.flush_lsn(),
            wal.write_lsn()
        );
    }
    assert_eq!(wal.flush_lsn(), segment_end);
    std::fs::remove_dir_all(&dir).unwrap();
}
