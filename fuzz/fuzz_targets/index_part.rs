//! A timeline's `index_part.json` in remote storage
//! (`pageserver/src/remote_timeline/index_part.rs`): what parses must
//! encode to an index that parses to the same.

#![no_main]

use fuzz::remote_timeline::IndexPart;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = IndexPart::parse(data) {
        let again = IndexPart::parse(&index.to_bytes()).expect("re-encoded index parses");
        assert_eq!(again, index);
    }
});
