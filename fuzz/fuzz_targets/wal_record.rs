//! One WAL record's body: `DecodedRecord::decode` (block references, images,
//! main data), the rmgr-specific parsers the pageserver applies
//! (`records::parse_record`), image restoration (hole, pglz/LZ4/zstd) and
//! the Rust redo of each block (`pg_redo::redo_block`).
//!
//! Input: `[mode]` then the record. Mode bit 0 sets `xl_tot_len` to the
//! record's real length (the stream decoder guarantees that, a mutated
//! input rarely does).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use postgres_format::constants::BLCKSZ;
use postgres_format::page::{is_new_page, PageHeader};
use postgres_format::records::parse_record;
use postgres_format::wal::DecodedRecord;
use utils::Lsn;

/// An initialised, empty heap page (`PageInit`).
fn empty_page() -> [u8; BLCKSZ] {
    let mut page = [0u8; BLCKSZ];
    page[12..14].copy_from_slice(&24u16.to_le_bytes()); // pd_lower
    page[14..16].copy_from_slice(&(BLCKSZ as u16).to_le_bytes()); // pd_upper
    page[16..18].copy_from_slice(&(BLCKSZ as u16).to_le_bytes()); // pd_special
    page[18..20].copy_from_slice(&(BLCKSZ as u16 | 4).to_le_bytes()); // size, version
    page
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, record)) = data.split_first() else {
        return;
    };
    let mut record = record.to_vec();
    if mode & 1 != 0 && record.len() >= 4 {
        let len = record.len() as u32;
        record[..4].copy_from_slice(&len.to_le_bytes());
    }
    let lsn = Lsn(0x0100_0028);
    let Ok(decoded) = DecodedRecord::decode(lsn, Bytes::from(record)) else {
        return;
    };
    let _ = parse_record(&decoded);
    let _ = decoded.image_bytes();
    let end_lsn = lsn + decoded.header.total_length as u64;
    for block in &decoded.blocks {
        let _ = block.tag();
        let mut page = empty_page();
        if let Some(image) = &block.image {
            let _ = image.compression();
            if let Ok(restored) = image.restore() {
                page.copy_from_slice(&restored);
                if let Ok(header) = PageHeader::read(&page) {
                    let _ = (
                        header.check_sane(),
                        header.page_size(),
                        header.layout_version(),
                    );
                }
                let _ = is_new_page(&page);
            }
        }
        // Twice: the second time on the page the first one produced.
        if pg_redo::redo_block(&decoded, end_lsn, block.id, &mut page).is_ok() {
            let _ = pg_redo::redo_block(&decoded, end_lsn, block.id, &mut page);
        }
        let mut zero = [0u8; BLCKSZ];
        let _ = pg_redo::redo_block(&decoded, end_lsn, block.id, &mut zero);
    }
});
