//! Layer files (`pageserver/src/tenant/layer/`): the input is written to a
//! file, which is opened as a delta layer and as an image layer, and read
//! as the pageserver reads layers (every entry, point lookups, key scans).
//!
//! Input: `[mode]`, then the file. With mode bit 0 the checksums (header,
//! footer, index, each data block the index names) are recomputed first,
//! so that mutations get past them to the structures they protect.

#![no_main]

use std::path::PathBuf;

use fuzz::key::{Key, KeyRange};
use fuzz::tenant::layer::{DeltaLayerReader, ImageLayerReader};
use libfuzzer_sys::fuzz_target;
use utils::Lsn;

const HEADER_SIZE: usize = 128;
const FOOTER_SIZE: usize = 32;
const INDEX_ENTRY_SIZE: usize = 80;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Recompute every checksum the file's own offsets lead to.
fn fix_checksums(file: &mut [u8]) {
    let len = file.len();
    if len < HEADER_SIZE + FOOTER_SIZE {
        return;
    }
    let footer = len - FOOTER_SIZE;
    let index_offset = u64_at(file, footer);
    let index_len = u64_at(file, footer + 8);
    let index = usize::try_from(index_offset)
        .ok()
        .zip(usize::try_from(index_len).ok())
        .and_then(|(start, n)| Some((start, start.checked_add(n)?)))
        .filter(|&(start, end)| start <= end && end <= footer);
    if let Some((start, end)) = index {
        for entry in (start..end).step_by(INDEX_ENTRY_SIZE) {
            if entry + INDEX_ENTRY_SIZE > end {
                break;
            }
            let offset = u64_at(file, entry + 56);
            let stored = u64::from(u32_at(file, entry + 64));
            if let Some(block_end) = offset.checked_add(stored).filter(|&e| e <= len as u64) {
                let crc = crc32c::crc32c(&file[offset as usize..block_end as usize]);
                file[entry + 76..entry + 80].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&file[start..end]);
        file[footer + 16..footer + 20].copy_from_slice(&crc.to_le_bytes());
    }
    fuzz::fix_crc(&mut file[footer..], 28);
    fuzz::fix_crc(&mut file[..HEADER_SIZE], HEADER_SIZE - 4);
}

fn path() -> PathBuf {
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("fuzz-layer-{}", std::process::id()))
}

/// Keys around `key`, to look up.
fn probes(key: Key) -> [Key; 2] {
    [key, key.next()]
}

fn read_delta(path: &std::path::Path) {
    let Ok(layer) = DeltaLayerReader::open(path) else {
        return;
    };
    let (keys, lsns) = (layer.key_range(), layer.lsn_range());
    assert!(keys.start < keys.end && lsns.start < lsns.end);
    let _ = (layer.layer_name(), layer.block_count(), layer.path());
    let mut last: Option<(Key, Lsn)> = None;
    let mut count = 0u64;
    let mut lookups = Vec::new();
    for entry in layer.iter() {
        let Ok((key, lsn, value)) = entry else {
            break;
        };
        assert!(keys.contains(&key) && lsns.contains(&lsn));
        assert!(last.is_none_or(|l| l < (key, lsn)), "entries out of order");
        let _ = value.will_init();
        last = Some((key, lsn));
        count += 1;
        if lookups.len() < 8 {
            lookups.push((key, lsn));
        }
        if count == layer.entry_count() {
            // The iterator must end here: the counts were validated.
        }
    }
    for (key, lsn) in lookups {
        for probe in probes(key) {
            if let Ok(values) = layer.get_values(probe, lsn) {
                assert!(
                    values.windows(2).all(|w| w[0].0 > w[1].0),
                    "not newest first"
                );
                assert!(values.iter().all(|(l, _)| *l <= lsn));
            }
        }
        let _ = layer.keys_in(&KeyRange::new(key, key.next()));
    }
    let _ = layer.get_values(keys.start, Lsn(u64::MAX));
    if let Ok(all) = layer.keys_in(&KeyRange::all()) {
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "keys not distinct and sorted"
        );
    }
}

fn read_image(path: &std::path::Path) {
    let Ok(layer) = ImageLayerReader::open(path) else {
        return;
    };
    let _ = (layer.layer_name(), layer.block_count(), layer.lsn());
    let mut last: Option<Key> = None;
    let mut lookups = Vec::new();
    for entry in layer.iter() {
        let Ok((key, _value)) = entry else {
            break;
        };
        assert!(layer.key_range().contains(&key));
        assert!(last.is_none_or(|l| l < key), "keys out of order");
        last = Some(key);
        if lookups.len() < 8 {
            lookups.push(key);
        }
    }
    for key in lookups {
        for probe in probes(key) {
            let _ = layer.get(probe);
        }
    }
    let _ = layer.get(layer.key_range().start);
    if let Ok(all) = layer.keys_in(&KeyRange::all()) {
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if mode & 1 != 0 {
        fix_checksums(&mut file);
    }
    let path = path();
    if std::fs::write(&path, &file).is_err() {
        return;
    }
    read_delta(&path);
    read_image(&path);
    let _ = std::fs::remove_file(&path);
});
