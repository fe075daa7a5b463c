//! WAL written by `wal_writer` decodes back to the same records, whatever
//! the chunking, across page and segment boundaries.

use bytes::Bytes;
use postgres_format::constants::*;
use postgres_format::relfile::{ForkNumber, RelFileNode};
use postgres_format::wal::{DecodedRecord, WalDecodeError, WalStreamDecoder};
use postgres_format::wal_writer::{
    next_record_lsn, record_end, BuiltBlock, RecordBuilder, SegmentWriter,
};
use postgres_format::PgMajorVersion;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use utils::Lsn;

const SEGMENT: usize = 1 << 20; // the smallest segment size PostgreSQL allows
const V15: PgMajorVersion = PgMajorVersion::V15;

fn page(fill: u8) -> Vec<u8> {
    let mut page = vec![fill; BLCKSZ];
    page[..24].fill(0);
    page[12..14].copy_from_slice(&64u16.to_le_bytes());
    page[14..16].copy_from_slice(&4000u16.to_le_bytes());
    page[16..18].copy_from_slice(&8192u16.to_le_bytes());
    page[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes());
    page[64..4000].fill(0);
    page
}

fn random_record(rng: &mut StdRng) -> RecordBuilder {
    let rel = RelFileNode {
        spc_oid: 1663,
        db_oid: 5,
        rel_node: rng.random_range(16384..16400),
    };
    let nblocks = rng.random_range(0..4u8);
    let blocks = (0..nblocks)
        .map(|i| BuiltBlock {
            id: i * 2,
            rel,
            fork: if i == 2 {
                ForkNumber::VisibilityMap
            } else {
                ForkNumber::Main
            },
            block: rng.random_range(0..1000),
            will_init: rng.random_bool(0.2),
            image: rng
                .random_bool(0.5)
                .then(|| (page(rng.random()), rng.random_bool(0.5))),
            data: (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect(),
        })
        .collect();
    let main_len = if rng.random_bool(0.1) {
        rng.random_range(256..20000)
    } else {
        rng.random_range(0..100)
    };
    RecordBuilder {
        rmid: RM_HEAP_ID,
        info: 0,
        xid: rng.random(),
        blocks,
        main_data: (0..main_len).map(|_| rng.random()).collect(),
        compress_images: rng.random_bool(0.5),
    }
}

/// A record as written: start, end and bytes.
type Written = (Lsn, Lsn, Vec<u8>);

/// Write `count` records from `start`; returns the WAL from `start`, `start`
/// and each record as written.
fn write_wal(rng: &mut StdRng, start: Lsn, count: usize) -> (Vec<u8>, Lsn, Vec<Written>) {
    let mut writer = SegmentWriter::new(V15, SEGMENT, 42, 1);
    let mut lsn = start;
    let mut prev = Lsn(0);
    let mut written = Vec::new();
    for _ in 0..count {
        let bytes = random_record(rng).encode(prev);
        writer.write_record(lsn, &bytes);
        let end = record_end(lsn, bytes.len(), SEGMENT);
        written.push((lsn, end, bytes));
        prev = lsn;
        lsn = next_record_lsn(end, SEGMENT);
    }
    let files = writer.into_files();
    let first_segment = start.segment_number(SEGMENT as u64);
    let mut stream = Vec::new();
    for (_, contents) in &files {
        assert_eq!(contents.len(), SEGMENT);
        stream.extend_from_slice(contents);
    }
    let stream_start = Lsn(first_segment * SEGMENT as u64);
    (
        stream[(start - stream_start) as usize..].to_vec(),
        start,
        written,
    )
}

fn decode_all(
    stream: &[u8],
    start: Lsn,
    rng: &mut StdRng,
) -> (Vec<(Lsn, Lsn, Bytes)>, WalDecodeError) {
    let mut decoder = WalStreamDecoder::new(start, V15, SEGMENT).unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        if offset < stream.len() {
            let n = rng.random_range(1..20000).min(stream.len() - offset);
            decoder.feed_bytes(&stream[offset..offset + n]);
            offset += n;
        }
        loop {
            match decoder.poll_decode() {
                Ok(Some(r)) => out.push((r.start_lsn, r.end_lsn, r.bytes)),
                Ok(None) => break,
                Err(e) => return (out, e),
            }
        }
        assert!(
            offset < stream.len(),
            "decoder wants more bytes after the end of the stream"
        );
    }
}

#[test]
fn records_round_trip_with_random_chunking() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Lsn(SEGMENT as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
        let (stream, start, written) = write_wal(&mut rng, start, 700);
        let (decoded, end) = decode_all(&stream, start, &mut rng);
        assert!(end.is_end_of_wal(), "seed {seed}: {end}");
        assert_eq!(decoded.len(), written.len(), "seed {seed}");
        for ((start, end, bytes), (dstart, dend, dbytes)) in written.iter().zip(&decoded) {
            assert_eq!((start, end), (dstart, dend), "seed {seed}");
            assert_eq!(&bytes[..], &dbytes[..], "seed {seed}");
            let record = DecodedRecord::decode(*dstart, dbytes.clone()).unwrap();
            for block in &record.blocks {
                if let Some(image) = &block.image {
                    let page = image.restore().unwrap();
                    assert_eq!(page.len(), BLCKSZ);
                }
            }
        }
        // The records span pages and segments.
        assert!(
            written.last().unwrap().1.segment_number(SEGMENT as u64)
                > start.segment_number(SEGMENT as u64)
        );
    }
}

