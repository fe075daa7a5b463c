//! A timeline's WAL on disk: segment files named as PostgreSQL names them
//! (`000000010000000000000001`, timeline 1), each created at full size and
//! written in place.
//!
//! Incoming WAL is decoded as it is written, so the storage knows where the
//! last complete record ends: that (MAXALIGNed, as PostgreSQL counts it,
//! once the padding bytes arrived), once fsynced, is the flush LSN the
//! acceptor reports. A partial record at the end is not acknowledged.
//! Truncation zeroes everything after the truncation point before it
//! returns, so WAL of an abandoned term can never be read back after a
//! restart; a restart finds the end of WAL by decoding from a known record
//! boundary.
//!
//! Faults: a segment is allocated on disk (not sparse) when it is created,
//! before any byte of an append is decoded or written, so a full disk
//! refuses the append whole and changes nothing; it can be retried once
//! space returns. A failed write or fsync, as in PostgreSQL, is not
//! retried: the kernel may have dropped the dirty pages, so a later fsync
//! that succeeds proves nothing. The WAL storage then refuses every
//! append, flush and truncation (nothing more is acknowledged) until the
//! safekeeper restarts and finds the end of WAL again from disk.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use postgres_format::constants::MAXALIGN;
use postgres_format::wal::WalStreamDecoder;
use postgres_format::wal_names::{parse_wal_file_name, wal_file_name};
use postgres_format::PgMajorVersion;
use utils::Lsn;

use crate::acceptor::WalStore;

/// Reads a timeline's WAL files; used by WAL senders without the acceptor's lock.
///
/// Segments entirely below the WAL offload horizons may have been removed
/// (see [`crate::wal_backup`]): a read there finds no file, and the caller
/// fetches the segment from remote storage instead.
#[derive(Clone, Debug)]
pub struct WalReader {
    pub dir: PathBuf,
    pub segment_size: usize,
}

impl WalReader {
    /// The file name of segment `segno`.
    pub fn segment_name(&self, segno: u64) -> String {
        wal_file_name(PG_TIMELINE, segno, self.segment_size)
    }

    pub fn segment_path(&self, segno: u64) -> PathBuf {
        self.dir.join(self.segment_name(segno))
    }

