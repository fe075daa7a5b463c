//! The safekeeper's control file (`safekeeper/src/state_file.rs`): a
//! decoded state encodes to a file that decodes to the same state.
//!
//! Input: `[mode]` (bit 0: fix the length and the CRC first), then the file.

#![no_main]

use fuzz::state_file::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 1 != 0 && file.len() >= 16 {
        // Magic, version, payload length, payload, CRC of all before it.
        let payload = (file.len() - 16) as u32;
        file[8..12].copy_from_slice(&payload.to_le_bytes());
        let at = file.len() - 4;
        fuzz::fix_crc(&mut file, at);
    }
    if let Ok(state) = decode(&file) {
        let encoded = encode(&state).expect("a decoded state encodes");
        assert_eq!(decode(&encoded).expect("an encoded state decodes"), state);
    }
});
