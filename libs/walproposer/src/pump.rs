//! Which WAL goes to which safekeeper, what WAL stays in memory, and when
//! to stop reading from the source — without I/O, so that the driver and
//! the consensus simulation run the same policy.
//!
//! The rules, which keep both safety and liveness:
//!
//! - **No WAL is dropped before a quorum has it.** The buffer is trimmed
//!   at most to the commit LSN. Above it, WAL is kept until acknowledged;
//!   when the buffer is full, reading from the source stops (PostgreSQL's
//!   replication slot keeps the WAL) until a quorum catches up.
//! - WAL below the commit LSN is kept for lagging safekeepers while the
//!   buffer is at most half full; past that it is dropped, and a laggard
//!   gets it back from another safekeeper that acknowledged it in our term
//!   (a *recovery*), one bounded chunk at a time.
//! - Every acceptor gets at most `max_queued` bytes in flight.
//!
//! Memory therefore stays below `max_buffered` + one recovery chunk + the
//! queues, whatever the safekeepers do.

use bytes::Bytes;
use safekeeper_api::messages::ProposerMessage;
use utils::Lsn;

use crate::proposer::Proposer;
use crate::wal_buffer::WalBuffer;

/// Limits of the pump, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct PumpLimits {
    /// WAL kept in memory from the source, at most; reading pauses at it.
    pub max_buffered: usize,
    /// WAL queued for one safekeeper and not yet written to its socket.
    pub max_queued: usize,
    /// WAL in one append message.
    pub append_chunk: usize,
    /// WAL read from another safekeeper in one recovery.
    pub recovery_chunk: usize,
}

impl Default for PumpLimits {
    fn default() -> Self {
        PumpLimits {
            max_buffered: 64 * 1024 * 1024,
            max_queued: 8 * 1024 * 1024,
            append_chunk: 128 * 1024,
            recovery_chunk: 16 * 1024 * 1024,
        }
    }
}

/// A request to read WAL `[from, to)` from safekeeper `donor`, for
/// safekeeper `needy`; answer with [`WalPump::recovered`] or
/// [`WalPump::recovery_failed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub needy: usize,
    pub donor: usize,
    pub from: Lsn,
    pub to: Lsn,
}

/// What [`WalPump::pump`] asks the caller to do.
#[derive(Debug)]
pub enum PumpAction {
    Send { to: usize, message: ProposerMessage },
    Recover(Recovery),
}

pub struct WalPump {
    limits: PumpLimits,
    /// WAL from the source (PostgreSQL), or empty at the epoch start in sync mode.
    buffer: WalBuffer,
    /// WAL read from a donor, below `buffer`'s start.
    recovered: WalBuffer,
    recovery: Option<Recovery>,
}

impl WalPump {
    /// A pump whose source WAL begins at `start`.
    pub fn new(start: Lsn, limits: PumpLimits) -> Self {
        WalPump {
            limits,
            buffer: WalBuffer::new(start),
            recovered: WalBuffer::new(Lsn::INVALID),
            recovery: None,
        }
    }

    /// Begin the source WAL afresh at `start` (sync mode, once elected).
    pub fn reset(&mut self, start: Lsn) {
        self.buffer = WalBuffer::new(start);
        self.recovered = WalBuffer::new(Lsn::INVALID);
    }

