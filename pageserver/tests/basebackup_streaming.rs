//! Base backups are streamed: the page service sends the tar in bounded
//! chunks as it is produced, so the memory a backup takes does not grow
//! with the database; the streamed bytes are those a whole-tar
//! construction gives; and a failure after the COPY began ends it with an
//! error, never with a tar that looks complete.
//!
//! Memory is measured with a counting global allocator (this test binary's
//! own), so the tests here take a lock and run one at a time.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use common::initdb;
use pageserver::basebackup::{
    self, BasebackupStream, RelationData, STREAM_CHUNK_SIZE, STREAM_QUEUE_DEPTH,
};
use pageserver::import_datadir::{end_of_wal, import_datadir};
use pageserver::page_service::{self, BasebackupFn, TimelineLookup};
use pageserver::tenant::timeline::{RecordLsn, Timeline};
use postgres_format::constants::{BLCKSZ, DEFAULTTABLESPACE_OID};
use postgres_format::control_file::ControlFile;
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::PgMajorVersion;
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;
use utils::{Lsn, TenantId, TimelineId};

// ---------------------------------------------------------------------------
// Heap accounting.

/// Counts the bytes allocated and the most allocated at once.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counters are only bookkeeping.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Starts measuring: the peak is reset to what is allocated now, which is
/// returned.
fn start_measuring() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The most allocated at once since `start_measuring` returned `baseline`,
/// above it.
fn peak_above(baseline: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(baseline)
}

/// One test at a time: the allocator's counts are the whole process's.
async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

// ---------------------------------------------------------------------------
// Timelines.

const MIB: usize = 1024 * 1024;

/// The large relation's size: 128 MiB.
const LARGE_REL_PAGES: u32 = 16 * 1024;

/// A new root timeline holding a fresh `initdb` cluster.
fn imported_initdb() -> anyhow::Result<Arc<Timeline>> {
    let dir = common::pg_tempdir()?;
    let pgdata = dir.path().join("initdb");
    initdb(&pgdata)?;
    let (start, end) = end_of_wal(&pgdata)?;
    let at = RecordLsn {
        last: end,
        prev: start,
    };
    let timeline = Timeline::new_root(
        TenantId::generate(),
        TimelineId::generate(),
        PgMajorVersion::V15,
        at,
    );
    import_datadir(&timeline, &pgdata, at.last, at.prev)?;
    Ok(Arc::new(timeline))
}

/// Page `block` of the large relation: a pattern that differs per block.
fn large_rel_page(block: u32) -> Bytes {
    let seed = block.wrapping_mul(2_654_435_761);
    let page: Vec<u8> = (0..BLCKSZ)
        .map(|i| (seed.wrapping_add(i as u32 * 7) >> 3) as u8)
        .collect();
    Bytes::from(page)
}

/// An `initdb` cluster with one more relation of [`LARGE_REL_PAGES`] pages,
/// built once for the tests that need it.
fn large_timeline() -> anyhow::Result<Arc<Timeline>> {
    static LARGE: OnceLock<Arc<Timeline>> = OnceLock::new();
    if let Some(timeline) = LARGE.get() {
        return Ok(timeline.clone());
    }
    let timeline = imported_initdb()?;
    let mut last = timeline.last_record();
    let (spc_oid, db_oid) = timeline
        .list_dbs(last.last)?
        .into_iter()
        .find(|(spc, _)| *spc == DEFAULTTABLESPACE_OID)
        .context("initdb made a database in the default tablespace")?;
    let rel = RelTag {
        node: RelFileNode {
            spc_oid,
            db_oid,
            rel_node: 990_000,
        },
        fork: ForkNumber::Main,
    };
    for first in (0..LARGE_REL_PAGES).step_by(1024) {
        let lsn = last.last + 0x100;
        let mut modification = timeline.begin_modification(lsn);
        for block in first..LARGE_REL_PAGES.min(first + 1024) {
            modification.put_rel_page_image(rel, block, large_rel_page(block))?;
        }
        let record = RecordLsn {
            last: lsn,
            prev: last.last,
        };
        modification.commit(record)?;
        last = record;
    }
    ensure!(timeline.get_rel_size(rel, last.last)? == Some(LARGE_REL_PAGES));
    Ok(LARGE.get_or_init(|| timeline).clone())
}

// ---------------------------------------------------------------------------
// The page service.

