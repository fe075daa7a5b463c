//! Untrusted bytes never panic the decoders: random input and mutations of
//! valid WAL records, WAL streams and control files, over fixed seeds (and
//! more with `FUZZ_ITERATIONS=<n>`). A failure names its seed.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use postgres_format::constants::*;
use postgres_format::control_file::{CheckPoint, ControlFile, DbState};
use postgres_format::records::parse_record;
use postgres_format::relfile::{ForkNumber, RelFileNode};
use postgres_format::wal::{DecodedRecord, WalPageHeader, WalStreamDecoder};
use postgres_format::wal_writer::{
    next_record_lsn, record_end, BuiltBlock, RecordBuilder, SegmentWriter,
};
use postgres_format::PgMajorVersion;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use utils::Lsn;

const V15: PgMajorVersion = PgMajorVersion::V15;
const SEGMENT: usize = 1 << 20;

fn iterations(default: u64) -> u64 {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `case` for each seed; report the failing seed.
fn for_seeds(name: &str, default: u64, case: impl Fn(&mut StdRng)) {
    for seed in 0..iterations(default) {
        let result = catch_unwind(AssertUnwindSafe(|| case(&mut StdRng::seed_from_u64(seed))));
        if result.is_err() {
            panic!("{name}: panicked with seed {seed}");
        }
    }
}

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..8) {
        if bytes.is_empty() {
            return;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..4) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes[at] = rng.random(),
            2 => {
                bytes[at] = *[0x00, 0xFF, 0x7F, 0x80, 0x20, 0x10]
                    .get(rng.random_range(0..6))
                    .unwrap_or(&0)
            }
            _ => bytes.truncate(at),
        }
    }
}

fn sample_record(rng: &mut StdRng) -> RecordBuilder {
    let mut page = vec![0u8; BLCKSZ];
    page[12..14].copy_from_slice(&100u16.to_le_bytes());
    page[14..16].copy_from_slice(&3000u16.to_le_bytes());
    page[16..18].copy_from_slice(&8192u16.to_le_bytes());
    page[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes());
    let rel = RelFileNode {
        spc_oid: 1663,
        db_oid: 5,
        rel_node: 16384,
    };
    RecordBuilder {
        rmid: [
            RM_HEAP_ID,
            RM_HEAP2_ID,
            RM_XACT_ID,
            RM_SMGR_ID,
            RM_DBASE_ID,
            RM_XLOG_ID,
            RM_CLOG_ID,
            RM_MULTIXACT_ID,
            RM_RELMAP_ID,
            RM_STANDBY_ID,
        ][rng.random_range(0..10)],
        info: rng.random::<u8>() & 0xF0,
        xid: rng.random(),
        blocks: (0..rng.random_range(0..3u8))
            .map(|id| BuiltBlock {
                id,
                rel,
                fork: ForkNumber::Main,
                block: id as u32,
                will_init: false,
                image: rng.random_bool(0.5).then(|| (page.clone(), true)),
                data: vec![1; rng.random_range(0..40)],
            })
            .collect(),
        main_data: (0..rng.random_range(0..120))
            .map(|_| rng.random())
            .collect(),
        compress_images: rng.random_bool(0.5),
    }
}

/// Decode a record and everything in it; errors are fine, panics are not.
fn exercise_record(lsn: Lsn, bytes: Vec<u8>) {
    if let Ok(record) = DecodedRecord::decode(lsn, Bytes::from(bytes)) {
        let _ = parse_record(&record);
        for block in &record.blocks {
            if let Some(image) = &block.image {
                let _ = image.restore();
            }
        }
    }
}

#[test]
fn record_decoder_survives_mutations() {
    for_seeds("record decoder", 3000, |rng| {
        let mut bytes = sample_record(rng).encode(Lsn(0x1000));
        mutate(rng, &mut bytes);
        // Keep the length field consistent half of the time, so the body is parsed.
        if rng.random_bool(0.5) && bytes.len() >= 4 {
            let len = bytes.len() as u32;
            bytes[..4].copy_from_slice(&len.to_le_bytes());
        }
        exercise_record(Lsn(0x2000), bytes);
    });
}

#[test]
fn record_decoder_survives_random_bytes() {
    for_seeds("random records", 3000, |rng| {
        let len = rng.random_range(0..400);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if bytes.len() >= 24 {
            let len = bytes.len() as u32;
            bytes[..4].copy_from_slice(&len.to_le_bytes());
            bytes[17] = rng.random_range(0..22);
        }
        exercise_record(Lsn(0x2000), bytes);
    });
}

