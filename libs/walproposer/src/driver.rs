//! Runs a [`Proposer`] against real safekeepers: `sync_safekeepers` and
//! `stream` (with PostgreSQL as the WAL source). What goes where, and when
//! reading from PostgreSQL pauses, is the [`WalPump`]'s policy.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use safekeeper_api::messages::AcceptorMessage;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utils::{Lsn, TenantId, TimelineId};

use crate::backpressure::Backpressure;
pub use crate::postgres_source::PostgresSource;
use crate::proposer::{Action, Mode, Proposer, ProposerConfig, ProposerError};
use crate::pump::{PumpAction, PumpLimits, Recovery, WalPump};
use crate::safekeeper_link::{self, Link, LinkEvent};
use crate::status::{SafekeeperProgress, WalproposerStatus};
use crate::{postgres_source, recovery};

const HEARTBEAT: Duration = Duration::from_millis(500);
/// Commits that wait this long without progress are logged, at most this often.
const STALL_REPORT: Duration = Duration::from_secs(5);
/// A failed recovery is retried after this long.
const RECOVERY_RETRY: Duration = Duration::from_secs(1);
/// A sync whose elected donor is unreachable this long starts over.
const DONOR_LOST: Duration = Duration::from_secs(10);

/// The safekeeper elected for the most advanced log is gone before the
/// others got its WAL: the sync must start over in a new term, with the
/// safekeepers that are there.
#[derive(Debug, thiserror::Error)]
#[error("safekeeper {donor}, which holds the most advanced WAL, has been unreachable for {DONOR_LOST:?} during the sync")]
struct DonorLost {
    donor: String,
}

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
    /// Memory bounds, in bytes.
    pub limits: PumpLimits,
    /// Hold commits back while the pageserver lags the commit LSN by more
    /// than this many bytes (see [`crate::backpressure`]); `None`: never.
    pub max_pageserver_lag: Option<u64>,
    /// The token sent to the safekeepers as the password (one for the
    /// tenant); `None` where they do not authenticate.
    pub auth_token: Option<String>,
}

/// Elect a term and bring a quorum to the most advanced log; returns the
/// LSN up to which WAL is committed (`0/0` for a timeline with no WAL).
pub async fn sync_safekeepers(
    config: WalproposerConfig,
    cancel: CancellationToken,
) -> anyhow::Result<Lsn> {
    loop {
        let (status, _) = watch::channel(WalproposerStatus::default());
        let mut driver = Driver::new(&config, Mode::Sync, Lsn::INVALID, status, cancel.clone());
        match driver.run(None).await {
            Ok(Some(lsn)) => return Ok(lsn),
            Ok(None) => bail!("cancelled"),
            Err(e) if e.is::<DonorLost>() => warn!("{e:#}: syncing again in a new term"),
            Err(e) => return Err(e),
        }
    }
}

/// Stream PostgreSQL's WAL, beginning at `start_lsn`, to the safekeepers
/// until cancelled. Reports the quorum-flushed LSN back to PostgreSQL as
/// its flush position. Fails if another proposer takes over (fenced).
/// `status` gets a snapshot of the progress every heartbeat.
pub async fn stream(
    mut config: WalproposerConfig,
    postgres: PostgresSource,
    start_lsn: Lsn,
    status: watch::Sender<WalproposerStatus>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (system_id, client) = postgres_source::prepare(&postgres).await?;
    if config.system_id != 0 && config.system_id != system_id {
        bail!(
            "PostgreSQL's system id is {system_id}, expected {}",
            config.system_id
        );
    }
    config.system_id = system_id;
    // Bounded in messages of at most 128 KiB (PostgreSQL's largest send).
    let (wal_tx, wal_rx) = mpsc::channel(16);
    let (commit_tx, commit_rx) = watch::channel(start_lsn);
    let source_cancel = cancel.child_token();
    let source = tokio::spawn(postgres_source::run(
        postgres,
        client,
        start_lsn,
        wal_tx,
        commit_rx,
        source_cancel,
    ));
    let mut driver = Driver::new(
        &config,
        Mode::Stream { start_lsn },
        start_lsn,
        status,
        cancel.clone(),
    );
    let result = driver
        .run(Some(Source {
            wal: wal_rx,
            commit: commit_tx,
        }))
        .await;
    cancel.cancel();
    source.abort();
    result.map(|_| ())
}

struct Source {
    wal: mpsc::Receiver<(Lsn, Bytes)>,
    commit: watch::Sender<Lsn>,
}

type RecoveryResult = (Recovery, anyhow::Result<(Lsn, Bytes)>);

