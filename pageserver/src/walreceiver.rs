//! The WAL receiver of one timeline: learns from the storage broker which
//! safekeepers have its WAL, streams from the one with the most advanced
//! commit LSN (`START_REPLICATION` from the last record ingested), decodes
//! and ingests every record, and reports what it received and persisted.
//! It switches to another safekeeper when the connection fails or another
//! is well ahead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use futures_util::StreamExt;
use postgres_format::wal::WalStreamDecoder;
use pq_proto::replication::{PgTimestamp, PrimaryMessage, StandbyMessage, StandbyStatusUpdate};
use storage_broker::{BrokerClient, SafekeeperTimelineInfo};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::{Lsn, NodeId};

use crate::tenant::timeline::Timeline;
use crate::walingest::WalIngest;

/// Switch safekeepers when another stays this far ahead in commit LSN.
const SWITCH_LAG: u64 = 16 * 1024 * 1024;
/// ... or when the current one sent nothing for this long while another is ahead.
const STALL: Duration = Duration::from_secs(10);
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a paused ingest (a failed flush) tries the flush again.
const FLUSH_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Receive WAL for `timeline` until `cancel` fires.
pub async fn run(timeline: Arc<Timeline>, broker: BrokerClient, cancel: CancellationToken) {
    let mut candidates: HashMap<NodeId, SafekeeperTimelineInfo> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let mut updates = match broker
            .subscribe(timeline.tenant_id, timeline.timeline_id)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!("subscribing to the storage broker: {e}");
                if sleep_or_cancel(&cancel, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let last = timeline.last_record_lsn();
            let best = candidates
                .values()
                .filter(|c| c.commit_lsn > last)
                .max_by_key(|c| c.commit_lsn)
                .cloned();
            let Some(source) = best else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    update = updates.next() => match update {
                        Some(Ok(info)) => { candidates.insert(info.safekeeper_id, info); }
                        Some(Err(e)) => { warn!("broker subscription: {e}"); break; }
                        None => break,
                    },
                }
                continue;
            };
            info!(safekeeper = %source.safekeeper_id, address = source.safekeeper_connstr, from = %last, "streaming WAL");
            let result = stream_from(
                &timeline,
                &source,
                &mut candidates,
                &mut updates,
                broker.token(),
                &cancel,
            )
            .await;
            match result {
                Ok(()) if cancel.is_cancelled() => return,
                Ok(()) => {}
                Err(e) => {
                    warn!(safekeeper = %source.safekeeper_id, "WAL stream ended: {e:#}");
                    // Try the others first; this one comes back with its next publication.
                    candidates.remove(&source.safekeeper_id);
                    if sleep_or_cancel(&cancel, Duration::from_millis(200)).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_or_cancel(cancel: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// Stream from `source` until it fails, falls behind, or `cancel` fires.
/// The WAL segment size of the timeline's cluster, from its control file.
fn wal_segment_size(timeline: &Timeline, lsn: Lsn) -> anyhow::Result<usize> {
    let bytes = timeline
        .get_control_file(lsn)?
        .with_context(|| format!("the timeline has no control file at {lsn}"))?;
    let control = postgres_format::control_file::ControlFile::decode(&bytes, timeline.pg_version)
        .context("decoding the timeline's control file")?;
    let size = control.xlog_seg_size as usize;
    anyhow::ensure!(
        size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size),
        "the control file gives an invalid WAL segment size of {size} bytes"
    );
    Ok(size)
}

async fn stream_from(
    timeline: &Arc<Timeline>,
    source: &SafekeeperTimelineInfo,
    candidates: &mut HashMap<NodeId, SafekeeperTimelineInfo>,
    updates: &mut storage_broker::InfoStream,
    token: Option<&str>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let options = format!(
        "-c tenant_id={} -c timeline_id={}",
        timeline.tenant_id, timeline.timeline_id
    );
    let params = [
        ("user", "pageserver"),
        ("application_name", "pageserver"),
        ("options", options.as_str()),
    ];
    let mut client = tokio::time::timeout(
        Duration::from_secs(10),
        pq_proto::connect(source.safekeeper_connstr.as_str(), &params, token),
    )
    .await
    .context("connecting timed out")??;
    let start = timeline.last_record();
    let mut copy = client
        .copy_both(&format!("START_REPLICATION PHYSICAL {}", start.last))
        .await?;
    let (mut receiver, mut sender) = copy.split();
    let (mut ingest, segment_size) = {
        let timeline = timeline.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let segment_size = wal_segment_size(&timeline, start.last)?;
            Ok((WalIngest::new(&timeline)?, segment_size))
        })
        .await??
    };
    let mut decoder = WalStreamDecoder::new(start.last, timeline.pg_version, segment_size)?;
    if start.prev.is_valid() {
        decoder.set_prev_record(start.prev);
    }
    let mut received = start.last;
    let mut last_data = Instant::now();
    let mut lagging_since: Option<Instant> = None;
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    let mut flush_retry = tokio::time::interval(FLUSH_RETRY_INTERVAL);
    loop {
        // While a frozen layer cannot be written (a full disk), read no more
        // WAL: memory stays bounded, the WAL waits on the safekeepers, and
        // the status updates keep telling how far behind we are.
        let paused = timeline.ingest_paused().is_some();
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = flush_retry.tick(), if paused => {
                let timeline = timeline.clone();
                // A failure is recorded by the timeline and retried here.
                let _ = tokio::task::spawn_blocking(move || timeline.retry_flush()).await;
                last_data = Instant::now();
            }
            message = receiver.recv(), if !paused => {
                let Some(data) = message? else { bail!("the safekeeper ended the stream") };
                match PrimaryMessage::decode(data)? {
                    PrimaryMessage::XLogData(x) => {
                        if x.wal_start != received {
                            bail!("WAL at {} does not continue the stream at {received}", x.wal_start);
                        }
                        received = x.wal_start + x.data.len() as u64;
                        last_data = Instant::now();
                        decoder.feed_bytes(&x.data);
                        tokio::task::block_in_place(|| -> anyhow::Result<()> {
                            while let Some(record) = decoder.poll_decode()? {
                                ingest.ingest_record(timeline, &record)?;
                            }
                            Ok(())
                        })?;
                    }
                    PrimaryMessage::Keepalive(_) => {}
                }
            }
            update = updates.next() => match update {
                Some(Ok(info)) => {
                    candidates.insert(info.safekeeper_id, info);
                    let ahead = candidates.values().map(|c| c.commit_lsn).max().unwrap_or(Lsn::INVALID);
                    let ours = candidates.get(&source.safekeeper_id).map_or(Lsn::INVALID, |c| c.commit_lsn);
                    // Publications arrive about once a second from each
                    // safekeeper, so a momentary gap means nothing: only a
                    // lag that lasts makes us switch.
                    let lagging = ahead.0.saturating_sub(ours.0) > SWITCH_LAG;
                    if !lagging {
                        lagging_since = None;
                    }
                    let lagging_long = lagging && lagging_since.get_or_insert_with(Instant::now).elapsed() > STALL / 2;
                    let stalled = ahead > received && last_data.elapsed() > STALL;
                    // A paused ingest is behind by its own doing.
                    if !paused && (lagging_long || stalled) {
                        info!(safekeeper = %source.safekeeper_id, "switching: another safekeeper is ahead ({ahead})");
                        return Ok(());
                    }
                }
                Some(Err(e)) => bail!("broker subscription: {e}"),
                None => bail!("the broker subscription ended"),
            },
            _ = status.tick() => {
                let mut buf = BytesMut::new();
                StandbyMessage::StatusUpdate(StandbyStatusUpdate {
                    write_lsn: timeline.last_record_lsn(),
                    flush_lsn: timeline.disk_consistent_lsn(),
                    // What remote storage holds: the safekeepers may
                    // remove WAL below it once they have offloaded it.
                    apply_lsn: timeline.remote_consistent_lsn(),
                    timestamp: PgTimestamp::now(),
                    reply_requested: false,
                })
                .encode(&mut buf);
                sender.send(&buf).await?;
                sender.flush().await?;
            }
        }
    }
}