struct Lookup(HashMap<(TenantId, TimelineId), Arc<Timeline>>);

impl TimelineLookup for Lookup {
    fn get_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Arc<Timeline>> {
        self.0
            .get(&(tenant_id, timeline_id))
            .cloned()
            .with_context(|| format!("timeline {tenant_id}/{timeline_id} not found"))
    }
}

/// A page service serving `timeline`, producing base backups with
/// `basebackup`; stopped when dropped.
struct Server {
    addr: String,
    cancel: CancellationToken,
}

impl Server {
    async fn start(timeline: &Arc<Timeline>, basebackup: BasebackupFn) -> anyhow::Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let cancel = CancellationToken::new();
        let lookup: Arc<dyn TimelineLookup> = Arc::new(Lookup(HashMap::from([(
            (timeline.tenant_id, timeline.timeline_id),
            timeline.clone(),
        )])));
        tokio::spawn(page_service::serve(
            listener,
            lookup,
            basebackup,
            4,
            None,
            cancel.clone(),
        ));
        Ok(Server { addr, cancel })
    }

    async fn connect(&self) -> anyhow::Result<pq_proto::Client> {
        pq_proto::connect(self.addr.as_str(), &[("user", "test")], None)
            .await
            .context("connecting to the page service")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What a client saw of one `basebackup` command.
#[derive(Debug, Default)]
struct Received {
    bytes: u64,
    chunks: usize,
    largest_chunk: usize,
}

/// Runs `query` (a `basebackup` command) and writes the COPY data to `out`
/// as it arrives.
async fn receive(
    client: &mut pq_proto::Client,
    query: &str,
    out: &mut impl Write,
) -> anyhow::Result<Received> {
    let mut received = Received::default();
    let mut copy = client.copy_out(query).await?;
    while let Some(chunk) = copy.recv().await? {
        out.write_all(&chunk)?;
        received.bytes += chunk.len() as u64;
        received.chunks += 1;
        received.largest_chunk = received.largest_chunk.max(chunk.len());
    }
    copy.finish().await?;
    Ok(received)
}

// ---------------------------------------------------------------------------
// Comparing tars.

fn octal(field: &[u8]) -> anyhow::Result<usize> {
    let text = std::str::from_utf8(field)?.trim_matches(|c: char| c == '\0' || c == ' ');
    usize::from_str_radix(text, 8).with_context(|| format!("tar header field {text:?}"))
}

/// `tar` with what depends on the clock blanked (each header's mtime and
/// checksum, the contents of pg_control and of the fabricated WAL, whose
/// checkpoint carries the time), and pg_control's contents.
fn without_clock(tar: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut out = tar.to_vec();
    let mut control = None;
    let mut at = 0;
    loop {
        let header = out
            .get(at..at + 512)
            .context("the tar ends without its end blocks")?;
        if header.iter().all(|&b| b == 0) {
            ensure!(
                out[at..].len() >= 1024 && out[at..].iter().all(|&b| b == 0),
                "the tar does not end with zero blocks"
            );
            break;
        }
        let name = std::str::from_utf8(&header[..100])?
            .trim_end_matches('\0')
            .to_owned();
        let size = octal(&header[124..136])?;
        out[at + 136..at + 156].fill(0);
        let data = at + 512;
        let end = data + size;
        ensure!(end <= out.len(), "entry {name} runs past the tar's end");
        if name == "global/pg_control" {
            control = Some(out[data..end].to_vec());
        }
        if name == "global/pg_control" || name.starts_with("pg_wal/0") {
            out[data..end].fill(0);
        }
        at = data + size.div_ceil(512) * 512;
    }
    Ok((out, control.context("the tar has no global/pg_control")?))
}

/// Asserts that two base backups are the same but for their clocks.
fn assert_same_backup(streamed: &[u8], reference: &[u8]) -> anyhow::Result<()> {
    assert_eq!(
        streamed.len(),
        reference.len(),
        "streamed and reference sizes"
    );
    let (streamed, streamed_control) = without_clock(streamed)?;
    let (reference, reference_control) = without_clock(reference)?;
    if let Some(at) = streamed.iter().zip(&reference).position(|(a, b)| a != b) {
        panic!("the streamed tar differs from the reference at byte {at}");
    }
    let decode = |bytes: &[u8]| -> anyhow::Result<ControlFile> {
        let mut control = ControlFile::decode(bytes, PgMajorVersion::V15)?;
        control.time = 0;
        control.checkpoint_copy.time = 0;
        Ok(control)
    };
    assert_eq!(decode(&streamed_control)?, decode(&reference_control)?);
    Ok(())
}

/// The whole-tar construction: the base backup built into one buffer.
fn reference_backup(timeline: &Timeline, data: RelationData) -> anyhow::Result<Vec<u8>> {
    let mut tar = Vec::new();
    basebackup::basebackup_at(timeline, None, data, &mut tar)?;
    Ok(tar)
}

// ---------------------------------------------------------------------------
// Tests.

/// A base backup of ~170 MB through the page service takes a small,
/// bounded amount of memory (before streaming, the whole tar was built in
/// one buffer first), arrives in bounded chunks, and is the tar the
/// whole-tar construction gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_service_streams_a_large_backup_in_bounded_memory() -> anyhow::Result<()> {
    let _serial = serial().await;
    let timeline = tokio::task::block_in_place(large_timeline)?;
    let server = Server::start(&timeline, basebackup::basebackup_at).await?;
    let mut client = server.connect().await?;
    let mut file = tempfile::tempfile()?;
    let query = format!("basebackup {} {}", timeline.tenant_id, timeline.timeline_id);

    let baseline = start_measuring();
    let received = receive(&mut client, &query, &mut file).await?;
    let peak = peak_above(baseline);

    let relation_bytes = LARGE_REL_PAGES as u64 * BLCKSZ as u64;
    assert!(
        received.bytes > relation_bytes,
        "{} bytes received",
        received.bytes
    );
    // The fabricated WAL segments (16 MiB each, one or two) are built whole
    // by the WAL writer; everything else is a few chunks.
    let bound = 40 * MIB;
    println!(
        "base backup of {} bytes in {} chunks (largest {}): peak heap {} bytes above the baseline",
        received.bytes, received.chunks, received.largest_chunk, peak
    );
    assert!(
        peak <= bound,
        "a base backup of {} bytes took {peak} bytes of heap at its peak (bound {bound})",
        received.bytes
    );
    assert!(
        received.largest_chunk <= 256 * 1024,
        "CopyData chunks of up to {} bytes",
        received.largest_chunk
    );
    assert!(received.chunks as u64 >= received.bytes / (256 * 1024));

    let mut streamed = Vec::new();
    file.rewind()?;
    file.read_to_end(&mut streamed)?;
    drop(file);
    let reference =
        tokio::task::block_in_place(|| reference_backup(&timeline, RelationData::Full))?;
    assert_same_backup(&streamed, &reference)?;
    Ok(())
}

