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
        assert_eq!(
            wal.flush_lsn(),
            last.checked_align_up(8).unwrap().min(written).max(last)
        );
    }
    assert_eq!(wal.flush_lsn(), *ends.last().unwrap());
    assert!(ends.last().unwrap().segment_number(SEG as u64) > start.segment_number(SEG as u64));

    // A restart finds the same end from any earlier record boundary.
    let reopened = PhysicalWal::open(&dir, SEG, V15, ends[10]).unwrap();
    assert_eq!(
        reopened.flush_lsn(),
        ends.last().unwrap().checked_align_up(8).unwrap()
    );

    // Truncation: later WAL is gone, and stays gone after a restart.
    wal.truncate(ends[100]).unwrap();
    assert_eq!((wal.write_lsn(), wal.flush_lsn()), (ends[100], ends[100]));
    let reopened = PhysicalWal::open(&dir, SEG, V15, ends[10]).unwrap();
    assert_eq!(reopened.flush_lsn(), ends[100].checked_align_up(8).unwrap());
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

/// A failed fsync stops the storage: nothing more is acknowledged, not even
/// after a later fsync that would succeed (the kernel may have dropped the
/// pages it failed to write), and a restart finds the end of WAL on disk.
#[test]
fn failed_fsync_stops_acknowledging_until_a_restart() {
    use safekeeper::wal_storage::WalFault;
    let mut rng = StdRng::seed_from_u64(6);
    let start = Lsn(SEG as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let (bytes, ends) = make_wal(&mut rng, start, 60);
    let dir = tempdir("fsync");
    let mut wal = PhysicalWal::open(&dir, SEG, V15, Lsn::INVALID).unwrap();
    wal.truncate(start).unwrap();
    let first = (ends[19] - start) as usize;
    wal.write(start, &bytes[..first]).unwrap();
    wal.flush().unwrap();
    assert_eq!(wal.flush_lsn(), ends[19]);

    let second = (ends[39] - start) as usize;
    wal.write(ends[19], &bytes[first..second]).unwrap();
    wal.inject_fault(WalFault::Fsync);
    let err = wal.flush().unwrap_err();
    assert!(
        format!("{err:#}").contains("fsyncing WAL segment"),
        "{err:#}"
    );
    assert_eq!(wal.flush_lsn(), ends[19], "nothing more is acknowledged");
    // No fault is injected any more, yet the storage refuses to go on.
    let err = wal.flush().unwrap_err();
    assert!(err.to_string().contains("restart the safekeeper"), "{err}");
    assert_eq!(wal.flush_lsn(), ends[19]);
    let err = wal.write(ends[39], &bytes[second..]).unwrap_err();
    assert!(err.to_string().contains("restart the safekeeper"), "{err}");
    assert!(wal.truncate(ends[19]).is_err());
    assert!(wal.failure().is_some());

    // A restart recovers from what is on disk and goes on.
    let mut wal = PhysicalWal::open(&dir, SEG, V15, ends[0]).unwrap();
    assert_eq!(wal.flush_lsn(), ends[39].checked_align_up(8).unwrap());
    let resume = wal.write_lsn();
    let at = (resume - start) as usize;
    wal.write(resume, &bytes[at..]).unwrap();
    wal.flush().unwrap();
    assert_eq!(wal.flush_lsn(), *ends.last().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failed write stops the storage too (PostgreSQL PANICs on it).
#[test]
fn failed_write_stops_acknowledging() {
    use safekeeper::wal_storage::WalFault;
    let mut rng = StdRng::seed_from_u64(7);
    let start = Lsn(SEG as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let (bytes, ends) = make_wal(&mut rng, start, 20);
    let dir = tempdir("write-fail");
    let mut wal = PhysicalWal::open(&dir, SEG, V15, Lsn::INVALID).unwrap();
    wal.truncate(start).unwrap();
    let first = (ends[9] - start) as usize;
    wal.write(start, &bytes[..first]).unwrap();
    wal.flush().unwrap();
    wal.inject_fault(WalFault::Write);
    assert!(wal.write(ends[9], &bytes[first..]).is_err());
    assert!(wal.write(ends[9], &bytes[first..]).is_err());
    assert!(wal.flush().is_err());
    assert_eq!(wal.flush_lsn(), ends[9]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A full disk refuses an append whole, before the decoder has seen it:
/// the same append succeeds once space returns, and the WAL decodes as
/// one log (the decoder never runs ahead of the disk).
#[test]
fn full_disk_refuses_an_append_whole_and_it_can_be_retried() {
    use safekeeper::wal_storage::WalFault;
    let mut rng = StdRng::seed_from_u64(8);
    let start = Lsn(SEG as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let (bytes, ends) = make_wal(&mut rng, start, 400);
    let dir = tempdir("enospc");
    let mut wal = PhysicalWal::open(&dir, SEG, V15, Lsn::INVALID).unwrap();
    wal.truncate(start).unwrap();
    // Up to the last record that ends in the first segment.
    let seg_end = Lsn((start.segment_number(SEG as u64) + 1) * SEG as u64);
    let i = ends.iter().rposition(|&e| e < seg_end).unwrap();
    let split = (ends[i] - start) as usize;
    wal.write(start, &bytes[..split]).unwrap();
    wal.flush().unwrap();

    // The next append crosses into a new segment: the disk is full.
    wal.inject_fault(WalFault::DiskFull);
    let err = wal.write(ends[i], &bytes[split..]).unwrap_err();
    assert!(format!("{err:#}").contains("No space left"), "{err:#}");
    assert_eq!(wal.write_lsn(), ends[i], "nothing was written");
    assert_eq!(wal.flush_lsn(), ends[i]);
    assert!(wal.failure().is_none(), "a full disk is not a failed write");
    wal.flush().unwrap();
    assert_eq!(wal.flush_lsn(), ends[i]);

    // Space returned: the same append goes through and decodes.
    wal.write(ends[i], &bytes[split..]).unwrap();
    wal.flush().unwrap();
    assert_eq!(wal.flush_lsn(), *ends.last().unwrap());
    let reopened = PhysicalWal::open(&dir, SEG, V15, ends[0]).unwrap();
    assert_eq!(
        reopened.flush_lsn(),
        ends.last().unwrap().checked_align_up(8).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Segments are allocated on disk when created, not sparse: a full disk
/// shows when a segment is created, never in the middle of a write.
#[test]
fn segments_are_allocated_when_created() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir("allocated");
    let mut wal = PhysicalWal::open(&dir, SEG, V15, Lsn::INVALID).unwrap();
    let start = Lsn(SEG as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    wal.truncate(start).unwrap();
    let segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let md = std::fs::metadata(&segments[0]).unwrap();
    assert_eq!(md.len(), SEG as u64);
    assert!(
        md.blocks() * 512 >= SEG as u64,
        "{} bytes allocated of {SEG}",
        md.blocks() * 512
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
