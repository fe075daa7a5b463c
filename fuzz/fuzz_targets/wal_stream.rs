//! The streaming WAL decoder (`postgres_format::wal::WalStreamDecoder`),
//! as the safekeeper and the pageserver run it on WAL from the network.
//!
//! Input: `[segment size exponent] [chunking seed] [start LSN, u64 LE]`,
//! then WAL bytes from that LSN. The bytes are decoded twice, in one piece
//! and in chunks, which must give the same records and the same end; each
//! record is then decoded as the pageserver would (block references,
//! images, rmgr-specific main data).

#![no_main]

use libfuzzer_sys::fuzz_target;
use postgres_format::constants::SIZE_OF_XLOG_RECORD;
use postgres_format::records::parse_record;
use postgres_format::wal::{DecodedRecord, RawRecord, WalDecodeError, WalStreamDecoder};
use postgres_format::PgMajorVersion;
use utils::Lsn;

/// What decoding gave: the records, and the error it stopped at.
type Outcome = (Vec<RawRecord>, Option<WalDecodeError>);

fn decode(start: Lsn, segment_size: usize, chunks: &[&[u8]]) -> Outcome {
    let Ok(mut decoder) = WalStreamDecoder::new(start, PgMajorVersion::V15, segment_size) else {
        return (Vec::new(), None);
    };
    let mut records = Vec::new();
    let mut position = decoder.position();
    for chunk in chunks {
        decoder.feed_bytes(chunk);
        loop {
            match decoder.poll_decode() {
                Ok(Some(record)) => {
                    check_record(&record, records.last());
                    records.push(record);
                }
                Ok(None) => break,
                Err(e) => {
                    // A failed decoder stays failed, with the same error.
                    assert_eq!(decoder.poll_decode(), Err(e.clone()));
                    return (records, Some(e));
                }
            }
            assert!(decoder.position() >= position, "position went back");
            position = decoder.position();
        }
    }
    (records, None)
}

fn check_record(record: &RawRecord, previous: Option<&RawRecord>) {
    assert!(record.bytes.len() >= SIZE_OF_XLOG_RECORD);
    let total = u32::from_le_bytes(record.bytes[..4].try_into().expect("4 bytes"));
    assert_eq!(total as usize, record.bytes.len());
    assert!(record.start_lsn < record.end_lsn);
    if let Some(previous) = previous {
        assert!(previous.end_lsn <= record.start_lsn, "records overlap");
    }
    let _ = (record.rmid(), record.info());
}

/// WAL that runs past the greatest LSN is refused, but the LSN the error
/// names is where the decoder stood when it noticed, which depends on how
/// the bytes arrived: compare it without that LSN.
fn normalize((records, error): Outcome) -> Outcome {
    let error = error.map(|e| match e {
        WalDecodeError::LsnOverflow { .. } => WalDecodeError::LsnOverflow { lsn: Lsn(0) },
        other => other,
    });
    (records, error)
}

/// Decode a record's body as the pageserver's ingest does.
fn ingest(record: &RawRecord) {
    let Ok(decoded) = DecodedRecord::decode(record.start_lsn, record.bytes.clone()) else {
        return;
    };
    let _ = parse_record(&decoded);
    for block in &decoded.blocks {
        if let Some(image) = &block.image {
            if let Ok(page) = image.restore() {
                assert_eq!(page.len(), postgres_format::constants::BLCKSZ);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    // 1 MiB to 1 GiB, the sizes PostgreSQL allows.
    let segment_size = 1usize << (20 + data[0] % 11);
    let mut seed = u32::from(data[1]) | 1;
    let start = Lsn(u64::from_le_bytes(data[2..10].try_into().expect("8 bytes")));
    let wal = &data[10..];

    let whole = decode(start, segment_size, &[wal]);
    // At least one chunk, so that the decoder is polled as often as above.
    let mut chunks = vec![&wal[..0]];
    let mut rest = wal;
    while !rest.is_empty() {
        // xorshift: chunks of 1 to 9000 bytes.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (1 + seed as usize % 9000).min(rest.len());
        chunks.push(&rest[..n]);
        rest = &rest[n..];
    }
    let chunked = decode(start, segment_size, &chunks);
    assert_eq!(
        normalize(whole.clone()),
        normalize(chunked),
        "chunking changed what was decoded"
    );

    for record in &whole.0 {
        ingest(record);
    }
});
