//! WAL offload: with remote storage configured, every timeline has a
//! background task that uploads each *full* WAL segment (entirely below
//! both the commit LSN and the flush LSN) to
//! `wal/<tenant_id>/<timeline_id>/<segment file name>`, and removes local
//! segments that are no longer needed.
//!
//! * Segments are uploaded in order; `backup_lsn` (persisted in the control
//!   file after each upload) is the end of the last one of the contiguous
//!   run uploaded. A failed upload is retried with exponential backoff (up
//!   to [`MAX_BACKOFF`]) until it succeeds or the timeline is stopped, so
//!   an object store that is down for a while loses nothing: the backlog
//!   goes out once it is back.
//! * Committed WAL is the same on every safekeeper that has it, so every
//!   safekeeper uploads (the same bytes) and none waits for another. A
//!   safekeeper only uploads segments it holds whole: when it joined the
//!   timeline after its start, the segment holding its local start has
//!   zeros where the earlier WAL is, and is neither uploaded nor removed.
//! * A local segment is removed only when it ends at or below the
//!   **removal horizon**: the lowest of `backup_lsn`, the pageserver's
//!   `remote_consistent_lsn` and the commit LSN, *as persisted in the
//!   control file* (the pageserver's value and the commit LSN are persisted
//!   first), and the flush LSN; and the segment holding the last flushed
//!   byte always stays. So a restart never finds less WAL than the control
//!   file says is local: the segment holding the flush position (and the
//!   persisted commit LSN, where the end of WAL is searched from after a
//!   restart) stays, and nothing uncommitted is removed.
//! * WAL readers ([`crate::send_wal`]) that need a removed segment get it
//!   from remote storage ([`download_segment`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use remote_storage::{GenericRemoteStorage, RemotePath};
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};
use utils::{Lsn, TenantId, TimelineId};

use crate::acceptor::PersistentState;
use crate::timeline::Timeline;
use crate::wal_storage::WalReader;

/// The longest wait between two attempts to upload a segment.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The first wait after a failed upload; doubled on each failure.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// One upload attempt, at most.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// One download for a WAL reader, at most.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a timeline is looked at without new WAL (for the pageserver's
/// feedback, which moves the removal horizon).
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where a timeline's WAL segments are in remote storage.
pub fn remote_timeline_path(tenant_id: TenantId, timeline_id: TimelineId) -> RemotePath {
    RemotePath::new(&format!("wal/{tenant_id}/{timeline_id}")).expect("a valid remote path")
}

/// The first segment this safekeeper uploads and may remove: the one
/// holding its local start if it holds that segment whole (it started with
/// the timeline: the bytes before the timeline's start are zeros on every
/// safekeeper), else the next one. `None` while it has no WAL.
pub fn first_offloaded_segment(
    timeline_start_lsn: Lsn,
    local_start_lsn: Lsn,
    segment_size: usize,
) -> Option<u64> {
    if !local_start_lsn.is_valid() {
        return None;
    }
    let seg = segment_size as u64;
    let segno = local_start_lsn.segment_number(seg);
    if local_start_lsn == timeline_start_lsn || local_start_lsn.segment_offset(seg) == 0 {
        Some(segno)
    } else {
        Some(segno + 1)
    }
}

/// Local segments ending at or below this LSN may be removed: the lowest of
/// the persisted `backup_lsn`, `remote_consistent_lsn` and commit LSN, and
/// the flush LSN.
pub fn removal_horizon(state: &PersistentState, flush_lsn: Lsn) -> Lsn {
    state
        .backup_lsn
        .min(state.remote_consistent_lsn)
        .min(state.commit_lsn)
        .min(flush_lsn)
}

/// The timeline was stopped.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
struct Cancelled;

/// Offload `timeline`'s WAL to `remote` until the timeline is stopped: an
/// upload loop and a removal loop, side by side (removal goes on while
/// uploads wait for an unavailable object store).
pub async fn offload_timeline(timeline: Arc<Timeline>, remote: GenericRemoteStorage) {
    let span = info_span!("wal_offload", tenant_id = %timeline.tenant_id, timeline_id = %timeline.timeline_id);
    async {
        tokio::join!(upload_loop(&timeline, &remote), removal_loop(&timeline));
    }
    .instrument(span)
    .await;
}

/// Upload full segments as they appear.
async fn upload_loop(timeline: &Timeline, remote: &GenericRemoteStorage) {
    let segment_size = timeline.segment_size() as u64;
    let mut progress = timeline.subscribe();
    loop {
        progress.borrow_and_update();
        let next_upload = match upload_ready(timeline, remote).await {
            Ok(next) => next,
            Err(e) if e.is::<Cancelled>() => return,
            Err(e) => {
                warn!("offloading WAL: {e:#}");
                None
            }
        };
        // Wait until another segment is complete, or for a while.
        let deadline = Instant::now() + RECHECK_INTERVAL;
        loop {
            tokio::select! {
                _ = timeline.cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                changed = progress.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let p = *progress.borrow_and_update();
                    let ready = p.commit_lsn.min(p.flush_lsn).segment_number(segment_size);
                    if next_upload.is_some_and(|next| ready > next) {
                        break;
                    }
                }
            }
        }
    }
}

