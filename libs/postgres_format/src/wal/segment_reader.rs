//! Reading the WAL segment files of a `pg_wal` directory in order.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use super::decoder::{RawRecord, WalDecodeError, WalStreamDecoder};
use super::page_header::WalPageHeader;
use crate::constants::SIZE_OF_XLOG_LONG_PHD;
use crate::wal_names::{is_valid_segment_size, parse_wal_file_name, segment_start, wal_file_name};
use crate::PgMajorVersion;
use utils::Lsn;

/// Where and why reading a WAL directory stopped.
#[derive(Debug)]
pub struct WalDirectoryEnd {
    /// The position of the first record that could not be read.
    pub lsn: Lsn,
    /// The decoding error there, `None` if the next segment file is missing.
    pub error: Option<WalDecodeError>,
    pub segment_size: usize,
}

/// Decode every record in `dir`, from the start of its oldest segment (or
/// from `start`) until WAL ends, in chunks of `chunk_size` bytes. Each
/// record is given to `on_record`. The segment size is read from the oldest
/// segment's long header unless given (a safekeeper's first segment may
/// begin mid-way, with no header).
pub fn read_wal_directory(
    dir: &Path,
    version: PgMajorVersion,
    start: Option<Lsn>,
    segment_size: Option<usize>,
    chunk_size: usize,
    mut on_record: impl FnMut(RawRecord) -> anyhow::Result<()>,
) -> anyhow::Result<WalDirectoryEnd> {
    let mut segments = Vec::new();
    for entry in
        fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?
    {
        let name = entry?.file_name();
        if let Some(name) = name.to_str() {
            if name.len() == 24 {
                segments.push(name.to_owned());
            }
        }
    }
    segments.sort();
    let Some(first) = segments.first() else {
        bail!("no WAL segment files in {}", dir.display());
    };
    let segment_size = match segment_size {
        Some(size) if is_valid_segment_size(size) => size,
        Some(size) => bail!("invalid WAL segment size {size}"),
        None => read_segment_size(&dir.join(first))?,
    };
    let (tli, first_segno) = parse_wal_file_name(first, segment_size)
        .with_context(|| format!("parsing WAL file name {first}"))?;
    let start = start.unwrap_or(segment_start(first_segno, segment_size));
    let mut decoder = WalStreamDecoder::new(start, version, segment_size)?;
    let mut segno = start.segment_number(segment_size as u64);
    let mut skip = start.segment_offset(segment_size as u64) as usize;
    let mut buf = vec![0u8; chunk_size.max(1)];
    loop {
        let path = dir.join(wal_file_name(tli, segno, segment_size));
        let mut file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(WalDirectoryEnd {
                    lsn: decoder.position(),
                    error: None,
                    segment_size,
                });
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let mut offset = 0usize;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            let from = skip.saturating_sub(offset).min(n);
            offset += n;
            decoder.feed_bytes(&buf[from..n]);
            loop {
                match decoder.poll_decode() {
                    Ok(Some(record)) => on_record(record)?,
                    Ok(None) => break,
                    Err(error) => {
                        return Ok(WalDirectoryEnd {
                            lsn: decoder.position(),
                            error: Some(error),
                            segment_size,
                        })
                    }
                }
            }
        }
        if offset != segment_size {
            bail!(
                "{} is {offset} bytes, expected {segment_size}",
                path.display()
            );
        }
        skip = 0;
        segno += 1;
    }
}

/// The segment size recorded in a segment's long page header.
fn read_segment_size(path: &Path) -> anyhow::Result<usize> {
    let mut header = [0u8; SIZE_OF_XLOG_LONG_PHD];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("reading the page header of {}", path.display()))?;
    let parsed = WalPageHeader::parse(&header)?;
    match parsed.long {
        Some((_, size, _)) if is_valid_segment_size(size as usize) => Ok(size as usize),
        _ => bail!(
            "{} does not begin with a valid long WAL page header",
            path.display()
        ),
    }
}
