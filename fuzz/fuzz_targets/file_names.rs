//! Names read from directory listings and remote storage listings: layer
//! file names and keys (`pageserver`), WAL segment file names and relation
//! file names (`postgres_format`). What parses must print back to itself.

#![no_main]

use fuzz::key::Key;
use fuzz::tenant::layer::LayerName;
use libfuzzer_sys::fuzz_target;
use postgres_format::relfile::parse_relation_file_name;
use postgres_format::wal_names::{parse_wal_file_name, segment_start, wal_file_name};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = text.parse::<LayerName>() {
        assert_eq!(name.to_string().parse::<LayerName>(), Ok(name.clone()));
        let (keys, lsns) = (name.key_range(), name.lsn_range());
        assert!(keys.start < keys.end && lsns.start < lsns.end, "{name}");
    }
    if let Ok(key) = text.parse::<Key>() {
        assert_eq!(key.to_string().parse::<Key>(), Ok(key));
        assert_eq!(Key::from_slice(&key.to_bytes()), Some(key));
        let _ = (
            key.kind(),
            key.rel_tag(),
            key.slru_kind(),
            key.twophase_xid(),
        );
    }
    for shift in 20..=30 {
        let segment_size = 1usize << shift;
        if let Some((tli, segno)) = parse_wal_file_name(text, segment_size) {
            let name = text.strip_suffix(".partial").unwrap_or(text);
            assert!(wal_file_name(tli, segno, segment_size).eq_ignore_ascii_case(name));
            let _ = segment_start(segno, segment_size);
        }
    }
    if let Some((rel, fork, segno)) = parse_relation_file_name(text) {
        let _ = (rel, fork.name(), segno);
    }
});