    /// The source WAL held: `[start, end)`.
    pub fn buffered(&self) -> (Lsn, Lsn) {
        (self.buffer.start(), self.buffer.end())
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// True while the buffer is full: do not read from the source.
    pub fn source_paused(&self) -> bool {
        self.buffer.len() >= self.limits.max_buffered
    }

    /// The recovery in flight, if any.
    pub fn recovery(&self) -> Option<Recovery> {
        self.recovery
    }

    /// WAL from the source, beginning at `at` (overlap is skipped).
    pub fn source_wal(
        &mut self,
        proposer: &mut Proposer,
        at: Lsn,
        data: Bytes,
    ) -> anyhow::Result<()> {
        self.buffer.append(at, data)?;
        proposer.set_available(self.buffer.end());
        Ok(())
    }

    /// The recovery in flight read `data` at `at`.
    pub fn recovered(&mut self, at: Lsn, data: Bytes) {
        self.recovery = None;
        self.recovered = WalBuffer::new(at);
        // Cannot fail: the buffer is empty and begins at `at`.
        let _ = self.recovered.append(at, data);
    }

    /// The recovery in flight failed; the next pump may ask again.
    pub fn recovery_failed(&mut self) {
        self.recovery = None;
    }

    /// Sends every acceptor the WAL it needs, as far as its queue allows
    /// (`queued[i]`: bytes queued for acceptor `i`), asks for a recovery
    /// where WAL is missing, then trims what nobody needs. `donor` is the
    /// acceptor elected as the most advanced, which holds all WAL below
    /// the epoch start.
    pub fn pump(
        &mut self,
        proposer: &mut Proposer,
        queued: &[usize],
        donor: Option<usize>,
    ) -> Vec<PumpAction> {
        let mut actions = Vec::new();
        for (i, &already) in queued.iter().enumerate().take(proposer.acceptors()) {
            let mut queued = already;
            while queued < self.limits.max_queued {
                let Some(begin) = proposer.wal_needed(i) else {
                    break;
                };
                let source = if begin >= self.buffer.start() {
                    &self.buffer
                } else if begin >= self.recovered.start() && begin < self.recovered.end() {
                    &self.recovered
                } else {
                    if let Some(r) = self.plan_recovery(proposer, i, begin, donor) {
                        actions.push(PumpAction::Recover(r));
                    }
                    break;
                };
                let limit = self
                    .limits
                    .append_chunk
                    .min(self.limits.max_queued - queued);
                let data = match source.read(begin, limit) {
                    Some(data) if !data.is_empty() => data,
                    _ => break,
                };
                queued += data.len();
                let message = proposer.append(i, data);
                actions.push(PumpAction::Send { to: i, message });
            }
        }
        self.trim(proposer);
        actions
    }

    /// A recovery of WAL from `from` for acceptor `needy`, unless one is
    /// in flight or no other acceptor is known to hold that WAL.
    fn plan_recovery(
        &mut self,
        proposer: &Proposer,
        needy: usize,
        from: Lsn,
        donor: Option<usize>,
    ) -> Option<Recovery> {
        if self.recovery.is_some() {
            return None;
        }
        // Up to where each acceptor holds our log: what it acknowledged in
        // our term, and for the elected donor, its log up to the epoch start.
        let holds = |j: usize| {
            let mut lsn = proposer.acknowledged(j);
            if Some(j) == donor {
                lsn = lsn.max(proposer.epoch_start());
            }
            lsn
        };
        let (best, held) = (0..proposer.acceptors())
            .filter(|&j| j != needy && holds(j) > from)
            .map(|j| (j, holds(j)))
            // A connected acceptor first, then the one that holds the most.
            .max_by_key(|&(j, held)| (proposer.is_connected(j), held))?;
        let to = held
            .min(self.buffer.start())
            .min(from + self.limits.recovery_chunk as u64);
        let recovery = Recovery {
            needy,
            donor: best,
            from,
            to,
        };
        self.recovery = Some(recovery);
        Some(recovery)
    }

    /// Forget WAL no acceptor needs, and, once the buffer is half full,
    /// committed WAL that only laggards need (they recover it).
    fn trim(&mut self, proposer: &Proposer) {
        let commit = proposer.commit_lsn();
        let oldest = (0..proposer.acceptors())
            .map(|i| {
                let ack = proposer.acknowledged(i);
                proposer.wal_needed(i).map_or(ack, |next| ack.min(next))
            })
            .min()
            .unwrap_or(Lsn::INVALID)
            .min(commit);
        let half = self.limits.max_buffered as u64 / 2;
        let floor = Lsn(self.buffer.end().0.saturating_sub(half));
        let keep_from = oldest.max(commit.min(floor));
        debug_assert!(keep_from <= commit, "never trim WAL a quorum lacks");
        self.buffer.trim(keep_from);
        // The recovered chunk goes once no acceptor reads from it.
        let in_use = (0..proposer.acceptors()).any(|i| {
            proposer
                .wal_needed(i)
                .is_some_and(|n| n >= self.recovered.start() && n < self.recovered.end())
        });
        if !in_use && self.recovery.is_none() {
            self.recovered = WalBuffer::new(Lsn::INVALID);
        }
    }
}