#[test]
fn block_references_and_images_decode_exactly() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let builder = random_record(&mut rng);
        let bytes = builder.encode(Lsn(0x1000));
        let record = DecodedRecord::decode(Lsn(0x2000), Bytes::from(bytes)).unwrap();
        assert_eq!(record.header.prev, Lsn(0x1000));
        assert_eq!(record.blocks.len(), builder.blocks.len());
        assert_eq!(&record.main_data[..], &builder.main_data[..]);
        for (built, decoded) in builder.blocks.iter().zip(&record.blocks) {
            assert_eq!(
                (built.id, built.rel, built.fork, built.block),
                (decoded.id, decoded.rel, decoded.fork, decoded.block)
            );
            assert_eq!(built.will_init, decoded.will_init());
            assert_eq!(&built.data[..], decoded.data.as_deref().unwrap_or(&[]));
            match (&built.image, &decoded.image) {
                (Some((page, apply)), Some(image)) => {
                    assert_eq!(*apply, image.apply());
                    assert_eq!(&image.restore().unwrap(), page);
                }
                (None, None) => {}
                other => panic!("image mismatch: {other:?}"),
            }
        }
    }
}

#[test]
fn corruption_is_detected() {
    let mut rng = StdRng::seed_from_u64(11);
    let start = Lsn(SEGMENT as u64 + SIZE_OF_XLOG_LONG_PHD as u64);
    let (stream, start, written) = write_wal(&mut rng, start, 20);
    // Flip a byte inside the 5th record's body: its CRC no longer matches.
    let (victim, _, _) = written[5];
    let mut bad = stream.clone();
    bad[(victim - start) as usize + 30] ^= 0xFF;
    let (decoded, err) = decode_all(&bad, start, &mut rng);
    assert_eq!(decoded.len(), 5);
    assert!(
        matches!(err, WalDecodeError::BadChecksum { lsn, .. } if lsn == victim),
        "{err}"
    );
    assert!(!err.is_end_of_wal());

    // A wrong page address (a recycled segment) ends the WAL.
    let mut recycled = stream.clone();
    let second_page = (start.0 / 8192 + 1) * 8192;
    let offset = (second_page - start.0) as usize;
    recycled[offset + 8] ^= 0x01;
    let (_, err) = decode_all(&recycled, start, &mut rng);
    assert!(err.is_end_of_wal(), "{err}");

    // A broken prev-link is an error.
    let mut decoder = WalStreamDecoder::new(start, V15, SEGMENT).unwrap();
    decoder.set_prev_record(Lsn(0x1234));
    decoder.feed_bytes(&stream);
    assert!(matches!(
        decoder.poll_decode(),
        Err(WalDecodeError::WrongPrevLink { .. })
    ));
    // The decoder stays failed.
    assert!(decoder.poll_decode().is_err());
}

#[test]
fn starting_mid_page_or_on_continuation() {
    assert!(WalStreamDecoder::new(Lsn(0x100_0010), V15, SEGMENT).is_err());
    assert!(WalStreamDecoder::new(Lsn(0x100_0027), V15, SEGMENT).is_err());
    assert!(WalStreamDecoder::new(Lsn(0x100_0028), V15, SEGMENT).is_ok());
    assert!(WalStreamDecoder::new(Lsn(0x100_0029), V15, SEGMENT).is_ok());

    // Starting at a page boundary inside a record skips to the next record.
    let mut rng = StdRng::seed_from_u64(3);
    let seg_start = Lsn(SEGMENT as u64);
    let (stream, start, written) =
        write_wal(&mut rng, seg_start + SIZE_OF_XLOG_LONG_PHD as u64, 100);
    let crossing = written
        .iter()
        .position(|(s, e, _)| s.0 / 8192 != (e.0 - 1) / 8192 && s.0 / 8192 > start.0 / 8192)
        .expect("a record crosses a page");
    let page = Lsn((written[crossing].1 .0 - 1) / 8192 * 8192);
    let mut decoder = WalStreamDecoder::new(page, V15, SEGMENT).unwrap();
    decoder.feed_bytes(&stream[(page - start) as usize..]);
    let first = decoder.poll_decode().unwrap().unwrap();
    let expected = written.iter().find(|(s, _, _)| *s > page).unwrap();
    assert_eq!(first.start_lsn, expected.0);

    // Starting at the (unaligned) end of a record yields the next record.
    let (prev_end, next) = (written[10].1, &written[11]);
    let mut decoder = WalStreamDecoder::new(prev_end, V15, SEGMENT).unwrap();
    decoder.feed_bytes(&stream[(prev_end - start) as usize..]);
    let record = decoder.poll_decode().unwrap().unwrap();
    assert_eq!((record.start_lsn, record.end_lsn), (next.0, next.1));
}
