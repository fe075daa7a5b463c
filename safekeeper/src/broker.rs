//! Publishing the state of this safekeeper's active timelines to the storage
//! broker, so that pageservers learn which safekeeper to stream WAL from.
//!
//! One long-lived `publish` stream carries, about once a second, a
//! [`SafekeeperTimelineInfo`] for every timeline that is *active*: a
//! walproposer or WAL reader is connected now, or was within the last
//! [`ACTIVE_FOR`], or its term, flush or commit LSN moved in that window,
//! or it has committed WAL no pageserver has reported having (a compute
//! that committed and left before any round saw it must still reach the
//! pageserver). Idle timelines are not published: the broker keeps no
//! state, so a pageserver hears of a timeline once it is used again.
//!
//! The publisher never waits on the WAL service and the WAL service never
//! waits on it: states are taken from each timeline briefly, on a blocking
//! thread, and handed to the stream through a bounded queue; what does not
//! fit is dropped, as the next round republishes it anyway. When the broker
//! is unreachable the stream is retried with backoff (up to
//! [`MAX_BACKOFF`]), with one warning per outage.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use storage_broker::{BrokerClient, BrokerError, SafekeeperTimelineInfo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use utils::{Lsn, NodeId, TenantId, TimelineId};

use crate::timeline::{GlobalTimelines, Progress, Timeline};

/// How often every active timeline is published.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// A timeline stays active this long after its last connection closed or
/// its WAL position last moved.
pub const ACTIVE_FOR: Duration = Duration::from_secs(5);
/// The longest wait between two attempts to reach the broker.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The first wait after a failed attempt; doubled on each failure.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// States queued for the stream, at most (about one round of a large
/// safekeeper). A round is skipped while the previous one is still queued.
const QUEUE: usize = 16_384;

/// What this safekeeper tells the broker about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_id: NodeId,
    /// libpq `host:port` of the WAL service, for pageservers.
    pub pg_connstr: String,
    /// `host:port` of the HTTP management API.
    pub http_connstr: String,
}

/// The address to publish for a listener: `advertise` if set, else the
/// listen address as configured (the bound one if it asked for port 0).
/// Warns when the result is a wildcard address, which nobody can connect to.
pub fn advertised_addr(
    key: &str,
    advertise: Option<&str>,
    listen: &str,
    listener: &TcpListener,
) -> String {
    if let Some(addr) = advertise {
        return addr.to_owned();
    }
    let mut addr = listen.to_owned();
    if listen.ends_with(":0") {
        if let Ok(bound) = listener.local_addr() {
            addr = bound.to_string();
        }
    }
    if addr
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
    {
        warn!("publishing {addr:?}, a wildcard address, to the storage broker: set {key} to an address pageservers can reach");
    }
    addr
}

type TimelineKey = (TenantId, TimelineId);

struct Seen {
    progress: Progress,
    last_active: Option<Instant>,
}

/// Which timelines are active: remembers, per timeline, the last progress
/// seen and when it last had connections or moved.
#[derive(Default)]
pub struct ActivityTracker {
    seen: HashMap<TimelineKey, Seen>,
}

impl ActivityTracker {
    /// Records what a timeline looks like at `now`; whether it is active.
    /// The first observation of a timeline is the baseline: it is active
    /// then only if it has connections.
    pub fn observe(
        &mut self,
        key: TimelineKey,
        connections: usize,
        progress: Progress,
        now: Instant,
    ) -> bool {
        let seen = self.seen.entry(key).or_insert(Seen {
            progress,
            last_active: None,
        });
        if connections > 0 || seen.progress != progress {
            seen.last_active = Some(now);
        }
        seen.progress = progress;
        seen.last_active
            .is_some_and(|at| now.saturating_duration_since(at) <= ACTIVE_FOR)
    }

    /// Forgets the timelines not in `keep` (deleted ones).
    pub fn retain(&mut self, keep: &HashSet<TimelineKey>) {
        self.seen.retain(|key, _| keep.contains(key));
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The state of one timeline as published. Takes the acceptor's lock
/// briefly (twice); call it off the async workers.
pub fn timeline_info(timeline: &Timeline, me: &Identity) -> SafekeeperTimelineInfo {
    let local_start_lsn = timeline.acceptor().state.local_start_lsn;
    let status = timeline.status();
    SafekeeperTimelineInfo {
        safekeeper_id: me.node_id,
        tenant_id: status.tenant_id,
        timeline_id: status.timeline_id,
        term: status.term,
        last_log_term: status.last_log_term,
        flush_lsn: status.flush_lsn,
        commit_lsn: status.commit_lsn,
        backup_lsn: status.backup_lsn,
        remote_consistent_lsn: status.remote_consistent_lsn,
        peer_horizon_lsn: status.peer_horizon_lsn,
        local_start_lsn: if local_start_lsn == Lsn::INVALID {
            status.timeline_start_lsn
        } else {
            local_start_lsn
        },
        safekeeper_connstr: me.pg_connstr.clone(),
        http_connstr: me.http_connstr.clone(),
    }
}

/// One round: observes every timeline and returns the states of the active
/// ones. Blocking (it takes timeline locks).
pub fn collect(
    timelines: &GlobalTimelines,
    tracker: &mut ActivityTracker,
    me: &Identity,
    now: Instant,
) -> Vec<SafekeeperTimelineInfo> {
    let all = timelines.list();
    let mut infos = Vec::new();
    let mut keep = HashSet::with_capacity(all.len());
    for timeline in &all {
        let key = (timeline.tenant_id, timeline.timeline_id);
        keep.insert(key);
        let connections = timeline.walproposers.load(Ordering::Relaxed)
            + timeline.walsenders.load(Ordering::Relaxed);
        let progress = *timeline.subscribe().borrow();
        let active = tracker.observe(key, connections, progress, now);
        if active || timeline.pageserver_behind() {
            infos.push(timeline_info(timeline, me));
        }
    }
    tracker.retain(&keep);
    infos
}

/// A broker error and its sources (for a status: the transport error
/// behind it), on one line, without repeats.
fn error_chain(err: &BrokerError) -> String {
    use std::error::Error;
    let mut text = err.to_string();
    let mut source = match err {
        BrokerError::Status(status) => status.source(),
        other => other.source(),
    };
    while let Some(err) = source {
        let message = err.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = err.source();
    }
    text
}

type CallFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// A `publish` call in flight, fed through a queue.
struct Call {
    tx: mpsc::Sender<SafekeeperTimelineInfo>,
    /// Set once the call took a state from the queue: it is connected.
    flowing: Arc<AtomicBool>,
    result: CallFuture,
}

impl Call {
    fn start(client: &BrokerClient) -> Call {
        let (tx, rx) = mpsc::channel(QUEUE);
        let flowing = Arc::new(AtomicBool::new(false));
        let flag = flowing.clone();
        let infos = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|info| (info, rx))
        })
        .inspect(move |_| flag.store(true, Ordering::Relaxed));
        let client = client.clone();
        Call {
            tx,
            flowing,
            result: Box::pin(async move { client.publish(infos).await }),
        }
    }

    /// Queues one round, unless the previous one is still queued (the
    /// stream is slow or not connected yet); how many states were dropped.
    fn send(&self, infos: Vec<SafekeeperTimelineInfo>) -> usize {
        if self.tx.capacity() < self.tx.max_capacity() {
            return infos.len();
        }
        let total = infos.len();
        for (sent, info) in infos.into_iter().enumerate() {
            if self.tx.try_send(info).is_err() {
                return total - sent;
            }
        }
        0
    }
}

