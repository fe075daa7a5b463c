//! WAL from PostgreSQL's walsender, as a physical replication client on a
//! replication slot. The slot keeps every byte from the commit LSN we
//! report, so the driver may stop taking WAL (flow control) and a broken
//! replication connection resumes where it left off.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use pq_proto::replication::{PgTimestamp, PrimaryMessage, StandbyMessage, StandbyStatusUpdate};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::Lsn;

/// Where a streaming walproposer reads WAL: PostgreSQL's replication protocol.
#[derive(Clone, Debug)]
pub struct PostgresSource {
    /// `host:port` of the compute.
    pub address: String,
    pub user: String,
    /// Physical replication slot, created if missing.
    pub slot: String,
}

/// How often PostgreSQL hears from us, even while we take no WAL (it
/// drops a replication client that is silent for `wal_sender_timeout`).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn connect_replication(
    postgres: &PostgresSource,
) -> anyhow::Result<pq_proto::Client> {
    let params = [
        ("user", postgres.user.as_str()),
        ("replication", "true"),
        ("application_name", "walproposer"),
    ];
    pq_proto::connect(postgres.address.as_str(), &params, None)
        .await
        .with_context(|| {
            format!(
                "connecting to PostgreSQL at {} for replication",
                postgres.address
            )
        })
}

/// `IDENTIFY_SYSTEM`, then the slot (created if missing); returns the
/// system id and the connection.
pub(crate) async fn prepare(postgres: &PostgresSource) -> anyhow::Result<(u64, pq_proto::Client)> {
    let mut client = connect_replication(postgres).await?;
    let rows = client
        .simple_query("IDENTIFY_SYSTEM")
        .await
        .context("IDENTIFY_SYSTEM on PostgreSQL")?;
    let system_id: u64 = rows
        .first()
        .and_then(|r| r.get(0))
        .context("IDENTIFY_SYSTEM returned no row")?
        .parse()
        .context("parsing the system id")?;
    let create = format!(
        "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
        postgres.slot
    );
    match client.simple_query(&create).await {
        Ok(_) => info!("created replication slot {}", postgres.slot),
        Err(e) if e.code() == Some("42710") => {}
        Err(e) => return Err(e).context("creating the replication slot"),
    }
    Ok((system_id, client))
}

/// Streams WAL from `start` into `wal` until cancelled or until the
/// receiver is gone, reconnecting (from the end of what was handed over)
/// when the replication connection breaks. `commit` is reported to
/// PostgreSQL as our flush position: its synchronous commits wait for it.
pub(crate) async fn run(
    postgres: PostgresSource,
    first: pq_proto::Client,
    start: Lsn,
    wal: mpsc::Sender<(Lsn, Bytes)>,
    mut commit: watch::Receiver<Lsn>,
    cancel: CancellationToken,
) {
    let mut next = start;
    let mut client = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = async {
            let c = match client.take() {
                Some(c) => c,
                None => connect_replication(&postgres).await?,
            };
            stream_once(c, &postgres.slot, &mut next, &wal, &mut commit, &cancel).await
        }
        .await;
        if cancel.is_cancelled() || wal.is_closed() {
            return;
        }
        match result {
            Ok(()) => return,
            Err(e) => warn!("replication from PostgreSQL broke: {e:#}; resuming from {next}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One replication connection. `next` advances past every message handed
/// to `wal`. Ok when cancelled or when the receiver is gone.
async fn stream_once(
    mut client: pq_proto::Client,
    slot: &str,
    next: &mut Lsn,
    wal: &mpsc::Sender<(Lsn, Bytes)>,
    commit: &mut watch::Receiver<Lsn>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut copy = client
        .copy_both(&format!(
            "START_REPLICATION SLOT {slot} PHYSICAL {next} TIMELINE 1"
        ))
        .await
        .context("START_REPLICATION on PostgreSQL")?;
    let (mut receiver, mut sender) = copy.split();
    let mut received = *next;
    // A message waiting for room in `wal`: while it waits, nothing more is
    // read from PostgreSQL, but status updates keep going.
    let mut pending: Option<(Lsn, Bytes)> = None;
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    loop {
        let reply = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            permit = wal.reserve(), if pending.is_some() => {
                let Ok(permit) = permit else { return Ok(()) };
                if let Some((at, data)) = pending.take() {
                    *next = (*next).max(at + data.len() as u64);
                    permit.send((at, data));
                }
                false
            }
            data = receiver.recv(), if pending.is_none() => {
                let Some(data) = data? else { bail!("PostgreSQL ended replication") };
                match PrimaryMessage::decode(data)? {
                    PrimaryMessage::XLogData(x) => {
                        let end = x
                            .wal_start
                            .checked_add(x.data.len() as u64)
                            .context("WAL message past the end of the LSN space")?;
                        received = received.max(end);
                        pending = Some((x.wal_start, x.data));
                        false
                    }
                    PrimaryMessage::Keepalive(k) => k.reply_requested,
                }
            }
            changed = commit.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                true
            }
            _ = tick.tick() => true,
        };
        if reply {
            let committed = *commit.borrow_and_update();
            let mut buf = BytesMut::new();
            StandbyMessage::StatusUpdate(StandbyStatusUpdate {
                write_lsn: received,
                flush_lsn: committed,
                apply_lsn: committed,
                timestamp: PgTimestamp::now(),
                reply_requested: false,
            })
            .encode(&mut buf);
            sender.send(&buf).await?;
            sender.flush().await?;
        }
    }
}
