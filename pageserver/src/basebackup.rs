//! Base backups: a tar of PGDATA as of an LSN, from which stock PostgreSQL
//! starts without recovery (docs/design.md).
//!
//! Contents, in order: `PG_VERSION`, the configuration files (an empty
//! `postgresql.conf`, which computes replace; a `pg_hba.conf` trusting
//! loopback; an empty `pg_ident.conf`), the directories PostgreSQL needs,
//! then per database its `PG_VERSION`, relmapper file and relation files
//! (unlogged relations as their init fork, and a main fork copied from it),
//! the SLRU segments, the two-phase state files, and last the fabricated
//! WAL segment(s) holding a shutdown checkpoint right after the backup's
//! LSN and the `global/pg_control` pointing at it.
//!
//! A lazy base backup (for computes that read relation blocks from the
//! pageserver on first use) leaves out the data of logged relations and
//! lists their forks' sizes instead, in
//! [`pageserver_api::lazy::RELATION_SIZES_FILE`]; unlogged relations are
//! sent whole (their init fork is all a compute needs of them).
//!
//! The checkpoint values in `pg_control` (next xid, oid, multixact and
//! offset, oldest xid and multixact) are those WAL ingest kept up to date
//! under the checkpoint key.
//!
//! The tar is written as it is produced, one page at a time, to any
//! [`Write`]; [`BasebackupStream`] runs the production on a blocking thread
//! and hands the tar over in chunks of bounded size through a bounded
//! queue, so a backup takes the same memory whatever the database's size
//! and goes only as fast as its consumer takes it.

use std::io::{self, Read, Write};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use postgres_format::constants::{
    BLCKSZ, DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID, RELSEG_SIZE,
};
use postgres_format::control_file::{CheckPoint, ControlFile};
use postgres_format::relfile::{ForkNumber, RelTag};
use postgres_format::wal_writer::fabricate_start;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::info;
use utils::Lsn;

use crate::key::SlruKind;
use crate::tenant::timeline::{RecordLsn, Timeline};

/// Directories every data directory has (created empty when they hold nothing).
const PGDATA_DIRS: &[&str] = &[
    "global",
    "base",
    "pg_wal",
    "pg_wal/archive_status",
    "pg_xact",
    "pg_multixact",
    "pg_multixact/offsets",
    "pg_multixact/members",
    "pg_twophase",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    "pg_stat",
    "pg_stat_tmp",
    "pg_tblspc",
    "pg_replslot",
    "pg_dynshmem",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
    "pg_commit_ts",
];

const PG_HBA: &str = "\
# Written by the pageserver's base backup: trust on loopback only.
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
host    replication     all             ::1/128                 trust
";

/// What a base backup carries of logged relations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationData {
    /// Every block.
    Full,
    /// Only each fork's size, in the relation-sizes file.
    SizesOnly,
}

/// What a base backup wrote.
#[derive(Debug, Clone, Copy)]
pub struct BasebackupInfo {
    /// Where the fabricated shutdown checkpoint lies.
    pub checkpoint_lsn: Lsn,
    /// Where the compute writes its first new WAL.
    pub end_lsn: Lsn,
}

