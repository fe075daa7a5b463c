//! Backpressure: commits wait while the pageserver is too far behind.
//!
//! PostgreSQL treats the walproposer as its synchronous standby, so a
//! commit returns once the walproposer reports its WAL flushed. Reporting
//! only up to `pageserver LSN + max lag` (never more than the commit LSN)
//! holds commits back while the pageserver's ingest lags the safekeepers by
//! more than the bound; the compute slows down to the pageserver's pace
//! instead of the lag growing without limit, and a restart or a branch never
//! waits for more than the bound to be ingested.
//!
//! The pageserver's position comes from the safekeepers (which learn it from
//! the pageserver's status updates). Until a pageserver has reported, nothing
//! is held back. The bound applies at commit: one transaction that writes
//! more than the bound still runs to its commit, which then waits.

use std::time::{Duration, Instant};

use utils::Lsn;

/// Default bound on the pageserver's lag behind the commit LSN.
pub const DEFAULT_MAX_PAGESERVER_LAG: u64 = 256 * 1024 * 1024;

/// The bound from a setting in bytes: unset is the default, 0 is off.
pub fn max_lag_from_setting(bytes: Option<u64>) -> Option<u64> {
    match bytes {
        None => Some(DEFAULT_MAX_PAGESERVER_LAG),
        Some(0) => None,
        Some(bytes) => Some(bytes),
    }
}

/// The throttle, updated as commits and pageserver reports arrive.
#[derive(Debug)]
pub struct Backpressure {
    /// `None`: never hold commits back.
    max_lag: Option<u64>,
    /// The furthest the pageserver has reported having ingested.
    pageserver_lsn: Lsn,
    /// Since when commits are held back, while they are.
    throttled_since: Option<Instant>,
    /// Time spent holding commits back, before `throttled_since`.
    throttled_before: Duration,
}

impl Backpressure {
    pub fn new(max_lag: Option<u64>) -> Backpressure {
        Backpressure {
            max_lag,
            pageserver_lsn: Lsn::INVALID,
            throttled_since: None,
            throttled_before: Duration::ZERO,
        }
    }

    /// A safekeeper's report of the pageserver's last ingested record.
    pub fn on_pageserver_lsn(&mut self, lsn: Lsn) {
        self.pageserver_lsn = self.pageserver_lsn.max(lsn);
    }

    /// The flush LSN to report to PostgreSQL: `commit`, or less while the
    /// pageserver lags by more than the bound. Tracks the time throttled.
    pub fn allowed(&mut self, commit: Lsn, now: Instant) -> Lsn {
        let allowed = match self.max_lag {
            Some(max_lag) if self.pageserver_lsn != Lsn::INVALID => {
                commit.min(Lsn(self.pageserver_lsn.0.saturating_add(max_lag)))
            }
            _ => commit,
        };
        match (allowed < commit, self.throttled_since) {
            (true, None) => self.throttled_since = Some(now),
            (false, Some(since)) => {
                self.throttled_before += now.saturating_duration_since(since);
                self.throttled_since = None;
            }
            _ => {}
        }
        allowed
    }

    pub fn max_lag(&self) -> Option<u64> {
        self.max_lag
    }

    /// The pageserver's last reported position (invalid before a report).
    pub fn pageserver_lsn(&self) -> Lsn {
        self.pageserver_lsn
    }

    /// Whether commits are held back now.
    pub fn throttling(&self) -> bool {
        self.throttled_since.is_some()
    }

    /// Time spent holding commits back so far.
    pub fn throttled_total(&self, now: Instant) -> Duration {
        self.throttled_before
            + self
                .throttled_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn holds_commits_back_while_the_pageserver_lags() {
        let t0 = Instant::now();
        let mut b = Backpressure::new(Some(16 * MB));
        // No report yet: nothing is held back.
        assert_eq!(b.allowed(Lsn(100 * MB), t0), Lsn(100 * MB));
        assert!(!b.throttling());

        b.on_pageserver_lsn(Lsn(10 * MB));
        assert_eq!(b.allowed(Lsn(100 * MB), t0), Lsn(26 * MB));
        assert!(b.throttling());
        // Reports only move forward.
        b.on_pageserver_lsn(Lsn(5 * MB));
        assert_eq!(b.pageserver_lsn(), Lsn(10 * MB));

        let t1 = t0 + Duration::from_secs(3);
        b.on_pageserver_lsn(Lsn(90 * MB));
        assert_eq!(b.allowed(Lsn(100 * MB), t1), Lsn(100 * MB));
        assert!(!b.throttling());
        assert_eq!(b.throttled_total(t1), Duration::from_secs(3));

        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(b.allowed(Lsn(200 * MB), t2), Lsn(106 * MB));
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(b.throttled_total(t3), Duration::from_secs(5));
    }

    #[test]
    fn off_without_a_bound() {
        let mut b = Backpressure::new(None);
        b.on_pageserver_lsn(Lsn(1));
        assert_eq!(b.allowed(Lsn(u64::MAX), Instant::now()), Lsn(u64::MAX));
        assert!(!b.throttling());
    }
}
