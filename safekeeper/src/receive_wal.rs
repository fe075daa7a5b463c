//! `START_WAL_PUSH`: a walproposer's connection. Its messages are decoded
//! by a reader task into a queue bounded in messages and in bytes
//! ([`ReceiveConf::queue_bytes`]: when the messages queued and in processing
//! hold that many bytes, the reader stops reading, and TCP pushes back on
//! the walproposer); the acceptor processes them in batches, flushing WAL
//! once per batch before it answers. A connection thus holds at most
//! `queue_bytes` plus one message being read (at most the protocol's
//! message limit) of WAL in memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use pq_proto::{BeMessage, ErrorFields, FeMessage, PostgresBackend};
use safekeeper_api::messages::{AcceptorMessage, ProposerMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acceptor::AcceptorError;
use crate::timeline::Timeline;

/// Messages decoded ahead of processing, at most.
const QUEUE: usize = 256;
/// Bytes of messages decoded ahead of or in processing, at most, by
/// default: twice what a walproposer keeps in flight to one safekeeper.
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Messages processed before one flush, at most.
const BATCH: usize = 64;
/// Persist the commit LSN when it moved this far since the last persist.
const PERSIST_EVERY: u64 = 16 * 1024 * 1024;

/// For tests: a disk that takes WAL at most this fast. Each batch's
/// acknowledgement is held back until its bytes would have been written at
/// this rate, so the walproposer sees a slow safekeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteThrottle {
    pub bytes_per_second: u64,
}

impl WriteThrottle {
    fn delay(self, bytes: usize) -> std::time::Duration {
        let rate = self.bytes_per_second.max(1) as f64;
        std::time::Duration::from_secs_f64(bytes as f64 / rate)
    }
}

/// How WAL pushes are received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveConf {
    /// See the module doc.
    pub queue_bytes: usize,
    pub throttle: Option<WriteThrottle>,
}

impl Default for ReceiveConf {
    fn default() -> Self {
        ReceiveConf {
            queue_bytes: DEFAULT_QUEUE_BYTES,
            throttle: None,
        }
    }
}

/// The sending side of a queue bounded in entries and in bytes: each entry
/// holds permits for its bytes until the receiver drops them (after
/// processing it), and [`ByteQueue::send`] waits for permits.
struct ByteQueue<T> {
    tx: mpsc::Sender<(T, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    max_bytes: usize,
}

type ByteQueueReceiver<T> = mpsc::Receiver<(T, OwnedSemaphorePermit)>;

impl<T> ByteQueue<T> {
    /// A queue of at most `entries` entries and `max_bytes` bytes.
    fn new(entries: usize, max_bytes: usize) -> (ByteQueue<T>, ByteQueueReceiver<T>) {
        let max_bytes = max_bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (tx, rx) = mpsc::channel(entries);
        let queue = ByteQueue {
            tx,
            budget: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        };
        (queue, rx)
    }

    /// Queues `item` of `bytes` bytes once there is room for it (an item
    /// larger than the whole budget waits for an empty queue). `Err` if the
    /// receiver is gone.
    async fn send(&self, item: T, bytes: usize) -> Result<(), T> {
        // Lossless: max_bytes <= u32::MAX.
        let cost = bytes.min(self.max_bytes) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(cost).await else {
            return Err(item);
        };
        self.tx
            .send((item, permit))
            .await
            .map_err(|mpsc::error::SendError((item, _))| item)
    }
}

struct ConnectionCount(Arc<Timeline>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.walproposers.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::metrics().walproposer_connections.dec();
    }
}

