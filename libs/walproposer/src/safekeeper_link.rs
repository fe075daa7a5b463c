//! One task per safekeeper: connects (and reconnects, with backoff), runs
//! `START_WAL_PUSH`, sends the driver's messages and forwards the answers.
//! Each connection has a generation number: messages meant for an earlier
//! connection are dropped, never sent on a new one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use safekeeper_api::messages::{AcceptorMessage, ProposerMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use utils::{TenantId, TimelineId};

#[derive(Debug)]
pub enum LinkEvent {
    Connected {
        index: usize,
        generation: u64,
    },
    Message {
        index: usize,
        generation: u64,
        message: AcceptorMessage,
    },
    Disconnected {
        index: usize,
        generation: u64,
        reason: String,
        /// The safekeeper refused the token (or its tenant): retrying will
        /// not help.
        refused: bool,
    },
}

/// Whether a connection failed because the safekeeper refused our token:
/// none where it wants one, a bad one (28P01, 28000), or one that does not
/// open the timeline (42501).
fn is_auth_refusal(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<pq_proto::ClientError>())
        .any(|e| {
            matches!(e, pq_proto::ClientError::Auth(_))
                || matches!(e.code(), Some("28P01" | "28000" | "42501"))
        })
}

/// The driver's side of a link.
pub struct Link {
    pub address: String,
    tx: mpsc::UnboundedSender<(u64, ProposerMessage)>,
    /// Bytes queued for sending and not yet written.
    queued: Arc<AtomicUsize>,
}

impl Link {
    pub fn send(&self, generation: u64, message: ProposerMessage) {
        if let ProposerMessage::Append(a) = &message {
            self.queued.fetch_add(a.wal_data.len(), Ordering::Relaxed);
        }
        let _ = self.tx.send((generation, message));
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

pub fn spawn(
    index: usize,
    address: String,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    token: Option<String>,
    events: mpsc::UnboundedSender<LinkEvent>,
    cancel: CancellationToken,
) -> Link {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, ProposerMessage)>();
    let queued = Arc::new(AtomicUsize::new(0));
    let task_queued = queued.clone();
    let task_address = address.clone();
    tokio::spawn(async move {
        let mut generation = 0u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            generation += 1;
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = run_connection(index, generation, &task_address, tenant_id, timeline_id, token.as_deref(), &events, &mut rx, &task_queued) => r,
            };
            let (reason, refused) = match result {
                Ok(()) => ("closed by the safekeeper".to_owned(), false),
                Err(e) => (format!("{e:#}"), is_auth_refusal(&e)),
            };
            if events
                .send(LinkEvent::Disconnected {
                    index,
                    generation,
                    reason,
                    refused,
                })
                .is_err()
            {
                return;
            }
            // Drop what was queued for the dead connection.
            while let Ok((_, message)) = rx.try_recv() {
                if let ProposerMessage::Append(a) = message {
                    task_queued.fetch_sub(a.wal_data.len(), Ordering::Relaxed);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    Link {
        address,
        tx,
        queued,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    index: usize,
    generation: u64,
    address: &str,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    token: Option<&str>,
    events: &mpsc::UnboundedSender<LinkEvent>,
    rx: &mut mpsc::UnboundedReceiver<(u64, ProposerMessage)>,
    queued: &AtomicUsize,
) -> anyhow::Result<()> {
    let options = format!("-c tenant_id={tenant_id} -c timeline_id={timeline_id}");
    let params = [
        ("user", "walproposer"),
        ("application_name", "walproposer"),
        ("options", options.as_str()),
    ];
    let mut client = tokio::time::timeout(
        Duration::from_secs(5),
        pq_proto::connect(address, &params, token),
    )
    .await
    .context("connecting timed out")?
    .with_context(|| format!("connecting to safekeeper {address}"))?;
    let mut copy = client
        .copy_both("START_WAL_PUSH")
        .await
        .context("starting the WAL push")?;
    info!(safekeeper = address, "connected");
    events.send(LinkEvent::Connected { index, generation })?;
    let (mut receiver, mut sender) = copy.split();
    loop {
        tokio::select! {
            incoming = receiver.recv() => {
                let Some(data) = incoming? else { return Ok(()) };
                let message = AcceptorMessage::decode(&data).context("decoding a safekeeper message")?;
                events.send(LinkEvent::Message { index, generation, message })?;
            }
            outgoing = rx.recv() => {
                let Some((message_generation, message)) = outgoing else { return Ok(()) };
                let bytes = match &message {
                    ProposerMessage::Append(a) => a.wal_data.len(),
                    _ => 0,
                };
                if message_generation == generation {
                    sender.send(&message.encode()).await?;
                    // Write out when nothing more is queued.
                    if rx.is_empty() {
                        sender.flush().await?;
                    }
                } else {
                    debug!("dropping a message for an earlier connection");
                }
                queued.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }
}
