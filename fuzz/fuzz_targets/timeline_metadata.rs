//! The pageserver's timeline metadata file
//! (`pageserver/src/tenant/metadata.rs`): decoded metadata encodes back
//! to the same 128 bytes.
//!
//! Input: `[mode]` (bit 0: fix the CRC first), then the file.

#![no_main]

use fuzz::tenant::metadata::{TimelineMetadata, METADATA_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 1 != 0 {
        fuzz::fix_crc(&mut file, METADATA_SIZE - 4);
    }
    if let Ok(metadata) = TimelineMetadata::decode(&file) {
        assert_eq!(&metadata.encode()[..], &file[..], "re-encoding differs");
    }
});