pub async fn handle<S>(
    mut pgb: PostgresBackend<S>,
    timeline: Arc<Timeline>,
    conf: ReceiveConf,
    cancel: CancellationToken,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    timeline.walproposers.fetch_add(1, Ordering::Relaxed);
    crate::metrics::metrics().walproposer_connections.inc();
    let _count = ConnectionCount(timeline.clone());
    pgb.write_message(&BeMessage::CopyBothResponse(pq_proto::Format::Binary))
        .await?;
    pgb.flush().await?;
    let (mut reader, mut writer) = pgb.split();

    let throttle = conf.throttle;
    // Decoding errors travel through the queue, so the proposer is told.
    let (tx, mut rx) = ByteQueue::<anyhow::Result<ProposerMessage>>::new(QUEUE, conf.queue_bytes);
    let read = async move {
        loop {
            let mut bytes = 0;
            let item = match reader.read_message().await {
                Ok(Some(FeMessage::CopyData(data))) => {
                    bytes = data.len();
                    ProposerMessage::decode(&data).context("decoding a proposer message")
                }
                Ok(None | Some(FeMessage::CopyDone) | Some(FeMessage::Terminate)) => return,
                Ok(Some(other)) => {
                    Err(anyhow::anyhow!("unexpected message in WAL push: {other:?}"))
                }
                Err(e) => Err(anyhow::Error::new(e).context("reading from the walproposer")),
            };
            let failed = item.is_err();
            if tx.send(item, bytes).await.is_err() || failed {
                return;
            }
        }
    };

    let process_timeline = timeline.clone();
    let process = async move {
        let timeline = process_timeline;
        let result: anyhow::Result<()> = async {
            let mut greeted = false;
            let mut batch = Vec::with_capacity(BATCH);
            // The queue's byte permits of the batch, held until it is processed.
            let mut permits = Vec::with_capacity(BATCH);
            loop {
                let Some((first, permit)) = rx.recv().await else {
                    return Ok(());
                };
                permits.push(permit);
                // Valid messages before a broken one are still processed.
                let mut broken = None;
                match first {
                    Ok(m) => batch.push(m),
                    Err(e) => broken = Some(e),
                }
                while broken.is_none() && batch.len() < BATCH {
                    let Ok((item, permit)) = rx.try_recv() else {
                        break;
                    };
                    permits.push(permit);
                    match item {
                        Ok(m) => batch.push(m),
                        Err(e) => broken = Some(e),
                    }
                }
                if batch.is_empty() {
                    return Err(broken.expect("an error when nothing was received"));
                }
                if !greeted {
                    if !matches!(batch[0], ProposerMessage::Greeting(_)) {
                        return Err(AcceptorError::NotGreeted("the first message").into());
                    }
                    greeted = true;
                }
                let appended: usize = batch
                    .iter()
                    .map(|m| match m {
                        ProposerMessage::Append(a) => a.wal_data.len(),
                        _ => 0,
                    })
                    .sum();
                let replies = tokio::task::block_in_place(|| process_batch(&timeline, &mut batch))?;
                permits.clear();
                if let Some(throttle) = throttle.filter(|_| appended > 0) {
                    tokio::time::sleep(throttle.delay(appended)).await;
                }
                let pageserver_lsn = timeline
                    .feedback
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pageserver_last_record_lsn;
                for mut reply in replies {
                    if let AcceptorMessage::Append(response) = &mut reply {
                        response.pageserver_last_record_lsn = pageserver_lsn;
                    }
                    writer
                        .write_message(&BeMessage::CopyData(&reply.encode()))
                        .await?;
                }
                writer.flush().await?;
                if let Some(e) = broken {
                    return Err(e);
                }
            }
        }
        .await;
        if let Err(e) = &result {
            // Tell the proposer why before the connection closes.
            let fields = ErrorFields::fatal("XX000", format!("{e:#}"));
            let _ = writer
                .write_message(&BeMessage::ErrorResponse(&fields))
                .await;
            let _ = writer.flush().await;
        }
        result
    };

    let read_task = tokio::spawn(read);
    let result = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        r = process => r,
    };
    read_task.abort();
    match &result {
        Err(e) => warn!("walproposer connection failed: {e:#}"),
        Ok(()) => info!("walproposer disconnected"),
    }
    let mut acceptor = timeline.acceptor();
    if let Err(e) = acceptor.persist_progress() {
        warn!("persisting progress: {e:#}");
    }
    result
}

fn process_batch(
    timeline: &Timeline,
    batch: &mut Vec<ProposerMessage>,
) -> anyhow::Result<Vec<AcceptorMessage>> {
    let mut acceptor = timeline.acceptor();
    let mut replies = Vec::new();
    let mut appended = false;
    let mut failure = None;
    for message in batch.drain(..) {
        appended |= matches!(message, ProposerMessage::Append(_));
        match acceptor.process(message) {
            Ok(Some(reply)) => replies.push(reply),
            Ok(None) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Flush what was accepted even if a later message was refused.
    if appended {
        replies.push(acceptor.flush()?);
    }
    if acceptor
        .commit_lsn()
        .0
        .saturating_sub(acceptor.state.commit_lsn.0)
        >= PERSIST_EVERY
    {
        acceptor.persist_progress()?;
    }
    timeline.publish(&acceptor);
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(replies),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SHORT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn the_queue_pushes_back_at_its_byte_budget() {
        let (queue, mut rx) = ByteQueue::<&str>::new(QUEUE, 100);
        queue.send("a", 60).await.unwrap();
        queue.send("b", 40).await.unwrap();
        // Well within the entry bound, but the bytes are spent: it waits.
        let blocked = tokio::time::timeout(SHORT, queue.send("c", 1)).await;
        assert!(
            blocked.is_err(),
            "a send beyond the byte budget did not wait"
        );
        // Received but not processed: its bytes are still held.
        let (first, permit) = rx.recv().await.unwrap();
        assert_eq!(first, "a");
        let blocked = tokio::time::timeout(SHORT, queue.send("c", 1)).await;
        assert!(blocked.is_err(), "bytes in processing were counted as free");
        drop(permit);
        queue.send("c", 60).await.unwrap();
        assert_eq!(queue.budget.available_permits(), 0);
    }

    #[tokio::test]
    async fn an_item_larger_than_the_budget_waits_for_an_empty_queue() {
        let (queue, mut rx) = ByteQueue::<u32>::new(QUEUE, 100);
        queue.send(1, 10).await.unwrap();
        let blocked = tokio::time::timeout(SHORT, queue.send(2, 16 << 20)).await;
        assert!(blocked.is_err());
        drop(rx.recv().await.unwrap());
        tokio::time::timeout(SHORT, queue.send(2, 16 << 20))
            .await
            .expect("a huge item goes through an empty queue")
            .unwrap();
        let (item, permit) = rx.recv().await.unwrap();
        assert_eq!((item, permit.num_permits()), (2, 100));
    }

    #[tokio::test]
    async fn a_closed_queue_returns_the_item() {
        let (queue, rx) = ByteQueue::<u32>::new(QUEUE, 100);
        drop(rx);
        assert_eq!(queue.send(7, 10).await, Err(7));
    }
}