    /// The segments present, in order.
    pub fn segment_numbers(&self) -> anyhow::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?
        {
            let entry = entry?;
            if let Some((_, segno)) = entry.file_name().to_str().and_then(|n| {
                parse_wal_file_name(n, self.segment_size).filter(|_| !n.ends_with(".partial"))
            }) {
                out.push(segno);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Read WAL at `lsn` into `buf`, within one segment; returns the bytes
    /// read (0 if the segment file does not exist).
    pub fn read(&self, lsn: Lsn, buf: &mut [u8]) -> anyhow::Result<usize> {
        let segno = lsn.segment_number(self.segment_size as u64);
        let offset = lsn.segment_offset(self.segment_size as u64) as usize;
        let path = self.segment_path(segno);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let n = buf.len().min(self.segment_size - offset);
        file.read_exact_at(&mut buf[..n], offset as u64)
            .with_context(|| format!("reading {} at {offset}", path.display()))?;
        Ok(n)
    }
}

/// PostgreSQL's timeline id in WAL file names: always 1 on our computes.
pub const PG_TIMELINE: u32 = 1;

pub struct PhysicalWal {
    dir: PathBuf,
    segment_size: usize,
    version: PgMajorVersion,
    /// End of the bytes written.
    write_lsn: Lsn,
    /// End of the last complete record written.
    written_record_lsn: Lsn,
    /// Ends of records decoded whose bytes are not all written yet.
    pending_record_ends: std::collections::VecDeque<Lsn>,
    /// End of the last complete record fsynced.
    flush_lsn: Lsn,
    decoder: Option<WalStreamDecoder>,
    /// Segments written since the last fsync.
    dirty: BTreeSet<u64>,
    created_files: bool,
    /// Why this storage refuses everything: a write or fsync failed.
    failed: Option<String>,
    /// A fault to inject next (tests of the failure paths).
    injected: Option<WalFault>,
}

/// A fault [`PhysicalWal::inject_fault`] makes the next matching operation
/// fail with, as the kernel would report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFault {
    /// The next fsync of a segment fails (EIO).
    Fsync,
    /// The next write into a segment fails (EIO).
    Write,
    /// The next segment creation finds the disk full (ENOSPC).
    DiskFull,
}

impl WalFault {
    fn error(self) -> std::io::Error {
        match self {
            WalFault::Fsync | WalFault::Write => std::io::Error::from_raw_os_error(libc::EIO),
            WalFault::DiskFull => std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

impl PhysicalWal {
    /// Open the WAL in `dir`. Its end is found by decoding from `boundary`,
    /// a known record boundary (such as a persisted commit LSN); with no
    /// segment files the log is empty.
    pub fn open(
        dir: &Path,
        segment_size: usize,
        version: PgMajorVersion,
        boundary: Lsn,
    ) -> anyhow::Result<Self> {
        let mut wal = PhysicalWal {
            dir: dir.to_owned(),
            segment_size,
            version,
            write_lsn: Lsn::INVALID,
            written_record_lsn: Lsn::INVALID,
            pending_record_ends: std::collections::VecDeque::new(),
            flush_lsn: Lsn::INVALID,
            decoder: None,
            dirty: BTreeSet::new(),
            created_files: false,
            failed: None,
            injected: None,
        };
        if !boundary.is_valid() || wal.segment_numbers()?.is_empty() {
            return Ok(wal);
        }
        // Acknowledged flush positions include the padding after the last
        // record (zeros), so the end found again must too.
        let end = wal
            .find_end(boundary)?
            .checked_align_up(MAXALIGN as u64)
            .context("the end of WAL lies past the greatest LSN")?;
        wal.reset_at(end)?;
        Ok(wal)
    }

    fn segment_numbers(&self) -> anyhow::Result<Vec<u64>> {
        self.reader().segment_numbers()
    }

    /// Make the next operation that `fault` names fail (for tests of the
    /// failure paths; nothing else calls it).
    #[doc(hidden)]
    pub fn inject_fault(&mut self, fault: WalFault) {
        self.injected = Some(fault);
    }

    fn take_fault(&mut self, fault: WalFault) -> std::io::Result<()> {
        if self.injected == Some(fault) {
            self.injected = None;
            return Err(fault.error());
        }
        Ok(())
    }

    /// Why the storage refuses everything, if a write or fsync failed.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check_usable(&self) -> anyhow::Result<()> {
        match &self.failed {
            Some(reason) => bail!(
                "the WAL storage in {} stopped after a failed write or fsync ({reason}); \
                 restart the safekeeper to find the end of WAL on disk again",
                self.dir.display()
            ),
            None => Ok(()),
        }
    }

    /// Stop using the storage for good: what the kernel holds for it
    /// cannot be trusted to reach the disk.
    fn fail(&mut self, error: anyhow::Error) -> anyhow::Error {
        let reason = format!("{error:#}");
        tracing::error!(
            "WAL storage in {} failed, acknowledging nothing more until a restart: {reason}",
            self.dir.display()
        );
        self.failed = Some(reason);
        error
    }

    fn segment_path(&self, segno: u64) -> PathBuf {
        self.reader().segment_path(segno)
    }

    /// Decode from `boundary` until WAL ends; the end of the last record.
    fn find_end(&self, boundary: Lsn) -> anyhow::Result<Lsn> {
        let mut decoder = WalStreamDecoder::new(boundary, self.version, self.segment_size)?;
        let mut end = boundary;
        let mut pos = boundary;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = self.read(pos, &mut buf)?;
            if n == 0 {
                return Ok(end);
            }
            decoder.feed_bytes(&buf[..n]);
            pos += n as u64;
            loop {
                match decoder.poll_decode() {
                    Ok(Some(record)) => end = record.end_lsn,
                    Ok(None) => break,
                    Err(_) => return Ok(end),
                }
            }
        }
    }

    /// The end of the last complete record written, with the padding that
    /// follows it when that was received too: PostgreSQL counts a record's
    /// end as MAXALIGNed (a commit waits for `XactLastRecEnd`, which is).
    fn durable_record_end(&self) -> Lsn {
        self.written_record_lsn
            .checked_align_up(MAXALIGN as u64)
            .unwrap_or(self.write_lsn)
            .min(self.write_lsn)
    }

    fn reset_at(&mut self, lsn: Lsn) -> anyhow::Result<()> {
        self.write_lsn = lsn;
        self.written_record_lsn = lsn;
        self.pending_record_ends.clear();
        self.flush_lsn = lsn;
        self.decoder = Some(WalStreamDecoder::new(lsn, self.version, self.segment_size)?);
        Ok(())
    }

    fn open_segment(&mut self, segno: u64, create: bool) -> anyhow::Result<Option<File>> {
        let path = self.segment_path(segno);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                // Allocated in a temporary file renamed into place: a
                // segment file that exists has all its blocks.
                let tmp = path.with_extension("tmp");
                let size = self.segment_size as u64;
                let allocated = self.take_fault(WalFault::DiskFull).and_then(|()| {
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&tmp)?;
                    allocate(&file, size)?;
                    fs::rename(&tmp, &path)?;
                    Ok(file)
                });
                let file = match allocated {
                    Ok(file) => file,
                    Err(e) => {
                        let _ = fs::remove_file(&tmp);
                        return Err(e).with_context(|| {
                            format!("creating WAL segment {} ({size} bytes)", path.display())
                        });
                    }
                };
                self.created_files = true;
                Ok(Some(file))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }

