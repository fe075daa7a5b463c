//! `START_REPLICATION`: stream WAL to a reader (a pageserver, a stock
//! PostgreSQL standby, or a walproposer recovering another safekeeper), up
//! to the commit LSN (or flush LSN, if asked), with keepalives. The
//! reader's status updates are recorded as its feedback; only a pageserver's
//! (`application_name=pageserver`) apply position counts as its remote
//! consistent LSN, which lets offloaded WAL be removed locally.
//!
//! PostgreSQL's walreceiver always asks for WAL from the start of a
//! segment. In the segment where this safekeeper's WAL begins, what lies
//! before its first LSN (which no proposer sent) is sent as the tail of an
//! earlier record: valid page headers saying so, over zeros (see
//! [`wal_prefix`]). A standby only reads the records after it.
//!
//! WAL in a segment that was removed locally (offloaded, see
//! [`crate::wal_backup`]) is downloaded from remote storage, a segment at a
//! time; without remote storage such a read fails with an error.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use bytes::{Bytes, BytesMut};
use postgres_format::wal_writer::SegmentWriter;
use postgres_format::PgMajorVersion;
use pq_proto::replication::{
    PgTimestamp, PrimaryKeepalive, PrimaryMessage, StandbyMessage, XLogData,
};
use pq_proto::{BeMessage, ErrorFields, FeMessage, PostgresBackend};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use utils::Lsn;

use crate::timeline::Timeline;
use crate::wal_service::ReadLimit;
use crate::wal_storage::WalReader;

/// WAL sent in one message, at most.
const CHUNK: usize = 128 * 1024;
const KEEPALIVE: Duration = Duration::from_secs(1);

struct SenderCount(Arc<Timeline>);

impl Drop for SenderCount {
    fn drop(&mut self) {
        self.0.walsenders.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::metrics().walsender_connections.dec();
    }
}