/// Counts what is written through it.
struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    written: Arc<AtomicUsize>,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.written.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The stream the page service sends from: its first chunk arrives when
/// the tar is barely begun (a few chunks of ~170 MB, long before the large
/// relation's last page is read), and a producer held back fills the
/// queue and waits: it never runs more than a few chunks ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backup_is_produced_as_it_is_taken() -> anyhow::Result<()> {
    let _serial = serial().await;
    let timeline = tokio::task::block_in_place(large_timeline)?;
    let written = Arc::new(AtomicUsize::new(0));
    let (producer_timeline, counter) = (timeline.clone(), written.clone());
    let mut stream = BasebackupStream::spawn(STREAM_CHUNK_SIZE, STREAM_QUEUE_DEPTH, move |out| {
        let mut out = CountingWriter {
            inner: out,
            written: counter,
        };
        basebackup::basebackup_at(&producer_timeline, None, RelationData::Full, &mut out)
    });
    // Written and not yet taken: the queued chunks and the one being
    // queued, at most.
    let most_ahead = (STREAM_QUEUE_DEPTH + 1) * STREAM_CHUNK_SIZE;
    let relation_bytes = LARGE_REL_PAGES as usize * BLCKSZ;

    let first = stream.next_chunk().await?.context("a first chunk")?;
    let written_at_first = written.load(Ordering::SeqCst);
    assert!(
        written_at_first <= first.len() + most_ahead && written_at_first < relation_bytes / 100,
        "{written_at_first} bytes of tar were written before the first chunk arrived"
    );
    let mut taken = first.len();
    // Held back, the producer runs ahead until the queue is full, and
    // waits there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while written.load(Ordering::SeqCst) - taken < most_ahead {
        ensure!(
            Instant::now() < deadline,
            "the producer stopped {} bytes ahead",
            written.load(Ordering::SeqCst) - taken
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut chunks = 1;
    while let Some(chunk) = stream.next_chunk().await? {
        assert!(chunk.len() <= STREAM_CHUNK_SIZE);
        taken += chunk.len();
        chunks += 1;
        let ahead = written.load(Ordering::SeqCst) - taken;
        assert!(
            ahead <= most_ahead,
            "the producer ran {ahead} bytes ahead of the consumer"
        );
    }
    assert_eq!(taken, written.load(Ordering::SeqCst));
    assert!(taken > relation_bytes, "{taken} bytes");
    println!("{taken} bytes in {chunks} chunks; {written_at_first} written before the first chunk");
    Ok(())
}