struct Driver {
    proposer: Proposer,
    config: WalproposerConfig,
    links: Vec<Link>,
    /// The generation of each link's live connection.
    connections: Vec<Option<u64>>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    pump: WalPump,
    donor: Option<usize>,
    recovery: Option<oneshot::Receiver<RecoveryResult>>,
    /// The commit LSN each safekeeper last reported.
    reported_commit: Vec<Lsn>,
    /// Safekeepers whose last connection refused our token.
    refused: Vec<bool>,
    sync_result: Option<Lsn>,
    status: watch::Sender<WalproposerStatus>,
    /// When the commit LSN last moved (or WAL began to wait).
    progress_at: Instant,
    last_commit: Lsn,
    stall_reported_at: Option<Instant>,
    /// Since when the elected donor is disconnected.
    donor_lost_at: Option<Instant>,
    backpressure: Backpressure,
    cancel: CancellationToken,
}

impl Driver {
    fn new(
        config: &WalproposerConfig,
        mode: Mode,
        start: Lsn,
        status: watch::Sender<WalproposerStatus>,
        cancel: CancellationToken,
    ) -> Driver {
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
                    config.auth_token.clone(),
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
            refused: vec![false; links.len()],
            links,
            events,
            pump: WalPump::new(start, config.limits),
            donor: None,
            recovery: None,
            sync_result: None,
            status,
            progress_at: Instant::now(),
            last_commit: Lsn::INVALID,
            stall_reported_at: None,
            donor_lost_at: None,
            backpressure: Backpressure::new(config.max_pageserver_lag),
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
            // Flow control: while the buffer is full, PostgreSQL's WAL stays
            // in its replication slot.
            let paused = self.pump.source_paused();
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(None),
                Some(event) = self.events.recv() => self.on_event(event, source.is_some())?,
                received = async {
                    match source.as_mut() {
                        Some(s) if !paused => s.wal.recv().await,
                        _ => std::future::pending().await,
                    }
                } => {
                    let Some((at, data)) = received else {
                        if self.cancel.is_cancelled() {
                            return Ok(None);
                        }
                        bail!("reading WAL from PostgreSQL stopped");
                    };
                    self.pump.source_wal(&mut self.proposer, at, data)?;
                }
                recovered = async {
                    match self.recovery.as_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.recovery = None;
                    self.on_recovered(recovered);
                }
                _ = heartbeat.tick() => {
                    self.heartbeats();
                    self.report();
                    if source.is_none() {
                        self.check_donor()?;
                    }
                }
            }
            self.pump();
            if let Some(s) = &source {
                let allowed = self
                    .backpressure
                    .allowed(self.proposer.commit_lsn(), Instant::now());
                s.commit
                    .send_if_modified(|old| std::mem::replace(old, allowed) != allowed);
            }
        }
    }

    /// Sync mode: fails with [`DonorLost`] once the elected donor has been
    /// unreachable for [`DONOR_LOST`] before the sync is done.
    fn check_donor(&mut self) -> anyhow::Result<()> {
        let lost = self
            .donor
            .filter(|&d| self.sync_result.is_none() && !self.proposer.is_connected(d));
        let Some(donor) = lost else {
            self.donor_lost_at = None;
            return Ok(());
        };
        let since = *self.donor_lost_at.get_or_insert_with(Instant::now);
        if since.elapsed() >= DONOR_LOST {
            return Err(DonorLost {
                donor: self.links[donor].address.clone(),
            }
            .into());
        }
        Ok(())
    }

    fn on_recovered(&mut self, recovered: Result<RecoveryResult, oneshot::error::RecvError>) {
        match recovered {
            Ok((r, Ok((at, data)))) => {
                tracing::debug!(
                    from = %r.from, to = %r.to, donor = self.links[r.donor].address,
                    "recovered WAL for safekeeper {}", self.links[r.needy].address
                );
                self.pump.recovered(at, data);
            }
            Ok((r, Err(e))) => {
                warn!(
                    donor = self.links[r.donor].address,
                    "recovering WAL {}..{} for safekeeper {}: {e:#}",
                    r.from,
                    r.to,
                    self.links[r.needy].address
                );
                self.pump.recovery_failed();
            }
            Err(_) => {
                warn!("the recovery task ended");
                self.pump.recovery_failed();
            }
        }
    }

    fn on_event(&mut self, event: LinkEvent, streaming: bool) -> anyhow::Result<()> {
        // Sync mode: a safekeeper that becomes ready for appends (it has
        // answered the election) is asked for its flush position at once,
        // not at the next heartbeat: with nothing to recover, the answers
        // commit the epoch start and end the sync.
        let ready_before: Vec<bool> = (0..self.links.len())
            .map(|i| self.proposer.heartbeat(i).is_some())
            .collect();
        self.handle_event(event, streaming)?;
        if !streaming && self.sync_result.is_none() {
            for (i, was_ready) in ready_before.into_iter().enumerate() {
                if was_ready {
                    continue;
                }
                if let (Some(generation), Some(message)) =
                    (self.connections[i], self.proposer.heartbeat(i))
                {
                    self.links[i].send(generation, message);
                }
            }
        }
        Ok(())
    }

    fn handle_event(&mut self, event: LinkEvent, streaming: bool) -> anyhow::Result<()> {
        let actions = match event {
            LinkEvent::Connected { index, generation } => {
                self.connections[index] = Some(generation);
                self.refused[index] = false;
                self.proposer.on_connect(index)
            }
            LinkEvent::Disconnected {
                index,
                generation,
                reason,
                refused,
            } => {
                if refused {
                    self.refused[index] = true;
                    let refusing = self.refused.iter().filter(|r| **r).count();
                    if refusing > self.links.len() - self.proposer.quorum() {
                        bail!(
                            "{refusing} of {} safekeepers refused this compute's token, no quorum is possible; safekeeper {}: {reason}",
                            self.links.len(),
                            self.links[index].address
                        );
                    }
                }
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
                    self.backpressure
                        .on_pageserver_lsn(response.pageserver_last_record_lsn);
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
                    if !streaming {
                        // Sync mode: everything below the epoch start comes from the donor.
                        self.pump.reset(epoch_start);
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

    /// Send every safekeeper the WAL it needs, as far as queues allow, and
    /// start a recovery where the pump asks for one.
    fn pump(&mut self) {
        let queued: Vec<usize> = self.links.iter().map(Link::queued_bytes).collect();
        for action in self.pump.pump(&mut self.proposer, &queued, self.donor) {
            match action {
                PumpAction::Send { to, message } => {
                    if let Some(generation) = self.connections[to] {
                        self.links[to].send(generation, message);
                    }
                }
                PumpAction::Recover(r) => self.start_recovery(r),
            }
        }
    }

    fn start_recovery(&mut self, r: Recovery) {
        let (tx, rx) = oneshot::channel();
        let address = self.links[r.donor].address.clone();
        let (tenant_id, timeline_id) = (self.config.tenant_id, self.config.timeline_id);
        let token = self.config.auth_token.clone();
        info!(
            donor = address,
            from = %r.from,
            to = %r.to,
            "recovering WAL for safekeeper {}",
            self.links[r.needy].address
        );
        tokio::spawn(async move {
            let result = recovery::read_from_donor(
                &address,
                tenant_id,
                timeline_id,
                token.as_deref(),
                r.from,
                r.to,
            )
            .await;
            if result.is_err() {
                tokio::time::sleep(RECOVERY_RETRY).await;
            }
            let _ = tx.send((r, result));
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

    /// Publishes the status; logs why commits wait when they have waited
    /// long (at most every [`STALL_REPORT`]).
    fn report(&mut self) {
        let now = Instant::now();
        let commit = self.proposer.commit_lsn();
        let (_, received) = self.pump.buffered();
        let waiting = received > commit;
        if commit != self.last_commit || !waiting {
            self.last_commit = commit;
            self.progress_at = now;
        }
        let stalled = if waiting {
            now - self.progress_at
        } else {
            Duration::ZERO
        };
        let status = WalproposerStatus {
            term: self.proposer.term(),
            elected: self.proposer.is_elected(),
            received_lsn: received,
            commit_lsn: commit,
            quorum: self.proposer.quorum(),
            buffered_bytes: self.pump.buffered_bytes(),
            source_paused: self.pump.source_paused(),
            stalled,
            pageserver_lsn: self.backpressure.pageserver_lsn(),
            max_pageserver_lag: self.backpressure.max_lag(),
            throttling: self.backpressure.throttling(),
            throttled_total: self.backpressure.throttled_total(now),
            recovery: self.pump.recovery().map(|r| {
                (
                    self.links[r.needy].address.clone(),
                    self.links[r.donor].address.clone(),
                    r.from,
                    r.to,
                )
            }),
            safekeepers: (0..self.links.len())
                .map(|i| SafekeeperProgress {
                    address: self.links[i].address.clone(),
                    connected: self.proposer.is_connected(i),
                    flushed_lsn: self.proposer.acknowledged(i),
                    next_lsn: self.proposer.next_send(i),
                    queued_bytes: self.links[i].queued_bytes(),
                })
                .collect(),
        };
        if stalled >= STALL_REPORT
            && self
                .stall_reported_at
                .is_none_or(|at| now - at >= STALL_REPORT)
        {
            warn!(
                "commits have waited {:.0?} for a quorum: {}",
                stalled,
                status.describe_wait()
            );
            self.stall_reported_at = Some(now);
        }
        if stalled.is_zero() && self.stall_reported_at.take().is_some() {
            info!(%commit, "commits move again");
        }
        self.status.send_replace(status);
    }
}
