//! Terms and term histories.

use serde::{Deserialize, Serialize};
use utils::Lsn;

/// A consensus term (epoch). Each elected proposer has its own.
pub type Term = u64;

/// A term and the LSN at which its WAL begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermLsn {
    pub term: Term,
    pub lsn: Lsn,
}

/// Whose WAL a log holds: entries in increasing term and non-decreasing
/// LSN; entry *i* covers `[lsn_i, lsn_{i+1})`, the last one up to the log's end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermHistory(pub Vec<TermLsn>);

/// Returned when a term history is not ordered as it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid term history {history:?}: {reason}")]
pub struct InvalidTermHistory {
    pub history: Vec<TermLsn>,
    pub reason: &'static str,
}

impl TermHistory {
    pub fn empty() -> Self {
        TermHistory(Vec::new())
    }

    /// Terms strictly increasing, LSNs non-decreasing.
    pub fn validate(&self) -> Result<(), InvalidTermHistory> {
        for pair in self.0.windows(2) {
            let reason = if pair[1].term <= pair[0].term {
                "terms must increase"
            } else if pair[1].lsn < pair[0].lsn {
                "start LSNs must not decrease"
            } else {
                continue;
            };
            return Err(InvalidTermHistory {
                history: self.0.clone(),
                reason,
            });
        }
        Ok(())
    }

    /// The term of the last entry: whose WAL ends the log.
    pub fn last_term(&self) -> Term {
        self.0.last().map_or(0, |e| e.term)
    }

    /// The history of the log cut at `end`: entries that start after it
    /// are dropped (their WAL is not in the log).
    pub fn up_to(&self, end: Lsn) -> TermHistory {
        TermHistory(self.0.iter().copied().filter(|e| e.lsn <= end).collect())
    }

    /// Where the log with history `self` ending at `self_end` agrees with
    /// the log with history `other` ending at `other_end`: the end of the
    /// last term they share (same term, same start), capped by both ends.
    /// `None` if they share no term.
    pub fn highest_common_point(
        &self,
        self_end: Lsn,
        other: &TermHistory,
        other_end: Lsn,
    ) -> Option<Lsn> {
        let shared = self
            .0
            .iter()
            .zip(other.0.iter())
            .take_while(|(a, b)| a == b)
            .count();
        if shared == 0 {
            return None;
        }
        let end_in = |history: &TermHistory, log_end: Lsn| {
            history
                .0
                .get(shared)
                .map_or(log_end, |next| next.lsn.min(log_end))
        };
        Some(end_in(self, self_end).min(end_in(other, other_end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(Term, u64)]) -> TermHistory {
        TermHistory(
            entries
                .iter()
                .map(|&(term, lsn)| TermLsn {
                    term,
                    lsn: Lsn(lsn),
                })
                .collect(),
        )
    }

    #[test]
    fn common_point() {
        // Same history: the shorter log's end.
        let a = h(&[(1, 10), (2, 50)]);
        assert_eq!(a.highest_common_point(Lsn(80), &a, Lsn(70)), Some(Lsn(70)));
        // Diverged at term 3 vs 4, both starting after 50: agree up to the start of the next term.
        let b = h(&[(1, 10), (2, 50), (3, 60)]);
        let c = h(&[(1, 10), (2, 50), (4, 65)]);
        assert_eq!(b.highest_common_point(Lsn(100), &c, Lsn(90)), Some(Lsn(60)));
        assert_eq!(c.highest_common_point(Lsn(90), &b, Lsn(100)), Some(Lsn(60)));
        // Nothing shared.
        assert_eq!(
            h(&[(1, 10)]).highest_common_point(Lsn(20), &h(&[(2, 10)]), Lsn(20)),
            None
        );
        assert_eq!(
            TermHistory::empty().highest_common_point(Lsn(0), &a, Lsn(80)),
            None
        );
    }

    #[test]
    fn validation_and_truncation() {
        assert!(h(&[(1, 10), (2, 5)]).validate().is_err());
        assert!(h(&[(2, 10), (2, 20)]).validate().is_err());
        assert!(h(&[(1, 10), (3, 10)]).validate().is_ok());
        assert_eq!(h(&[(1, 10), (2, 50)]).up_to(Lsn(40)), h(&[(1, 10)]));
        assert_eq!(h(&[(1, 10), (2, 50)]).last_term(), 2);
    }
}