pub async fn handle<S>(
    mut pgb: PostgresBackend<S>,
    timeline: Arc<Timeline>,
    start: Lsn,
    limit: ReadLimit,
    from_pageserver: bool,
    cancel: CancellationToken,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    timeline.walsenders.fetch_add(1, Ordering::Relaxed);
    crate::metrics::metrics().walsender_connections.inc();
    let _count = SenderCount(timeline.clone());
    pgb.write_message(&BeMessage::CopyBothResponse(pq_proto::Format::Binary))
        .await?;
    pgb.flush().await?;
    let (mut reader, mut writer) = pgb.split();
    info!("streaming WAL from {start}, up to the {limit:?} LSN");

    // Feedback from the reader, until it ends the stream.
    let feedback_timeline = timeline.clone();
    let mut feedback = tokio::spawn(async move {
        loop {
            match reader.read_message().await? {
                Some(FeMessage::CopyData(data)) => match StandbyMessage::decode(data)? {
                    StandbyMessage::StatusUpdate(update) => {
                        let mut f = feedback_timeline
                            .feedback
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        f.last_received_lsn = f.last_received_lsn.max(update.write_lsn);
                        f.disk_consistent_lsn = f.disk_consistent_lsn.max(update.flush_lsn);
                        if from_pageserver {
                            f.pageserver_last_record_lsn =
                                f.pageserver_last_record_lsn.max(update.write_lsn);
                            f.remote_consistent_lsn = f.remote_consistent_lsn.max(update.apply_lsn);
                        }
                    }
                    StandbyMessage::HotStandbyFeedback(_) => {}
                },
                None | Some(FeMessage::CopyDone) | Some(FeMessage::Terminate) => {
                    return Ok::<_, anyhow::Error>(())
                }
                Some(other) => bail!("unexpected message from the WAL reader: {other:?}"),
            }
        }
    });

    let wal = WalReader {
        dir: timeline.dir.clone(),
        segment_size: timeline.segment_size(),
    };
    let mut progress = timeline.subscribe();
    let mut position = start;
    let local_start = timeline.acceptor().state.local_start_lsn;
    let mut prefix = (start < local_start)
        .then(|| wal_prefix(&timeline, start, local_start))
        .transpose()?;
    let mut buf = vec![0u8; CHUNK];
    let mut encoded = BytesMut::new();
    // The last segment downloaded from remote storage.
    let mut downloaded: Option<(u64, Bytes)> = None;
    let segment_size = timeline.segment_size() as u64;
    loop {
        let current = *progress.borrow_and_update();
        let end = match limit {
            ReadLimit::Commit => current.commit_lsn,
            ReadLimit::Flush => current.flush_lsn,
        };
        let data = if let Some(data) = prefix.take() {
            Some(data)
        } else if position < end {
            let want = ((end - position) as usize).min(CHUNK);
            let read = async {
                let n = tokio::task::block_in_place(|| wal.read(position, &mut buf[..want]))?;
                if n > 0 {
                    return Ok(Bytes::copy_from_slice(&buf[..n]));
                }
                // Below the flush LSN only offloaded segments are missing.
                let segno = position.segment_number(segment_size);
                let segment = match &downloaded {
                    Some((s, data)) if *s == segno => data.clone(),
                    _ => {
                        let data = crate::wal_backup::download_segment(&timeline, segno).await?;
                        downloaded = Some((segno, data.clone()));
                        data
                    }
                };
                let offset = position.segment_offset(segment_size) as usize;
                let n = want.min(segment.len() - offset);
                anyhow::Ok(segment.slice(offset..offset + n))
            };
            match read.await {
                Ok(data) => Some(data),
                Err(e) => {
                    // Tell the reader why the stream ends.
                    let e = e.context(format!("reading WAL at {position}"));
                    let fields = ErrorFields::error("XX000", format!("{e:#}"));
                    let _ = writer
                        .write_message(&BeMessage::ErrorResponse(&fields))
                        .await;
                    let _ = writer.flush().await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let Some(data) = data {
            let n = data.len();
            encoded.clear();
            PrimaryMessage::XLogData(XLogData {
                wal_start: position,
                wal_end: end.max(local_start),
                timestamp: PgTimestamp::now(),
                data,
            })
            .encode(&mut encoded);
            writer.write_message(&BeMessage::CopyData(&encoded)).await?;
            writer.flush().await?;
            position += n as u64;
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = &mut feedback => {
                debug!("WAL reader ended the stream");
                return r?;
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(KEEPALIVE) => {
                encoded.clear();
                PrimaryMessage::Keepalive(PrimaryKeepalive {
                    wal_end: end,
                    timestamp: PgTimestamp::now(),
                    reply_requested: false,
                })
                .encode(&mut encoded);
                writer.write_message(&BeMessage::CopyData(&encoded)).await?;
                writer.flush().await?;
            }
        }
    }
}

/// The WAL from `start` up to `local_start`, in the same segment, which
/// this safekeeper never received: every page marked as continuing a
/// record that ends at `local_start`, as PostgreSQL would read it.
pub fn wal_prefix(timeline: &Timeline, start: Lsn, local_start: Lsn) -> anyhow::Result<Bytes> {
    let segment_size = timeline.segment_size() as u64;
    if start.segment_number(segment_size) != local_start.segment_number(segment_size) {
        bail!("WAL at {start} is not on this safekeeper, its WAL begins at {local_start}");
    }
    let (version, system_id) = {
        let acceptor = timeline.acceptor();
        let server = &acceptor.state.server;
        (server.pg_version, server.system_id)
    };
    let version: PgMajorVersion = (version / 10000)
        .to_string()
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let mut writer = SegmentWriter::new(version, segment_size as usize, system_id, 1);
    writer.write_continuation_before(local_start);
    let files = writer.into_files();
    let [(_, segment)] = files.as_slice() else {
        bail!(
            "the WAL before {local_start} spans {} segments",
            files.len()
        );
    };
    let from = start.segment_offset(segment_size) as usize;
    let to = local_start.segment_offset(segment_size) as usize;
    Ok(Bytes::copy_from_slice(&segment[from..to]))
}