/// Remove local segments below the removal horizon, now and then.
async fn removal_loop(timeline: &Timeline) {
    // Segments below this one are already removed (or never offloaded).
    let mut removed_below = 0;
    loop {
        match remove_offloaded(timeline, &mut removed_below) {
            Ok(()) => {}
            Err(e) if e.is::<Cancelled>() => return,
            Err(e) => warn!("removing offloaded WAL: {e:#}"),
        }
        tokio::select! {
            _ = timeline.cancel.cancelled() => return,
            _ = tokio::time::sleep(RECHECK_INTERVAL) => {}
        }
    }
}

/// What the upload loop needs from the acceptor.
struct Snapshot {
    first: Option<u64>,
    backup_lsn: Lsn,
    ready: Lsn,
}

/// Upload the full segments not uploaded yet, persisting `backup_lsn` after
/// each. Returns the next segment to upload.
async fn upload_ready(
    timeline: &Timeline,
    remote: &GenericRemoteStorage,
) -> anyhow::Result<Option<u64>> {
    let segment_size = timeline.segment_size();
    let seg = segment_size as u64;
    let snapshot = tokio::task::block_in_place(|| {
        let acceptor = timeline.acceptor();
        let s = &acceptor.state;
        Snapshot {
            first: first_offloaded_segment(s.timeline_start_lsn, s.local_start_lsn, segment_size),
            backup_lsn: s.backup_lsn,
            ready: acceptor.commit_lsn().min(acceptor.flush_lsn()),
        }
    });
    let Some(first) = snapshot.first else {
        return Ok(None);
    };
    // backup_lsn is a segment boundary: the start of the next one to upload.
    let mut next = if snapshot.backup_lsn.is_valid() {
        snapshot.backup_lsn.segment_number(seg).max(first)
    } else {
        first
    };
    while (next + 1) * seg <= snapshot.ready.0 {
        upload_segment(timeline, remote, next).await?;
        let backup_lsn = Lsn((next + 1) * seg);
        tokio::task::block_in_place(|| {
            let mut acceptor = timeline.acceptor();
            if timeline.cancel.is_cancelled() {
                return Err(anyhow::Error::from(Cancelled));
            }
            acceptor
                .persist_horizons(backup_lsn, Lsn::INVALID)
                .context("persisting backup_lsn")?;
            Ok(())
        })?;
        next += 1;
    }
    Ok(Some(next))
}

/// Persist the pageserver's remote consistent LSN (and the commit LSN) when
/// that lets more segments go, then remove the segments below the horizon
/// computed from persisted values only.
fn remove_offloaded(timeline: &Timeline, removed_below: &mut u64) -> anyhow::Result<()> {
    let segment_size = timeline.segment_size();
    let seg = segment_size as u64;
    let feedback = timeline
        .feedback
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remote_consistent_lsn;
    let (first, horizon, flush_lsn) = tokio::task::block_in_place(|| {
        let mut acceptor = timeline.acceptor();
        if timeline.cancel.is_cancelled() {
            return Err(anyhow::Error::from(Cancelled));
        }
        let s = &acceptor.state;
        let first = first_offloaded_segment(s.timeline_start_lsn, s.local_start_lsn, segment_size);
        let flush_lsn = acceptor.flush_lsn();
        let persisted = removal_horizon(s, flush_lsn);
        let possible = s
            .backup_lsn
            .min(s.remote_consistent_lsn.max(feedback))
            .min(acceptor.commit_lsn())
            .min(flush_lsn);
        // Persist only when that lets another segment go.
        if possible.segment_number(seg) > persisted.segment_number(seg) {
            acceptor
                .persist_horizons(Lsn::INVALID, feedback)
                .context("persisting the remote consistent LSN")?;
        }
        Ok((
            first,
            removal_horizon(&acceptor.state, flush_lsn),
            flush_lsn,
        ))
    })?;
    let Some(first) = first else {
        return Ok(());
    };
    // The segment holding the last flushed byte stays even when the flush
    // LSN is at its end: a restart finds the end of WAL in it.
    let remove_below = horizon
        .segment_number(seg)
        .min(flush_lsn.0.saturating_sub(1) / seg);
    if remove_below > *removed_below && remove_below > first {
        let reader = WalReader {
            dir: timeline.dir.clone(),
            segment_size,
        };
        let removed =
            tokio::task::block_in_place(|| remove_segments(&reader, first, remove_below))?;
        if removed > 0 {
            info!(
                "removed {removed} local WAL segments below {horizon}: they are in remote storage and below the pageserver's remote consistent LSN"
            );
        }
        *removed_below = remove_below;
    }
    Ok(())
}

