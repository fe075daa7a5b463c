//! Pages from the pageserver: a few `pagestream` connections serving
//! batches of GetPage requests. A batch is pipelined (every request sent,
//! then every response read), so a sequential read of a megabyte costs
//! one round trip, not 128.
//!
//! A connection that fails is made again and its batch retried until the
//! batch's deadline (a pageserver restart is waited out); an error the
//! pageserver answers fails the batch at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use pageserver_api::pagestream::{RelSpec, Request, Response};
use postgres_format::constants::BLCKSZ;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};
use utils::{Lsn, TenantId, TimelineId};

/// The most requests in flight on one connection.
pub const MAX_BATCH: usize = 256;
/// How long a batch may wait for a pageserver that does not answer.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);

/// Where pages come from.
#[derive(Debug, Clone)]
pub struct PageSource {
    /// `host:port` of the pageserver's libpq port.
    pub addr: String,
    pub user: String,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// Every page is read as of this LSN (the compute's start), or with
    /// `latest`, as of the newest WAL the pageserver has, at least this
    /// LSN (a primary: see [`Request::GetLatestPage`]; it keeps reads above
    /// the GC horizon however long the compute runs).
    pub lsn: Lsn,
    pub latest: bool,
    /// The tenant's token, sent as the password.
    pub token: Option<String>,
}

struct Batch {
    rel: RelSpec,
    blocks: Vec<u32>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<Bytes>, String>>,
}

/// What the client has done so far.
#[derive(Debug, Default)]
pub struct PageCounters {
    pub pages: AtomicU64,
    pub batches: AtomicU64,
    pub reconnects: AtomicU64,
}

/// A pool of pagestream connections behind a queue of batches; callable
/// from any thread outside the runtime.
pub struct PageClient {
    runtime: tokio::runtime::Handle,
    queue: mpsc::Sender<Batch>,
    pub counters: Arc<PageCounters>,
}

impl PageClient {
    /// Starts `connections` workers on `runtime`. Connections are made
    /// when the first batch comes.
    pub fn start(runtime: tokio::runtime::Handle, source: PageSource, connections: usize) -> Self {
        let (queue, receiver) = mpsc::channel::<Batch>(connections * 4);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let counters = Arc::new(PageCounters::default());
        for worker in 0..connections {
            let (source, receiver, counters) = (source.clone(), receiver.clone(), counters.clone());
            runtime.spawn(async move {
                run_worker(worker, &source, &receiver, &counters).await;
            });
        }
        PageClient {
            runtime,
            queue,
            counters,
        }
    }

    /// The pages `blocks` of `rel`, in that order (at most [`MAX_BATCH`]).
    /// Blocks the calling thread.
    pub fn get_pages(&self, rel: RelSpec, blocks: Vec<u32>) -> Result<Vec<Bytes>, String> {
        debug_assert!(blocks.len() <= MAX_BATCH);
        let (reply, answer) = oneshot::channel();
        let batch = Batch {
            rel,
            blocks,
            deadline: Instant::now() + BATCH_DEADLINE,
            reply,
        };
        self.runtime.block_on(async {
            self.queue
                .send(batch)
                .await
                .map_err(|_| "the page client has stopped".to_owned())?;
            answer
                .await
                .map_err(|_| "the page client dropped the request".to_owned())?
        })
    }
}