/// Write a tar of PGDATA as of `record` (the end of a record the timeline
/// has ingested, and that record's start) to `out`, as it is produced: at
/// most one page or one SLRU segment is held at a time (and the fabricated
/// WAL segments, at the end).
pub fn send_basebackup(
    timeline: &Timeline,
    record: RecordLsn,
    data: RelationData,
    out: impl Write,
) -> anyhow::Result<BasebackupInfo> {
    let lsn = record.last;
    let last = timeline.last_record_lsn();
    ensure!(
        lsn <= last,
        "base backup at {lsn}: the timeline's WAL is ingested up to {last} only"
    );
    ensure!(
        lsn >= timeline.start_lsn(),
        "base backup at {lsn}: before the timeline's start {}",
        timeline.start_lsn()
    );
    ensure!(
        lsn >= timeline.gc_horizon(),
        "base backup at {lsn}: below the GC horizon {}",
        timeline.gc_horizon()
    );
    // An invalid prev-link (0) is allowed: a base backup at an LSN that is
    // not the last record (a branch point, a read-only endpoint) has no
    // record index to find it, and PostgreSQL checks the prev-link of the
    // checkpoint it starts from only for being below the record.
    ensure!(
        record.prev < lsn,
        "base backup at {lsn}: previous record {} is not before it",
        record.prev
    );
    let version = timeline.pg_version;
    let control_bytes = timeline
        .get_control_file(lsn)?
        .with_context(|| format!("no pg_control at {lsn}"))?;
    let mut control =
        ControlFile::decode(&control_bytes, version).context("decoding the stored pg_control")?;
    if let Some(cp) = timeline.get_checkpoint(lsn)? {
        control.checkpoint_copy =
            CheckPoint::decode(&cp).context("decoding the stored checkpoint")?;
    }

    let mut tar = Tar::new(out);
    tar.file("PG_VERSION", format!("{version}\n").as_bytes())?;
    tar.file("postgresql.conf", b"")?;
    tar.file("pg_hba.conf", PG_HBA.as_bytes())?;
    tar.file("pg_ident.conf", b"")?;
    for dir in PGDATA_DIRS {
        tar.dir(dir)?;
    }

    // Databases and their relations.
    let mut sizes = Vec::new();
    for (spc, db) in timeline.list_dbs(lsn)? {
        match spc {
            GLOBALTABLESPACE_OID => {
                if let Some(map) = timeline.get_relmap_file(spc, db, lsn)? {
                    if !map.is_empty() {
                        tar.file("global/pg_filenode.map", &map)?;
                    }
                }
            }
            DEFAULTTABLESPACE_OID => {
                tar.dir(&format!("base/{db}"))?;
                tar.file(
                    &format!("base/{db}/PG_VERSION"),
                    format!("{version}\n").as_bytes(),
                )?;
                if let Some(map) = timeline.get_relmap_file(spc, db, lsn)? {
                    if !map.is_empty() {
                        tar.file(&format!("base/{db}/pg_filenode.map"), &map)?;
                    }
                }
            }
            _ => bail!("database {db} is in tablespace {spc}: tablespaces are not supported"),
        }
        let rels = timeline.list_rels(spc, db, lsn)?;
        for &rel in &rels {
            let unlogged = rels.contains(&RelTag {
                node: rel.node,
                fork: ForkNumber::Init,
            });
            if unlogged {
                // The init fork, and a main fork that is a copy of it;
                // nothing else (PostgreSQL resets unlogged relations so).
                match rel.fork {
                    ForkNumber::Init => {
                        send_rel(&mut tar, timeline, rel, rel, lsn)?;
                        let main = RelTag {
                            node: rel.node,
                            fork: ForkNumber::Main,
                        };
                        send_rel(&mut tar, timeline, rel, main, lsn)?;
                    }
                    _ => continue,
                }
            } else if data == RelationData::SizesOnly {
                sizes.push(relation_size(timeline, rel, lsn)?);
            } else {
                send_rel(&mut tar, timeline, rel, rel, lsn)?;
            }
        }
    }
    if data == RelationData::SizesOnly {
        tar.file(
            pageserver_api::lazy::RELATION_SIZES_FILE,
            pageserver_api::lazy::format(&sizes).as_bytes(),
        )?;
    }

    // SLRUs.
    for kind in SlruKind::ALL {
        for segment in timeline.list_slru_segments(kind, lsn)? {
            let pages = timeline.get_slru_segment_size(kind, segment, lsn)?;
            let mut data = Vec::with_capacity(pages as usize * BLCKSZ);
            for block in 0..pages {
                let page = timeline.get_slru_page(kind, segment, block, lsn)?;
                ensure!(
                    page.len() == BLCKSZ,
                    "{} segment {segment:04X} page {block} at {lsn} is {} bytes",
                    kind.dir_name(),
                    page.len()
                );
                data.extend_from_slice(&page);
            }
            tar.file(&format!("{}/{segment:04X}", kind.dir_name()), &data)?;
        }
    }

    // Prepared transactions.
    for xid in timeline.list_twophase_files(lsn)? {
        let file = timeline
            .get_twophase_file(xid, lsn)?
            .with_context(|| format!("two-phase file of xid {xid} missing at {lsn}"))?;
        tar.file(&format!("pg_twophase/{xid:08X}"), &file)?;
    }

    // GC raises its horizon before it removes anything: past `lsn` now, it
    // may have removed what the reads above needed, so the backup fails
    // rather than end as if whole.
    ensure!(
        lsn >= timeline.gc_horizon(),
        "base backup at {lsn}: GC raised the horizon to {} while the backup was read",
        timeline.gc_horizon()
    );

    // The start point, pg_control last.
    let start = fabricate_start(&control, version, record.prev, lsn);
    for (name, data) in &start.wal_segments {
        tar.file(&format!("pg_wal/{name}"), data)?;
    }
    tar.file("global/pg_control", &start.control_file)?;
    tar.finish()?;
    info!(
        "base backup of timeline {} at {lsn}: checkpoint at {}",
        timeline.timeline_id, start.checkpoint_lsn
    );
    Ok(BasebackupInfo {
        checkpoint_lsn: start.checkpoint_lsn,
        end_lsn: start.end_lsn,
    })
}

