//! Write-ahead log: pages, records and their decoding.
//!
//! WAL is a stream of records, each MAXALIGNed, written into 8 KiB pages
//! that each begin with a page header; the first page of every segment has
//! the long header. A record may cross page and segment boundaries: the
//! page that continues it says so (`XLP_FIRST_IS_CONTRECORD`) and how many
//! bytes of it remain (`xlp_rem_len`).
//!
//! [`WalStreamDecoder`] takes WAL bytes in arbitrary chunks, checks page
//! headers and record CRCs, and yields whole records with their start and
//! end LSN. [`DecodedRecord::decode`] splits a record into its block
//! references, images and main data.

mod decoder;
mod page_header;
mod record;
mod segment_reader;

pub use decoder::{RawRecord, WalDecodeError, WalStreamDecoder};
pub use page_header::{PageHeaderError, WalPageHeader};
pub use record::{BlockImage, BlockReference, DecodedRecord, RecordDecodeError, RecordHeader};
pub use segment_reader::{read_wal_directory, WalDirectoryEnd};

use crate::constants::XLOG_RECORD_CRC_OFFSET;

/// CRC-32C of a record as PostgreSQL computes it: the body after the
/// header, then the header up to `xl_crc`.
pub fn record_crc(record: &[u8]) -> u32 {
    use crate::constants::SIZE_OF_XLOG_RECORD;
    let crc = crc32c::crc32c(&record[SIZE_OF_XLOG_RECORD..]);
    crc32c::crc32c_append(crc, &record[..XLOG_RECORD_CRC_OFFSET])
}
