//! `START_WAL_PUSH`: a walproposer's connection. Its messages are decoded
//! by a reader task into a bounded queue; the acceptor processes them in
//! batches, flushing WAL once per batch before it answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use pq_proto::{BeMessage, ErrorFields, FeMessage, PostgresBackend};
use safekeeper_api::messages::{AcceptorMessage, ProposerMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acceptor::AcceptorError;
use crate::timeline::Timeline;

/// Messages decoded ahead of processing, at most.
const QUEUE: usize = 256;
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
    throttle: Option<WriteThrottle>,
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

    // Decoding errors travel through the queue, so the proposer is told.
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<ProposerMessage>>(QUEUE);
    let read = async move {
        loop {
            let item = match reader.read_message().await {
                Ok(Some(FeMessage::CopyData(data))) => {
                    ProposerMessage::decode(&data).context("decoding a proposer message")
                }
                Ok(None | Some(FeMessage::CopyDone) | Some(FeMessage::Terminate)) => return,
                Ok(Some(other)) => {
                    Err(anyhow::anyhow!("unexpected message in WAL push: {other:?}"))
                }
                Err(e) => Err(anyhow::Error::new(e).context("reading from the walproposer")),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
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
            loop {
                let Some(first) = rx.recv().await else {
                    return Ok(());
                };
                // Valid messages before a broken one are still processed.
                let mut broken = None;
                match first {
                    Ok(m) => batch.push(m),
                    Err(e) => broken = Some(e),
                }
                while broken.is_none() && batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Ok(m)) => batch.push(m),
                        Ok(Err(e)) => broken = Some(e),
                        Err(_) => break,
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