/// A logged relation fork's size, for a lazy base backup.
fn relation_size(
    timeline: &Timeline,
    rel: RelTag,
    lsn: Lsn,
) -> anyhow::Result<pageserver_api::lazy::RelationSize> {
    let blocks = timeline.get_rel_size(rel, lsn)?.with_context(|| {
        format!(
            "relation {} fork {} vanished at {lsn}",
            rel.node,
            rel.fork.name()
        )
    })?;
    Ok(pageserver_api::lazy::RelationSize {
        rel: pageserver_api::pagestream::RelSpec {
            spc_oid: rel.node.spc_oid,
            db_oid: rel.node.db_oid,
            rel_node: rel.node.rel_node,
            fork: rel.fork as u8,
        },
        blocks,
    })
}

/// The segment files of relation fork `src`, written under the name of `dst`.
fn send_rel<W: Write>(
    tar: &mut Tar<W>,
    timeline: &Timeline,
    src: RelTag,
    dst: RelTag,
    lsn: Lsn,
) -> anyhow::Result<()> {
    let nblocks = timeline.get_rel_size(src, lsn)?.with_context(|| {
        format!(
            "relation {} fork {} vanished at {lsn}",
            src.node,
            src.fork.name()
        )
    })?;
    let segments = nblocks.div_ceil(RELSEG_SIZE).max(1);
    for segno in 0..segments {
        let first = segno * RELSEG_SIZE;
        let end = nblocks.min(first + RELSEG_SIZE);
        let path = dst.segment_path(segno, "");
        let mut reader = RelReader {
            timeline,
            rel: src,
            lsn,
            next: first,
            end,
            page: Bytes::new(),
            at: 0,
            error: None,
        };
        let size = (end - first) as u64 * BLCKSZ as u64;
        let result = tar.stream(&path, size, &mut reader);
        if let Some(e) = reader.error.take() {
            return Err(e).with_context(|| format!("reading {path} at {lsn}"));
        }
        result?;
    }
    Ok(())
}

/// Reads a range of a relation's pages from the timeline, as a file.
struct RelReader<'a> {
    timeline: &'a Timeline,
    rel: RelTag,
    lsn: Lsn,
    next: u32,
    end: u32,
    page: Bytes,
    at: usize,
    error: Option<anyhow::Error>,
}

