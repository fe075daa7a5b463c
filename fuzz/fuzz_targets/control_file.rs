//! PostgreSQL's control file (`postgres_format::control_file`): what the
//! pageserver reads from a data directory it imports, and a checkpoint
//! record's `CheckPoint`. A decoded control file must encode back to bytes
//! that decode to the same thing.
//!
//! Input: `[mode]` (bit 0: fix the CRC first), then the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postgres_format::control_file::{CheckPoint, ControlFile};
use postgres_format::PgMajorVersion;

/// Offset of the CRC in `ControlFileData`.
const CRC_OFFSET: usize = 288;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 1 != 0 {
        fuzz::fix_crc(&mut file, CRC_OFFSET);
    }
    if let Ok(checkpoint) = CheckPoint::decode(&file) {
        assert_eq!(CheckPoint::decode(&checkpoint.encode()), Ok(checkpoint));
    }
    if let Ok(control) = ControlFile::decode(&file, PgMajorVersion::V15) {
        let encoded = control.encode();
        assert_eq!(
            ControlFile::decode(&encoded, PgMajorVersion::V15),
            Ok(control.clone())
        );
        // Everything the struct holds is kept (padding is written as zeros).
        assert_eq!(control.encode(), encoded);
    }
});