async fn run_worker(
    worker: usize,
    source: &PageSource,
    receiver: &tokio::sync::Mutex<mpsc::Receiver<Batch>>,
    counters: &PageCounters,
) {
    // A batch that failed on a broken connection, to retry on the next.
    let mut pending: Option<Batch> = None;
    loop {
        let batch = match pending.take() {
            Some(batch) => batch,
            None => match receiver.lock().await.recv().await {
                Some(batch) => batch,
                None => return,
            },
        };
        let connected = connect(source).await;
        let mut client = match connected {
            Ok(client) => client,
            Err(e) => {
                pending = retry_or_fail(batch, format!("{e:#}"), worker);
                if pending.is_some() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
        };
        let query = format!("pagestream {} {}", source.tenant_id, source.timeline_id);
        let mut stream = match client.copy_both(&query).await {
            Ok(stream) => stream,
            Err(e) => {
                pending = retry_or_fail(batch, format!("{query}: {e}"), worker);
                continue;
            }
        };
        let mut next = Some(batch);
        while let Some(batch) = next.take() {
            match fetch(&mut stream, source, &batch).await {
                Ok(Ok(pages)) => {
                    counters
                        .pages
                        .fetch_add(pages.len() as u64, Ordering::Relaxed);
                    counters.batches.fetch_add(1, Ordering::Relaxed);
                    let _ = batch.reply.send(Ok(pages));
                }
                Ok(Err(answered)) => {
                    warn!("the pageserver refused a read: {answered}");
                    let _ = batch.reply.send(Err(answered));
                }
                Err(e) => {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    pending = retry_or_fail(batch, format!("{e:#}"), worker);
                    break;
                }
            }
            next = receiver.lock().await.recv().await;
            if next.is_none() {
                return;
            }
        }
    }
}

/// Keeps `batch` for another try unless its deadline has passed.
fn retry_or_fail(batch: Batch, error: String, worker: usize) -> Option<Batch> {
    if Instant::now() < batch.deadline {
        info!(worker, "pageserver connection failed, retrying: {error}");
        Some(batch)
    } else {
        warn!(worker, "giving up on a page read: {error}");
        let _ = batch.reply.send(Err(error));
        None
    }
}

async fn connect(source: &PageSource) -> anyhow::Result<pq_proto::client::Client> {
    let params = [
        ("user", source.user.as_str()),
        ("database", "postgres"),
        ("application_name", "compute_fs"),
    ];
    let connect = pq_proto::client::connect(source.addr.as_str(), &params, source.token.as_deref());
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .context("connecting to the pageserver: timed out")?
        .with_context(|| format!("connecting to the pageserver at {}", source.addr))
}

/// Sends every request of `batch`, then reads every answer. The outer
/// error is the connection's; the inner one the pageserver's answer.
async fn fetch(
    stream: &mut pq_proto::client::CopyBoth<'_>,
    source: &PageSource,
    batch: &Batch,
) -> anyhow::Result<Result<Vec<Bytes>, String>> {
    let io = async {
        for &block in &batch.blocks {
            let request = if source.latest {
                Request::GetLatestPage {
                    not_modified_since: source.lsn,
                    rel: batch.rel,
                    block,
                }
            } else {
                Request::GetPage {
                    lsn: source.lsn,
                    rel: batch.rel,
                    block,
                }
            };
            stream.send(&request.encode()).await?;
        }
        stream.flush().await?;
        let mut pages = Vec::with_capacity(batch.blocks.len());
        let mut refused = None;
        for &block in &batch.blocks {
            let data = stream
                .recv()
                .await?
                .context("the pageserver ended the page stream")?;
            match Response::decode(&data).context("decoding a pagestream response")? {
                Response::Page(page) if page.len() == BLCKSZ => pages.push(page),
                Response::Page(page) => {
                    bail!("block {block}: the pageserver sent {} bytes", page.len())
                }
                Response::Error(message) => {
                    refused.get_or_insert(format!(
                        "block {block} of {}/{}/{} fork {}: {message}",
                        batch.rel.spc_oid, batch.rel.db_oid, batch.rel.rel_node, batch.rel.fork
                    ));
                }
                other => bail!("unexpected answer to GetPage: {other:?}"),
            }
        }
        anyhow::Ok(match refused {
            Some(message) => Err(message),
            None => Ok(pages),
        })
    };
    let remaining = batch.deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(remaining.max(Duration::from_secs(1)), io)
        .await
        .context("the pageserver did not answer in time")?
}