impl Read for RelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.page.len() {
            if self.next >= self.end {
                return Ok(0);
            }
            match self.timeline.get_rel_page(self.rel, self.next, self.lsn) {
                Ok(page) if page.len() == BLCKSZ => self.page = page,
                Ok(page) => {
                    self.error = Some(anyhow::anyhow!(
                        "block {} is {} bytes, not a page",
                        self.next,
                        page.len()
                    ));
                    return Err(io::Error::other("bad page"));
                }
                Err(e) => {
                    self.error =
                        Some(anyhow::Error::new(e).context(format!("block {}", self.next)));
                    return Err(io::Error::other("page read failed"));
                }
            }
            self.next += 1;
            self.at = 0;
        }
        let n = buf.len().min(self.page.len() - self.at);
        buf[..n].copy_from_slice(&self.page[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A tar stream with PostgreSQL's modes: 0600 files, 0700 directories.
struct Tar<W: Write> {
    builder: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> Tar<W> {
    fn new(out: W) -> Self {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Tar {
            builder: tar::Builder::new(out),
            mtime,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        let mut header = self.header(tar::EntryType::Directory, 0o700, 0);
        self.builder
            .append_data(&mut header, format!("{path}/"), io::empty())
            .with_context(|| format!("writing directory {path} to the base backup"))
    }

    fn file(&mut self, path: &str, data: &[u8]) -> anyhow::Result<()> {
        self.stream(path, data.len() as u64, data)
    }

    fn stream(&mut self, path: &str, size: u64, data: impl Read) -> anyhow::Result<()> {
        let mut header = self.header(tar::EntryType::Regular, 0o600, size);
        self.builder
            .append_data(&mut header, path, data)
            .with_context(|| format!("writing {path} to the base backup"))
    }

    fn finish(self) -> anyhow::Result<()> {
        self.builder
            .into_inner()
            .context("finishing the base backup tar")?
            .flush()
            .context("flushing the base backup")
    }
}

/// A base backup at `lsn` (default: the last record ingested). At the last
/// record, the fabricated checkpoint points back to it exactly; at an
/// earlier LSN (a read-only endpoint, a branch point) no record index says
/// where the previous record began, so its prev-link is left invalid, which
/// PostgreSQL accepts for a checkpoint it reads directly.
pub fn basebackup_at(
    timeline: &Timeline,
    lsn: Option<Lsn>,
    data: RelationData,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let last = timeline.last_record();
    let record = match lsn {
        None => last,
        Some(lsn) if lsn == last.last => last,
        Some(lsn) if lsn > last.last => bail!(
            "LSN {lsn} is beyond the WAL ingested so far ({})",
            last.last
        ),
        Some(lsn) => RecordLsn {
            last: lsn,
            prev: Lsn::INVALID,
        },
    };
    send_basebackup(timeline, record, data, out).map(|_| ())
}

/// Bytes of tar in each chunk of a [`BasebackupStream`] (the last may be
/// shorter): one `CopyData` message of the page service.
pub const STREAM_CHUNK_SIZE: usize = 256 * 1024;

/// Chunks a [`BasebackupStream`] produces ahead of its consumer; then the
/// producer waits.
pub const STREAM_QUEUE_DEPTH: usize = 2;

/// A tar produced on a blocking thread and handed over in chunks as it is
/// written. At most `depth + 2` chunks exist at once: `depth` queued, one
/// being filled and the one the consumer holds.
///
/// Dropping the stream stops the producer at its next chunk (its writes
/// then fail).
pub struct BasebackupStream {
    chunks: mpsc::Receiver<Bytes>,
    producer: Option<JoinHandle<anyhow::Result<()>>>,
}

impl BasebackupStream {
    /// Runs `produce` on a blocking thread, its output cut into chunks of
    /// `chunk_size` bytes with at most `depth` of them queued. What it
    /// wrote is flushed when it returns `Ok`.
    pub fn spawn<F>(chunk_size: usize, depth: usize, produce: F) -> BasebackupStream
    where
        F: FnOnce(&mut dyn Write) -> anyhow::Result<()> + Send + 'static,
    {
        let chunk_size = chunk_size.max(1);
        let (tx, chunks) = mpsc::channel(depth.max(1));
        let span = tracing::Span::current();
        let producer = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut writer = ChunkWriter {
                buf: Vec::with_capacity(chunk_size),
                chunk_size,
                tx,
            };
            produce(&mut writer)?;
            writer
                .flush()
                .context("sending the base backup's last chunk")
        });
        BasebackupStream {
            chunks,
            producer: Some(producer),
        }
    }

    /// The next chunk; `None` once the producer finished successfully and
    /// every chunk was taken. The producer's error if it failed: the tar
    /// taken so far is then incomplete.
    pub async fn next_chunk(&mut self) -> anyhow::Result<Option<Bytes>> {
        if let Some(chunk) = self.chunks.recv().await {
            return Ok(Some(chunk));
        }
        // The producer dropped its sender: it has returned (or panicked).
        match self.producer.take() {
            Some(producer) => producer.await.context("base backup task")?.map(|()| None),
            None => Ok(None),
        }
    }
}

/// Cuts what is written into chunks and sends each (waiting for room in
/// the queue) once it is full, or on flush.
struct ChunkWriter {
    buf: Vec<u8>,
    chunk_size: usize,
    tx: mpsc::Sender<Bytes>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk_size));
        self.tx.blocking_send(Bytes::from(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the base backup's consumer is gone",
            )
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.buf.len() >= self.chunk_size {
            self.send()?;
        }
        let n = data.len().min(self.chunk_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Writes `total` bytes of a pattern in writes of varying sizes,
    /// counting in `written` what each write accepted.
    fn produce_pattern(
        out: &mut dyn Write,
        total: usize,
        written: &AtomicUsize,
    ) -> anyhow::Result<()> {
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut at = 0;
        let mut step = 1;
        while at < total {
            let n = out.write(&data[at..total.min(at + step)])?;
            anyhow::ensure!(n > 0, "a write accepted nothing");
            written.fetch_add(n, Ordering::SeqCst);
            at += n;
            step = step * 3 % 10_007 + 1;
        }
        out.flush()?;
        Ok(())
    }

    #[tokio::test]
    async fn chunks_are_bounded_and_the_producer_waits_for_the_consumer() -> anyhow::Result<()> {
        let (total, chunk_size, depth) = (1_000_003, 4096, 2);
        let written = Arc::new(AtomicUsize::new(0));
        let counter = written.clone();
        let mut stream = BasebackupStream::spawn(chunk_size, depth, move |out| {
            produce_pattern(out, total, &counter)
        });
        let mut received = Vec::new();
        let mut most_ahead = 0;
        while let Some(chunk) = stream.next_chunk().await? {
            assert!(!chunk.is_empty() && chunk.len() <= chunk_size);
            received.extend_from_slice(&chunk);
            // Written but not yet taken: queued, being filled, or being sent.
            let ahead = written.load(Ordering::SeqCst) - received.len();
            most_ahead = most_ahead.max(ahead);
            assert!(
                ahead <= (depth + 2) * chunk_size,
                "the producer is {ahead} bytes ahead"
            );
        }
        let expected: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        assert!(received == expected, "the chunks are not what was written");
        assert!(most_ahead > 0);
        // The end stays the end.
        assert!(stream.next_chunk().await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn the_producers_error_follows_its_data() {
        let mut stream = BasebackupStream::spawn(1000, 1, |out| {
            out.write_all(&[1; 2500])?;
            bail!("page 7 is unreadable")
        });
        // Two whole chunks; the half-filled third is not sent.
        assert_eq!(
            stream.next_chunk().await.unwrap().map(|c| c.len()),
            Some(1000)
        );
        assert_eq!(
            stream.next_chunk().await.unwrap().map(|c| c.len()),
            Some(1000)
        );
        let err = stream.next_chunk().await.unwrap_err();
        assert!(
            format!("{err:#}").contains("page 7 is unreadable"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn what_is_not_flushed_is_sent_at_the_end() -> anyhow::Result<()> {
        let mut stream = BasebackupStream::spawn(1000, 1, |out| {
            out.write_all(b"no flush")?;
            Ok(())
        });
        assert_eq!(
            stream.next_chunk().await?.as_deref(),
            Some(&b"no flush"[..])
        );
        assert!(stream.next_chunk().await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_stream_stops_the_producer() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut stream = BasebackupStream::spawn(100, 1, move |out| {
            let result = (0..1_000_000).try_for_each(|_| out.write_all(&[0; 100]));
            let _ = done_tx.send(result);
            Ok(())
        });
        assert!(stream.next_chunk().await.unwrap().is_some());
        drop(stream);
        let result = done_rx.await.expect("the producer reports");
        let err = result.expect_err("writes fail once the consumer is gone");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
