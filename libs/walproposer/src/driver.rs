//! Runs a [`Proposer`] against real safekeepers: `sync_safekeepers` and
//! `stream` (with PostgreSQL as the WAL source).

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use pq_proto::replication::{PgTimestamp, PrimaryMessage, StandbyMessage, StandbyStatusUpdate};
use safekeeper_api::messages::AcceptorMessage;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::{Lsn, TenantId, TimelineId};

use crate::proposer::{Action, Mode, Proposer, ProposerConfig, ProposerError};
use crate::safekeeper_link::{self, Link, LinkEvent};
use crate::wal_buffer::WalBuffer;

/// WAL sent to one safekeeper in one message, at most.
const APPEND_CHUNK: usize = 128 * 1024;
/// WAL queued for one safekeeper's connection, at most.
const MAX_QUEUED: usize = 8 * 1024 * 1024;
/// WAL kept in memory, at most; PostgreSQL's stream pauses above it.
const MAX_BUFFERED: usize = 256 * 1024 * 1024;
/// WAL read from a donor in one recovery, at most.
const MAX_RECOVERY: u64 = 1024 * 1024 * 1024;
const HEARTBEAT: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct WalproposerConfig {
    /// Safekeeper libpq addresses, `host:port`.
    pub safekeepers: Vec<String>,
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// `PG_VERSION_NUM`, like 150018.
    pub pg_version: u32,
    /// 0 if not known (sync mode).
    pub system_id: u64,
    pub wal_seg_size: u32,
}

/// Where a streaming walproposer reads WAL: PostgreSQL's replication protocol.
#[derive(Clone, Debug)]
pub struct PostgresSource {
    /// `host:port` of the compute.
    pub address: String,
    pub user: String,
    /// Physical replication slot, created if missing.
    pub slot: String,
}

/// Elect a term and bring a quorum to the most advanced log; returns the
/// LSN up to which WAL is committed (`0/0` for a timeline with no WAL).
pub async fn sync_safekeepers(
    config: WalproposerConfig,
    cancel: CancellationToken,
) -> anyhow::Result<Lsn> {
    let mut driver = Driver::new(&config, Mode::Sync, cancel.clone());
    match driver.run(None).await? {
        Some(lsn) => Ok(lsn),
        None => bail!("cancelled"),
    }
}

