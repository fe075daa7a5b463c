//! What the pageserver stores at a key and LSN
//! (`pageserver/src/value/`): decoded from layer files, re-encoded to the
//! same bytes, and applied to a page as a page read does.

#![no_main]

use fuzz::value::{RustRecord, Value};
use libfuzzer_sys::fuzz_target;
use postgres_format::constants::BLCKSZ;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = Value::decode(data) else {
        return;
    };
    let encoded = value.encode();
    assert_eq!(encoded.len(), value.encoded_len());
    assert_eq!(&encoded[..], data, "re-encoding differs");
    let _ = value.will_init();
    if let Value::Delta(record) = &value {
        let _ = (record.name(), record.will_init());
        let mut page = [0u8; BLCKSZ];
        // The changes the pageserver makes itself are all or nothing; a WAL
        // record's redo may fail half-way (the read then fails and the
        // page is dropped).
        if record.apply(&mut page).is_err() && !matches!(record, RustRecord::WalRecord { .. }) {
            assert!(
                page.iter().all(|&b| b == 0),
                "a failed apply changed the page"
            );
        }
        let mut page = [0xFFu8; BLCKSZ];
        let _ = record.apply(&mut page);
    }
});
