//! The walproposer's progress as compute_ctl shows it: commits that wait
//! for the safekeepers are visible in `/status` (and so in
//! `cargo neon endpoint list`) and in `/metrics`.

use compute_api::responses::CommitProgress;
use prometheus::{Gauge, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::watch;
use walproposer::status::WalproposerStatus;

/// Follows the status the walproposer publishes.
pub struct CommitWatch {
    tx: watch::Sender<WalproposerStatus>,
}

struct Gauges {
    received: IntGauge,
    committed: IntGauge,
    lag: IntGauge,
    stalled: Gauge,
    buffered: IntGauge,
    paused: IntGauge,
    flushed: IntGaugeVec,
    connected: IntGaugeVec,
    pageserver_lag: IntGauge,
    max_pageserver_lag: IntGauge,
    throttled: IntGauge,
    throttled_seconds: Gauge,
}

impl Gauges {
    fn new() -> anyhow::Result<Self> {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        Ok(Gauges {
            received: gauge(
                "compute_walproposer_received_lsn",
                "End of the WAL the walproposer read from PostgreSQL",
            )?,
            committed: gauge(
                "compute_walproposer_commit_lsn",
                "WAL flushed by a quorum of safekeepers; commits up to it returned",
            )?,
            lag: gauge(
                "compute_walproposer_commit_lag_bytes",
                "WAL read from PostgreSQL that no quorum holds yet",
            )?,
            stalled: Gauge::new(
                "compute_walproposer_commit_stalled_seconds",
                "How long WAL has waited for a quorum without the commit LSN moving (0: not waiting)",
            )?,
            buffered: gauge(
                "compute_walproposer_buffered_bytes",
                "WAL the walproposer holds in memory",
            )?,
            paused: gauge(
                "compute_walproposer_source_paused",
                "1 while the WAL buffer is full and reading from PostgreSQL is paused",
            )?,
            flushed: IntGaugeVec::new(
                Opts::new(
                    "compute_walproposer_safekeeper_flush_lsn",
                    "WAL each safekeeper acknowledged as flushed in the current term",
                ),
                &["safekeeper"],
            )?,
            connected: IntGaugeVec::new(
                Opts::new(
                    "compute_walproposer_safekeeper_connected",
                    "1 while the walproposer is connected to the safekeeper",
                ),
                &["safekeeper"],
            )?,
            pageserver_lag: gauge(
                "compute_walproposer_pageserver_lag_bytes",
                "Committed WAL the pageserver has not ingested yet, as the safekeepers report (-1: no report)",
            )?,
            max_pageserver_lag: gauge(
                "compute_walproposer_backpressure_max_lag_bytes",
                "Commits wait while the pageserver lags by more than this (0: backpressure off)",
            )?,
            throttled: gauge(
                "compute_walproposer_backpressure_throttling",
                "1 while commits are held back because the pageserver lags too far",
            )?,
            throttled_seconds: Gauge::new(
                "compute_walproposer_backpressure_throttled_seconds",
                "Time commits have been held back by backpressure since the walproposer started",
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> anyhow::Result<()> {
        registry.register(Box::new(self.received.clone()))?;
        registry.register(Box::new(self.committed.clone()))?;
        registry.register(Box::new(self.lag.clone()))?;
        registry.register(Box::new(self.stalled.clone()))?;
        registry.register(Box::new(self.buffered.clone()))?;
        registry.register(Box::new(self.paused.clone()))?;
        registry.register(Box::new(self.flushed.clone()))?;
        registry.register(Box::new(self.connected.clone()))?;
        registry.register(Box::new(self.pageserver_lag.clone()))?;
        registry.register(Box::new(self.max_pageserver_lag.clone()))?;
        registry.register(Box::new(self.throttled.clone()))?;
        registry.register(Box::new(self.throttled_seconds.clone()))?;
        Ok(())
    }

    fn update(&self, s: &WalproposerStatus) {
        // LSNs fit in i64 for any WAL PostgreSQL can write (2^63 bytes).
        let lsn = |l: utils::Lsn| i64::try_from(l.0).unwrap_or(i64::MAX);
        self.received.set(lsn(s.received_lsn));
        self.committed.set(lsn(s.commit_lsn));
        self.lag
            .set(lsn(s.received_lsn).saturating_sub(lsn(s.commit_lsn)).max(0));
        self.stalled.set(s.stalled.as_secs_f64());
        self.buffered
            .set(i64::try_from(s.buffered_bytes).unwrap_or(i64::MAX));
        self.paused.set(i64::from(s.source_paused));
        self.pageserver_lag.set(if s.pageserver_lsn.is_valid() {
            lsn(s.commit_lsn)
                .saturating_sub(lsn(s.pageserver_lsn))
                .max(0)
        } else {
            -1
        });
        self.max_pageserver_lag.set(
            s.max_pageserver_lag
                .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        );
        self.throttled.set(i64::from(s.throttling));
        self.throttled_seconds.set(s.throttled_total.as_secs_f64());
        for sk in &s.safekeepers {
            let labels = [sk.address.as_str()];
            self.flushed
                .with_label_values(&labels)
                .set(lsn(sk.flushed_lsn));
            self.connected
                .with_label_values(&labels)
                .set(i64::from(sk.connected));
        }
    }
}

impl CommitWatch {
    /// Registers the gauges and keeps them current (call in a runtime).
    pub fn new(registry: &Registry) -> anyhow::Result<Self> {
        let gauges = Gauges::new()?;
        gauges.register(registry)?;
        let (tx, mut rx) = watch::channel(WalproposerStatus::default());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                gauges.update(&rx.borrow_and_update());
            }
        });
        Ok(CommitWatch { tx })
    }

    /// The sender a new walproposer publishes to; forgets the previous one's.
    pub fn sender(&self) -> watch::Sender<WalproposerStatus> {
        self.tx.send_replace(WalproposerStatus::default());
        self.tx.clone()
    }

    /// For `/status`, while a walproposer runs.
    pub fn progress(&self) -> Option<CommitProgress> {
        let s = self.tx.borrow();
        if s.safekeepers.is_empty() {
            return None;
        }
        Some(CommitProgress {
            received_lsn: s.received_lsn,
            commit_lsn: s.commit_lsn,
            stalled_seconds: s.stalled.as_secs(),
            waiting_for: (!s.stalled.is_zero()).then(|| s.describe_wait()),
            pageserver_lsn: s.pageserver_lsn.is_valid().then_some(s.pageserver_lsn),
            max_pageserver_lag_bytes: s.max_pageserver_lag,
            throttled: s.throttling,
            throttled_seconds: s.throttled_total.as_secs_f64(),
        })
    }
}