/// Resolves when the call ends; never if there is none.
async fn call_ended(call: &mut Option<Call>) -> Result<(), BrokerError> {
    match call {
        Some(call) => call.result.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Publishes the active timelines to the broker until `cancel` fires.
pub async fn publish_timelines(
    client: BrokerClient,
    timelines: Arc<GlobalTimelines>,
    me: Identity,
    cancel: CancellationToken,
) {
    let endpoint = client.endpoint().to_owned();
    info!(
        "publishing active timelines to the storage broker at {endpoint} as safekeeper {} (WAL service {}, HTTP {})",
        me.node_id, me.pg_connstr, me.http_connstr
    );
    let mut tracker = ActivityTracker::default();
    let mut ticker = tokio::time::interval(PUBLISH_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut call: Option<Call> = None;
    let mut retry_at = Instant::now();
    let mut backoff = MIN_BACKOFF;
    // Whether the current outage was reported.
    let mut warned = false;
    let mut dropping = false;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            result = call_ended(&mut call) => {
                call = None;
                let reason = match result {
                    Ok(()) => "the broker ended the publish stream".to_owned(),
                    Err(err) => error_chain(&err),
                };
                if warned {
                    debug!("publishing to the storage broker at {endpoint} failed again: {reason}");
                } else {
                    warn!(
                        "cannot publish to the storage broker at {endpoint}: {reason}; \
                         retrying in the background (backoff up to {MAX_BACKOFF:?})"
                    );
                    warned = true;
                }
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                let infos = match tokio::task::block_in_place(|| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        collect(&timelines, &mut tracker, &me, now)
                    }))
                }) {
                    Ok(infos) => infos,
                    Err(_) => {
                        error!("collecting timeline states for the storage broker panicked");
                        tracker = ActivityTracker::default();
                        continue;
                    }
                };
                if call.is_none() && now >= retry_at {
                    call = Some(Call::start(&client));
                }
                let Some(current) = &call else { continue };
                if current.flowing.load(Ordering::Relaxed) {
                    if warned {
                        info!("publishing to the storage broker at {endpoint} again");
                        warned = false;
                    }
                    backoff = MIN_BACKOFF;
                }
                let count = infos.len();
                let dropped = current.send(infos);
                if dropped > 0 && current.flowing.load(Ordering::Relaxed) {
                    if !dropping {
                        warn!("the storage broker stream is slow: dropped {dropped} of {count} timeline states this round");
                        dropping = true;
                    }
                } else if dropped == 0 {
                    dropping = false;
                }
            }
        }
    }
    debug!("stopped publishing to the storage broker");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(flush: u64) -> Progress {
        Progress {
            term: 1,
            flush_lsn: Lsn(flush),
            commit_lsn: Lsn(flush),
        }
    }

    #[test]
    fn activity() {
        let key = (TenantId::generate(), TimelineId::generate());
        let mut tracker = ActivityTracker::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // Idle from the start: not active.
        assert!(!tracker.observe(key, 0, progress(10), at(0)));
        assert!(!tracker.observe(key, 0, progress(10), at(1)));
        // A connection: active, and for ACTIVE_FOR after it left.
        assert!(tracker.observe(key, 1, progress(10), at(2)));
        assert!(tracker.observe(key, 0, progress(10), at(3)));
        assert!(tracker.observe(key, 0, progress(10), at(7)));
        assert!(!tracker.observe(key, 0, progress(10), at(8)));
        // WAL moved without a connection seen: active again.
        assert!(tracker.observe(key, 0, progress(20), at(9)));
        assert!(!tracker.observe(key, 0, progress(20), at(15)));
        // A connected timeline seen for the first time is active.
        let other = (TenantId::generate(), TimelineId::generate());
        assert!(tracker.observe(other, 2, progress(0), at(15)));
        assert_eq!(tracker.len(), 2);
        tracker.retain(&HashSet::from([other]));
        assert_eq!(tracker.len(), 1);
    }
}