    /// Read WAL at `lsn` into `buf`, within one segment; returns the bytes
    /// read (0 past the last segment).
    pub fn read(&self, lsn: Lsn, buf: &mut [u8]) -> anyhow::Result<usize> {
        self.reader().read(lsn, buf)
    }

    pub fn reader(&self) -> WalReader {
        WalReader {
            dir: self.dir.clone(),
            segment_size: self.segment_size,
        }
    }

    /// Create (allocated on disk) the segments that `len` bytes at `lsn`
    /// go to. A full disk fails here, before anything is written.
    fn prepare_segments(&mut self, lsn: Lsn, len: usize) -> anyhow::Result<()> {
        let Some(last) = lsn.checked_add(len.saturating_sub(1) as u64) else {
            bail!("WAL of {len} bytes at {lsn} goes past the end of the LSN space");
        };
        let first = lsn.segment_number(self.segment_size as u64);
        for segno in first..=last.segment_number(self.segment_size as u64) {
            if !self.segment_path(segno).exists() {
                self.open_segment(segno, true)?;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, mut lsn: Lsn, mut data: &[u8]) -> anyhow::Result<()> {
        while !data.is_empty() {
            let segno = lsn.segment_number(self.segment_size as u64);
            let offset = lsn.segment_offset(self.segment_size as u64) as usize;
            let n = data.len().min(self.segment_size - offset);
            let Some(file) = self.open_segment(segno, false)? else {
                bail!("WAL segment {segno} vanished before WAL at {lsn} was written to it");
            };
            self.dirty.insert(segno);
            self.take_fault(WalFault::Write)
                .and_then(|()| file.write_all_at(&data[..n], offset as u64))
                .with_context(|| format!("writing WAL at {lsn}"))?;
            lsn += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn fsync_dir(&self) -> anyhow::Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsyncing {}", self.dir.display()))
    }
}

/// Give `file` `len` bytes allocated on disk (not a sparse file, which
/// would find the disk full in the middle of a later write).
fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::other("segment too large"))?;
    // SAFETY: the descriptor is open for writing for the whole call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

impl WalStore for PhysicalWal {
    fn write_lsn(&self) -> Lsn {
        self.write_lsn
    }

    fn flush_lsn(&self) -> Lsn {
        self.flush_lsn
    }

    fn write(&mut self, at: Lsn, data: &[u8]) -> anyhow::Result<()> {
        self.check_usable()?;
        if at != self.write_lsn {
            bail!(
                "WAL write at {at} does not continue the WAL written up to {}",
                self.write_lsn
            );
        }
        if self.decoder.is_none() {
            bail!("WAL write at {at} before the log has a start");
        }
        // Space first: a full disk refuses the append before the decoder
        // has seen it, so a retry starts from the same state.
        self.prepare_segments(at, data.len())?;
        let Some(decoder) = self.decoder.as_mut() else {
            bail!("WAL write at {at} before the log has a start");
        };
        // Check the WAL before storing it: what cannot be decoded is refused.
        decoder.feed_bytes(data);
        let mut ends = Vec::new();
        loop {
            match decoder.poll_decode() {
                Ok(Some(record)) => ends.push(record.end_lsn),
                Ok(None) => break,
                Err(e) => bail!("refusing WAL at {at}: {e}"),
            }
        }
        if let Err(e) = self.write_at(at, data) {
            return Err(self.fail(e));
        }
        crate::metrics::metrics()
            .wal_bytes_written
            .inc_by(data.len() as u64);
        self.write_lsn = at + data.len() as u64;
        // A record counts once all its bytes are written; an XLOG_SWITCH
        // record ends at the segment end, after padding still to come.
        self.pending_record_ends.extend(ends);
        while let Some(&end) = self.pending_record_ends.front() {
            if end > self.write_lsn {
                break;
            }
            self.written_record_lsn = end;
            self.pending_record_ends.pop_front();
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let metrics = crate::metrics::metrics();
        let _timer = metrics.wal_flush_seconds.start_timer();
        metrics.wal_flushes.inc();
        self.check_usable()?;
        // A segment leaves the dirty set only once its fsync succeeded; a
        // failed fsync stops the storage (see the module's documentation).
        let dirty: Vec<u64> = self.dirty.iter().copied().collect();
        for segno in dirty {
            let synced = self.open_segment(segno, false).and_then(|file| {
                if let Some(file) = file {
                    self.take_fault(WalFault::Fsync)
                        .and_then(|()| file.sync_data())
                        .with_context(|| format!("fsyncing WAL segment {segno}"))?;
                }
                Ok(())
            });
            if let Err(e) = synced {
                return Err(self.fail(e));
            }
            self.dirty.remove(&segno);
        }
        if self.created_files {
            if let Err(e) = self.fsync_dir() {
                return Err(self.fail(e));
            }
            self.created_files = false;
        }
        self.flush_lsn = self.durable_record_end();
        Ok(())
    }

    fn truncate(&mut self, at: Lsn) -> anyhow::Result<()> {
        self.check_usable()?;
        let segno = at.segment_number(self.segment_size as u64);
        let offset = at.segment_offset(self.segment_size as u64) as usize;
        if let Some(file) = self.open_segment(segno, true)? {
            let zeros = vec![0u8; self.segment_size - offset];
            file.write_all_at(&zeros, offset as u64)
                .with_context(|| format!("zeroing WAL after {at}"))?;
            file.sync_data()
                .with_context(|| format!("fsyncing WAL segment {segno}"))?;
        }
        for later in self.segment_numbers()?.into_iter().filter(|&s| s > segno) {
            let path = self.segment_path(later);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        self.fsync_dir()?;
        self.dirty.clear();
        self.created_files = false;
        self.reset_at(at)
    }
}