fn valid_stream(rng: &mut StdRng) -> (Lsn, Vec<u8>) {
    let start = Lsn(SEGMENT as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let mut writer = SegmentWriter::new(V15, SEGMENT, 1, 1);
    let (mut lsn, mut prev) = (start, Lsn(0));
    for _ in 0..rng.random_range(1..40) {
        let bytes = sample_record(rng).encode(prev);
        writer.write_record(lsn, &bytes);
        prev = lsn;
        lsn = next_record_lsn(record_end(lsn, bytes.len(), SEGMENT), SEGMENT);
    }
    let mut stream: Vec<u8> = writer
        .into_files()
        .into_iter()
        .flat_map(|(_, b)| b)
        .collect();
    stream.truncate((lsn.0 - SEGMENT as u64) as usize + 64);
    (Lsn(SEGMENT as u64), stream)
}

fn exercise_stream(start: Lsn, stream: &[u8], rng: &mut StdRng) {
    let Ok(mut decoder) = WalStreamDecoder::new(start, V15, SEGMENT) else {
        return;
    };
    let mut offset = 0;
    while offset < stream.len() {
        let n = rng.random_range(1..4096).min(stream.len() - offset);
        decoder.feed_bytes(&stream[offset..offset + n]);
        offset += n;
        loop {
            match decoder.poll_decode() {
                Ok(Some(record)) => exercise_record(record.start_lsn, record.bytes.to_vec()),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[test]
fn stream_decoder_survives_mutations() {
    for_seeds("stream decoder", 300, |rng| {
        let (start, mut stream) = valid_stream(rng);
        // Aim some mutations at page headers and record headers.
        for _ in 0..rng.random_range(1..4) {
            let page = rng.random_range(0..stream.len().div_ceil(XLOG_BLCKSZ));
            let at = page * XLOG_BLCKSZ + rng.random_range(0..48);
            if at < stream.len() {
                stream[at] = rng.random();
            }
        }
        mutate(rng, &mut stream);
        exercise_stream(start, &stream, rng);
    });
}

#[test]
fn stream_decoder_survives_random_bytes() {
    for_seeds("random stream", 300, |rng| {
        let mut stream: Vec<u8> = (0..rng.random_range(0..40000))
            .map(|_| rng.random())
            .collect();
        // A valid-looking first page header makes the decoder go further.
        if rng.random_bool(0.7) && stream.len() >= 40 {
            let header = WalPageHeader {
                magic: 0xD110,
                info: 0x0002 | (rng.random::<u16>() & 0x1),
                timeline: 1,
                page_address: Lsn(SEGMENT as u64),
                remaining_length: rng.random_range(0..20000),
                long: Some((1, SEGMENT as u32, 8192)),
            };
            stream[..40].copy_from_slice(&header.encode());
        }
        exercise_stream(Lsn(SEGMENT as u64), &stream, rng);
    });
}

fn sample_control() -> ControlFile {
    ControlFile {
        system_identifier: 7,
        pg_control_version: 1300,
        catalog_version_no: CATALOG_VERSION_NO_V15,
        state: DbState::Shutdowned,
        time: 0,
        checkpoint: Lsn(0x100_0028),
        checkpoint_copy: CheckPoint {
            redo: Lsn(0x100_0028),
            this_timeline: 1,
            prev_timeline: 1,
            full_page_writes: true,
            next_xid: 735,
            next_oid: 16384,
            next_multi: 1,
            next_multi_offset: 0,
            oldest_xid: 716,
            oldest_xid_db: 1,
            oldest_multi: 1,
            oldest_multi_db: 1,
            time: 0,
            oldest_commit_ts_xid: 0,
            newest_commit_ts_xid: 0,
            oldest_active_xid: 0,
        },
        unlogged_lsn: Lsn(1000),
        min_recovery_point: Lsn(0),
        min_recovery_point_timeline: 0,
        backup_start_point: Lsn(0),
        backup_end_point: Lsn(0),
        backup_end_required: false,
        wal_level: 1,
        wal_log_hints: false,
        max_connections: 100,
        max_worker_processes: 8,
        max_wal_senders: 10,
        max_prepared_xacts: 0,
        max_locks_per_xact: 64,
        track_commit_timestamp: false,
        max_align: 8,
        float_format: 1234567.0,
        blcksz: 8192,
        relseg_size: RELSEG_SIZE,
        xlog_blcksz: 8192,
        xlog_seg_size: 16 << 20,
        name_data_len: 64,
        index_max_keys: 32,
        toast_max_chunk_size: 1996,
        loblksize: 2048,
        float8_by_val: true,
        data_checksum_version: 0,
        mock_authentication_nonce: [3; 32],
    }
}

#[test]
fn control_file_round_trips_and_survives_mutations() {
    let control = sample_control();
    let bytes = control.encode();
    assert_eq!(bytes.len(), 8192);
    assert_eq!(ControlFile::decode(&bytes, V15).unwrap(), control);
    for_seeds("control file", 3000, |rng| {
        let mut bytes = control.encode();
        mutate(rng, &mut bytes);
        // Recompute the CRC (at offset 288) half of the time, so fields get parsed.
        if rng.random_bool(0.5) && bytes.len() >= 292 {
            let crc = crc32c::crc32c(&bytes[..288]);
            bytes[288..292].copy_from_slice(&crc.to_le_bytes());
        }
        if let Ok(decoded) = ControlFile::decode(&bytes, V15) {
            // Whatever decodes, encodes back to the same struct.
            assert_eq!(
                ControlFile::decode(&decoded.encode(), V15).unwrap(),
                decoded
            );
        }
        let _ = CheckPoint::decode(&bytes[..bytes.len().min(88)]);
    });
}