/// Remove the local segments `from..below`; how many there were.
fn remove_segments(reader: &WalReader, from: u64, below: u64) -> anyhow::Result<usize> {
    let mut removed = 0;
    for segno in reader.segment_numbers()? {
        if segno < from || segno >= below {
            continue;
        }
        let path = reader.segment_path(segno);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                removed += 1;
                crate::metrics::metrics().wal_segments_removed.inc();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    Ok(removed)
}

/// Upload one segment, retrying until it is uploaded or the timeline stops.
async fn upload_segment(
    timeline: &Timeline,
    remote: &GenericRemoteStorage,
    segno: u64,
) -> Result<(), Cancelled> {
    let reader = WalReader {
        dir: timeline.dir.clone(),
        segment_size: timeline.segment_size(),
    };
    let name = reader.segment_name(segno);
    let local = reader.segment_path(segno);
    let path = remote_timeline_path(timeline.tenant_id, timeline.timeline_id)
        .join(&name)
        .expect("a valid remote path");
    let metrics = crate::metrics::metrics();
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u64;
    loop {
        let attempt = async {
            tokio::time::timeout(UPLOAD_TIMEOUT, remote.upload_file(&path, &local))
                .await
                .map_err(|_| anyhow::anyhow!("timed out after {UPLOAD_TIMEOUT:?}"))?
                .map_err(anyhow::Error::from)
        };
        let result = tokio::select! {
            _ = timeline.cancel.cancelled() => return Err(Cancelled),
            r = attempt => r,
        };
        match result {
            Ok(()) => {
                if failures > 0 {
                    info!("uploaded {name} after {failures} failed attempts");
                }
                metrics.wal_backup_segments.inc();
                metrics
                    .wal_backup_bytes
                    .inc_by(timeline.segment_size() as u64);
                return Ok(());
            }
            Err(e) => {
                metrics.wal_backup_failures.inc();
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    warn!("uploading WAL segment {name} to {path} failed ({failures} attempts so far), retrying in {backoff:?}: {e:#}");
                }
                tokio::select! {
                    _ = timeline.cancel.cancelled() => return Err(Cancelled),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Segment `segno` of `timeline` from remote storage, for a WAL reader that
/// did not find it locally (it was removed after it was offloaded).
pub async fn download_segment(timeline: &Timeline, segno: u64) -> anyhow::Result<Bytes> {
    let segment_size = timeline.segment_size();
    let reader = WalReader {
        dir: timeline.dir.clone(),
        segment_size,
    };
    let name = reader.segment_name(segno);
    let Some(remote) = &timeline.remote else {
        bail!("WAL segment {name} is not on this safekeeper and no remote storage is configured to fetch it from");
    };
    let path = remote_timeline_path(timeline.tenant_id, timeline.timeline_id)
        .join(&name)
        .expect("a valid remote path");
    let result = async {
        let data = tokio::time::timeout(DOWNLOAD_TIMEOUT, remote.download(&path))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {DOWNLOAD_TIMEOUT:?}"))??;
        if data.len() != segment_size {
            bail!("it has {} bytes, a segment has {segment_size}", data.len());
        }
        Ok(data)
    }
    .await;
    let metrics = crate::metrics::metrics();
    match result {
        Ok(data) => {
            metrics.wal_segments_downloaded.inc();
            info!("downloaded WAL segment {name} from remote storage: it is not local any more");
            Ok(data)
        }
        Err(e) => {
            metrics.wal_download_failures.inc();
            Err(e.context(format!(
                "WAL segment {name} is not on this safekeeper; downloading {path} from remote storage failed"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: usize = 16 << 20;

    #[test]
    fn first_segment() {
        let s = SEG as u64;
        assert_eq!(first_offloaded_segment(Lsn(0), Lsn(0), SEG), None);
        // Started with the timeline: its first segment is whole (zeros before).
        assert_eq!(
            first_offloaded_segment(Lsn(s + 0x28), Lsn(s + 0x28), SEG),
            Some(1)
        );
        // Joined later, mid-segment: that segment is not whole here.
        assert_eq!(
            first_offloaded_segment(Lsn(s + 0x28), Lsn(3 * s + 0x100), SEG),
            Some(4)
        );
        assert_eq!(
            first_offloaded_segment(Lsn(s + 0x28), Lsn(3 * s), SEG),
            Some(3)
        );
    }

    #[test]
    fn horizon_is_the_lowest_persisted_value() {
        use crate::acceptor::ServerInfo;
        let mut state = PersistentState::new(
            TenantId::generate(),
            TimelineId::generate(),
            ServerInfo::default(),
        );
        state.backup_lsn = Lsn(300);
        state.remote_consistent_lsn = Lsn(200);
        state.commit_lsn = Lsn(400);
        assert_eq!(removal_horizon(&state, Lsn(500)), Lsn(200));
        assert_eq!(removal_horizon(&state, Lsn(100)), Lsn(100));
        state.remote_consistent_lsn = Lsn::INVALID;
        assert_eq!(removal_horizon(&state, Lsn(500)), Lsn::INVALID);
    }
}