/// Through the page service, full and lazy base backups of a small
/// timeline are the tars the whole-tar construction gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_backups_equal_the_whole_tar() -> anyhow::Result<()> {
    let _serial = serial().await;
    let timeline = tokio::task::block_in_place(imported_initdb)?;
    let server = Server::start(&timeline, basebackup::basebackup_at).await?;
    let mut client = server.connect().await?;
    let lsn = timeline.last_record_lsn();
    for (data, option) in [(RelationData::Full, ""), (RelationData::SizesOnly, " lazy")] {
        let query = format!(
            "basebackup {} {} {lsn}{option}",
            timeline.tenant_id, timeline.timeline_id
        );
        let mut streamed = Vec::new();
        let received = receive(&mut client, &query, &mut streamed).await?;
        let reference = tokio::task::block_in_place(|| reference_backup(&timeline, data))?;
        assert_same_backup(&streamed, &reference)?;
        if data == RelationData::Full {
            assert!(received.chunks > 1, "{received:?}");
        }
    }
    Ok(())
}

/// Writes 1 MiB of data, then fails: a backup that breaks mid-way.
fn fails_after_one_mib(
    _: &Timeline,
    _: Option<Lsn>,
    _: RelationData,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    out.write_all(&vec![7u8; MIB])?;
    anyhow::bail!("reading page 12345: the disk is on fire")
}

/// Fails before writing anything.
fn fails_at_once(
    _: &Timeline,
    _: Option<Lsn>,
    _: RelationData,
    _: &mut dyn Write,
) -> anyhow::Result<()> {
    anyhow::bail!("LSN 0/1 is below the GC horizon")
}

/// A backup that fails after its COPY began (data was sent) ends the COPY
/// with an error response: the client sees the failure, and the session
/// goes on. One that fails before sending anything is refused plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_ends_the_copy_with_an_error() -> anyhow::Result<()> {
    let _serial = serial().await;
    let timeline = Arc::new(Timeline::new_root(
        TenantId::generate(),
        TimelineId::generate(),
        PgMajorVersion::V15,
        RecordLsn {
            last: Lsn(0x100_0028),
            prev: Lsn(0x100_0000),
        },
    ));
    let query = format!("basebackup {} {}", timeline.tenant_id, timeline.timeline_id);

    let server = Server::start(&timeline, fails_after_one_mib).await?;
    let mut client = server.connect().await?;
    for _ in 0..2 {
        let mut copy = client.copy_out(&query).await?;
        let mut bytes = 0;
        let error = loop {
            match copy.recv().await {
                Ok(Some(chunk)) => bytes += chunk.len(),
                Ok(None) => panic!("the COPY ended normally after {bytes} bytes"),
                Err(e) => break e,
            }
        };
        copy.finish().await?;
        assert!(
            bytes > 0 && bytes < MIB,
            "{bytes} bytes arrived before the error"
        );
        let message = error.to_string();
        assert!(message.contains("the disk is on fire"), "{message}");
    }
    drop(client);

    let server = Server::start(&timeline, fails_at_once).await?;
    let mut client = server.connect().await?;
    let error = client
        .copy_out(&query)
        .await
        .expect_err("a backup refused up front");
    assert!(error.to_string().contains("GC horizon"), "{error}");
    // The session goes on.
    let error = client.copy_out(&query).await.expect_err("refused again");
    assert!(error.to_string().contains("GC horizon"), "{error}");
    Ok(())
}