/// Stream PostgreSQL's WAL, beginning at `start_lsn`, to the safekeepers
/// until cancelled. Reports the quorum-flushed LSN back to PostgreSQL as
/// its flush position. Fails if another proposer takes over (fenced).
pub async fn stream(
    mut config: WalproposerConfig,
    postgres: PostgresSource,
    start_lsn: Lsn,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut client = connect_replication(&postgres).await?;
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
    if config.system_id != 0 && config.system_id != system_id {
        bail!(
            "PostgreSQL's system id is {system_id}, expected {}",
            config.system_id
        );
    }
    config.system_id = system_id;
    let create = format!(
        "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
        postgres.slot
    );
    match client.simple_query(&create).await {
        Ok(_) => info!("created replication slot {}", postgres.slot),
        Err(e) if e.code() == Some("42710") => {}
        Err(e) => return Err(e).context("creating the replication slot"),
    }
    let (wal_tx, wal_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(start_lsn);
    let source_cancel = cancel.child_token();
    let slot = postgres.slot.clone();
    let source = tokio::spawn(async move {
        let result =
            read_postgres(client, &slot, start_lsn, wal_tx, status_rx, source_cancel).await;
        if let Err(e) = &result {
            warn!("replication from PostgreSQL ended: {e:#}");
        }
        result
    });
    let mut driver = Driver::new(&config, Mode::Stream { start_lsn }, cancel.clone());
    driver.buffer = WalBuffer::new(start_lsn);
    let result = driver
        .run(Some(Source {
            wal: wal_rx,
            status: status_tx,
        }))
        .await;
    cancel.cancel();
    source.abort();
    result.map(|_| ())
}

async fn connect_replication(postgres: &PostgresSource) -> anyhow::Result<pq_proto::Client> {
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

/// Read WAL from PostgreSQL's walsender; report `status` (the commit LSN)
/// as our write, flush and apply position.
async fn read_postgres(
    mut client: pq_proto::Client,
    slot: &str,
    start: Lsn,
    wal: mpsc::Sender<(Lsn, Bytes)>,
    mut status: watch::Receiver<Lsn>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut copy = client
        .copy_both(&format!(
            "START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE 1"
        ))
        .await
        .context("START_REPLICATION on PostgreSQL")?;
    let (mut receiver, mut sender) = copy.split();
    let mut received = start;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let reply = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            data = receiver.recv() => {
                let Some(data) = data? else { bail!("PostgreSQL ended replication") };
                match PrimaryMessage::decode(data)? {
                    PrimaryMessage::XLogData(x) => {
                        received = received.max(x.wal_start + x.data.len() as u64);
                        if wal.send((x.wal_start, x.data)).await.is_err() {
                            return Ok(());
                        }
                        false
                    }
                    PrimaryMessage::Keepalive(k) => k.reply_requested,
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                true
            }
            _ = tick.tick() => true,
        };
        if reply {
            let commit = *status.borrow_and_update();
            let mut buf = BytesMut::new();
            StandbyMessage::StatusUpdate(StandbyStatusUpdate {
                write_lsn: received,
                flush_lsn: commit,
                apply_lsn: commit,
                timestamp: PgTimestamp::now(),
                reply_requested: false,
            })
            .encode(&mut buf);
            sender.send(&buf).await?;
            sender.flush().await?;
        }
    }
}

/// Read WAL `[from, to)` from a donor safekeeper (up to its flush LSN).
async fn read_from_donor(
    address: String,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    from: Lsn,
    to: Lsn,
) -> anyhow::Result<(Lsn, Bytes)> {
    if to - from > MAX_RECOVERY {
        bail!(
            "safekeeper needs {} bytes of WAL from the donor, more than {MAX_RECOVERY}",
            to - from
        );
    }
    let options =
        format!("-c tenant_id={tenant_id} -c timeline_id={timeline_id} -c wal_read_limit=flush");
    let params = [
        ("user", "walproposer"),
        ("application_name", "walproposer_recovery"),
        ("options", options.as_str()),
    ];
    let mut client = pq_proto::connect(address.as_str(), &params, None).await?;
    let mut copy = client
        .copy_both(&format!("START_REPLICATION PHYSICAL {from}"))
        .await?;
    let mut out = BytesMut::with_capacity((to - from) as usize);
    while from + (out.len() as u64) < to {
        let Some(data) = copy.recv().await? else {
            bail!("donor ended the stream at {}", from + out.len() as u64)
        };
        if let PrimaryMessage::XLogData(x) = PrimaryMessage::decode(data)? {
            let expected = from + out.len() as u64;
            if x.wal_start != expected {
                bail!("donor sent WAL at {}, expected {expected}", x.wal_start);
            }
            let n = ((to - expected) as usize).min(x.data.len());
            out.extend_from_slice(&x.data[..n]);
        }
    }
    Ok((from, out.freeze()))
}

struct Source {
    wal: mpsc::Receiver<(Lsn, Bytes)>,
    status: watch::Sender<Lsn>,
}

struct Driver {
    proposer: Proposer,
    config: WalproposerConfig,
    links: Vec<Link>,
    /// The generation of each link's live connection.
    connections: Vec<Option<u64>>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    buffer: WalBuffer,
    donor: Option<usize>,
    recovery: Option<oneshot::Receiver<anyhow::Result<(Lsn, Bytes)>>>,
    /// The commit LSN each safekeeper last reported.
    reported_commit: Vec<Lsn>,
    sync_result: Option<Lsn>,
    cancel: CancellationToken,
}

impl Driver {
    fn new(config: &WalproposerConfig, mode: Mode, cancel: CancellationToken) -> Driver {
        let (events_tx, events) = mpsc::unbounded_channel();
        let links: Vec<Link> = config
            .safekeepers
            .iter()
            .enumerate()
            .map(|(i, address)| {
                safekeeper_link::spawn(
                    i,
                    address.clone(),
                    config.tenant_id,
                    config.timeline_id,
                    events_tx.clone(),
                    cancel.clone(),
                )
            })
            .collect();
        let mut proposer_id = [0u8; 16];
        proposer_id.copy_from_slice(utils::TimelineId::generate().as_bytes());
        let proposer = Proposer::new(
            ProposerConfig {
                tenant_id: config.tenant_id,
                timeline_id: config.timeline_id,
                system_id: config.system_id,
                pg_version: config.pg_version,
                wal_seg_size: config.wal_seg_size,
                proposer_id,
                acceptors: links.len(),
            },
            mode,
        );
        Driver {
            proposer,
            config: config.clone(),
            connections: vec![None; links.len()],
            reported_commit: vec![Lsn::INVALID; links.len()],
            links,
            events,
            buffer: WalBuffer::new(Lsn::INVALID),
            donor: None,
            recovery: None,
            sync_result: None,
            cancel,
        }
    }

    /// Returns the sync result in sync mode; runs until cancelled in stream mode.
    async fn run(&mut self, mut source: Option<Source>) -> anyhow::Result<Option<Lsn>> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            if let Some(lsn) = self.sync_result {
                // Done once a quorum knows the result is committed, so that
                // WAL readers (the pageserver) can read up to it.
                let known = self.reported_commit.iter().filter(|&&c| c >= lsn).count();
                if known >= self.proposer.quorum() || !lsn.is_valid() {
                    return Ok(Some(lsn));
                }
            }
            let buffer_full = self.buffer.len() >= MAX_BUFFERED;
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(None),
                Some(event) = self.events.recv() => self.on_event(event, source.as_ref())?,
                Some((at, data)) = async {
                    match source.as_mut() {
                        Some(s) if !buffer_full => s.wal.recv().await,
                        _ => std::future::pending().await,
                    }
                } => {
                    self.buffer.append(at, &data)?;
                    self.proposer.set_available(self.buffer.end());
                }
                recovered = async {
                    match self.recovery.as_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.recovery = None;
                    match recovered {
                        Ok(Ok((at, data))) => {
                            info!("recovered {} bytes of WAL from {at} from the donor", data.len());
                            // If the buffer moved meanwhile, the next pump asks again.
                            if let Err(e) = self.buffer.prepend(at, &data) {
                                warn!("discarding recovered WAL: {e:#}");
                            }
                        }
                        Ok(Err(e)) => warn!("recovering WAL from the donor: {e:#}"),
                        Err(_) => warn!("the recovery task ended"),
                    }
                }
                _ = heartbeat.tick() => self.heartbeats(),
            }
            self.pump();
            if let Some(s) = &source {
                let commit = self.proposer.commit_lsn();
                s.status
                    .send_if_modified(|old| std::mem::replace(old, commit) != commit);
            }
        }
    }

    fn on_event(&mut self, event: LinkEvent, source: Option<&Source>) -> anyhow::Result<()> {
        let actions = match event {
            LinkEvent::Connected { index, generation } => {
                self.connections[index] = Some(generation);
                self.proposer.on_connect(index)
            }
            LinkEvent::Disconnected {
                index,
                generation,
                reason,
            } => {
                if self.connections[index] == Some(generation) {
                    warn!(
                        safekeeper = self.links[index].address,
                        "disconnected: {reason}"
                    );
                    self.connections[index] = None;
                    self.proposer.on_disconnect(index);
                }
                Vec::new()
            }
            LinkEvent::Message {
                index,
                generation,
                message,
            } => {
                if self.connections[index] != Some(generation) {
                    return Ok(());
                }
                if let AcceptorMessage::Append(response) = &message {
                    self.reported_commit[index] =
                        self.reported_commit[index].max(response.commit_lsn);
                }
                match self.proposer.on_message(index, message) {
                    Ok(actions) => actions,
                    Err(
                        e @ (ProposerError::Fenced { .. } | ProposerError::StartMismatch { .. }),
                    ) => {
                        return Err(e.into());
                    }
                    Err(e) => {
                        warn!("{e}");
                        Vec::new()
                    }
                }
            }
        };
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    if let Some(generation) = self.connections[to] {
                        self.links[to].send(generation, message);
                    }
                }
                Action::Elected {
                    term,
                    donor,
                    epoch_start,
                } => {
                    info!(term, donor = self.links[donor].address, %epoch_start, "elected");
                    self.donor = Some(donor);
                    if source.is_none() {
                        self.buffer = WalBuffer::new(epoch_start);
                    }
                }
                Action::Committed(lsn) => {
                    tracing::debug!(%lsn, "committed");
                    self.heartbeats();
                }
                Action::SyncDone(lsn) => {
                    info!(%lsn, "safekeepers are in sync");
                    self.sync_result = Some(lsn);
                    self.heartbeats();
                }
            }
        }
        Ok(())
    }

    /// Send every safekeeper the WAL it needs, as far as queues allow.
    fn pump(&mut self) {
        for i in 0..self.links.len() {
            let Some(generation) = self.connections[i] else {
                continue;
            };
            while self.links[i].queued_bytes() < MAX_QUEUED {
                let Some(begin) = self.proposer.wal_needed(i) else {
                    break;
                };
                if begin < self.buffer.start() {
                    self.start_recovery(i, begin);
                    break;
                }
                let Some(data) = self.buffer.read(begin, APPEND_CHUNK) else {
                    break;
                };
                if data.is_empty() {
                    break;
                }
                let message = self.proposer.append(i, data);
                self.links[i].send(generation, message);
            }
        }
        // Keep WAL until every safekeeper has it (a lagging one pins it, up to the limit).
        let oldest = (0..self.links.len())
            .map(|i| {
                // Never below what a safekeeper acknowledged or still needs.
                let ack = self.proposer.acknowledged(i);
                self.proposer
                    .wal_needed(i)
                    .map_or(ack, |next| ack.min(next))
            })
            .min()
            .unwrap_or(Lsn::INVALID)
            .min(self.proposer.commit_lsn());
        let floor = Lsn(self.buffer.end().0.saturating_sub(MAX_BUFFERED as u64 / 2));
        self.buffer.trim(oldest.max(floor));
    }

    /// Read WAL `from` up to the buffer's start for acceptor `needy` from the
    /// elected donor, or, when the donor is the one that needs it (it lost
    /// its disk and came back empty), from another connected acceptor that
    /// acknowledged that WAL in our term.
    fn start_recovery(&mut self, needy: usize, from: Lsn) {
        let (Some(mut donor), None) = (self.donor, &self.recovery) else {
            return;
        };
        let to = self.buffer.start();
        if donor == needy {
            let other = (0..self.links.len())
                .filter(|&j| j != needy && self.connections[j].is_some())
                .filter(|&j| self.proposer.acknowledged(j) >= to)
                .max_by_key(|&j| self.proposer.acknowledged(j));
            let Some(other) = other else {
                return;
            };
            donor = other;
        }
        let (tx, rx) = oneshot::channel();
        let address = self.links[donor].address.clone();
        let (tenant_id, timeline_id) = (self.config.tenant_id, self.config.timeline_id);
        info!(donor = address, %from, %to, "recovering WAL from the donor");
        tokio::spawn(async move {
            let _ = tx.send(read_from_donor(address, tenant_id, timeline_id, from, to).await);
        });
        self.recovery = Some(rx);
    }

    fn heartbeats(&mut self) {
        for i in 0..self.links.len() {
            if let (Some(generation), Some(message)) =
                (self.connections[i], self.proposer.heartbeat(i))
            {
                self.links[i].send(generation, message);
            }
        }
    }
}
