//! WAL segment file names and LSN arithmetic.

use utils::Lsn;

/// Timeline id of PostgreSQL's WAL (`TimeLineID`): always 1 for our computes.
pub type PgTimeLineId = u32;

/// The name of the WAL segment `segno` on timeline `tli`, as PostgreSQL
/// names it: 24 hex digits (`000000010000000000000001`).
pub fn wal_file_name(tli: PgTimeLineId, segno: u64, segment_size: usize) -> String {
    let per_xlogid = segments_per_xlog_id(segment_size);
    format!(
        "{tli:08X}{:08X}{:08X}",
        segno / per_xlogid,
        segno % per_xlogid
    )
}

/// Parse a WAL segment file name into timeline and segment number.
/// Partial segments (`.partial`) are accepted.
pub fn parse_wal_file_name(name: &str, segment_size: usize) -> Option<(PgTimeLineId, u64)> {
    let name = name.strip_suffix(".partial").unwrap_or(name);
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_xlogid = segments_per_xlog_id(segment_size);
    if seg >= per_xlogid {
        return None;
    }
    Some((tli, log * per_xlogid + seg))
}

fn segments_per_xlog_id(segment_size: usize) -> u64 {
    0x1_0000_0000u64 / segment_size as u64
}

/// The LSN at which segment `segno` begins.
pub fn segment_start(segno: u64, segment_size: usize) -> Lsn {
    Lsn(segno * segment_size as u64)
}

/// True if `segment_size` is one PostgreSQL accepts: a power of two from 1 MiB to 1 GiB.
pub fn is_valid_segment_size(segment_size: usize) -> bool {
    segment_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&segment_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: usize = 16 << 20;

    #[test]
    fn names_round_trip() {
        assert_eq!(wal_file_name(1, 1, SEG), "000000010000000000000001");
        assert_eq!(wal_file_name(1, 0x100, SEG), "000000010000000100000000");
        assert_eq!(
            parse_wal_file_name("000000010000000100000000", SEG),
            Some((1, 0x100))
        );
        assert_eq!(
            parse_wal_file_name("000000010000000000000003.partial", SEG),
            Some((1, 3))
        );
        assert_eq!(parse_wal_file_name("000000010000000000000100", SEG), None);
        assert_eq!(parse_wal_file_name("00000001000000000000000G", SEG), None);
        assert_eq!(parse_wal_file_name("archive_status", SEG), None);
        assert_eq!(segment_start(1, SEG), Lsn(0x100_0000));
        assert!(is_valid_segment_size(SEG));
        assert!(!is_valid_segment_size(3 << 20));
    }
}
