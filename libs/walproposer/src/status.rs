//! What a running walproposer reports about itself: how far commits got,
//! and when they wait, on which safekeepers and LSNs.

use std::fmt::Write as _;
use std::time::Duration;

use safekeeper_api::Term;
use utils::Lsn;

/// One safekeeper as the walproposer sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafekeeperProgress {
    pub address: String,
    pub connected: bool,
    /// WAL it acknowledged as flushed in our term.
    pub flushed_lsn: Lsn,
    /// Where the next append to it begins, once it accepted our term.
    pub next_lsn: Option<Lsn>,
    /// WAL queued for its connection and not yet written.
    pub queued_bytes: usize,
}

/// A snapshot of the walproposer, published as it runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WalproposerStatus {
    pub term: Term,
    pub elected: bool,
    /// The end of the WAL read from PostgreSQL.
    pub received_lsn: Lsn,
    /// WAL flushed by a quorum: commits up to it have returned.
    pub commit_lsn: Lsn,
    /// A quorum is this many safekeepers.
    pub quorum: usize,
    /// WAL held in memory.
    pub buffered_bytes: usize,
    /// The buffer is full: no WAL is read from PostgreSQL until a quorum
    /// catches up.
    pub source_paused: bool,
    /// How long WAL has been waiting for a quorum without the commit LSN
    /// moving; zero when nothing waits.
    pub stalled: Duration,
    /// The last record the pageserver has ingested, as the safekeepers
    /// report it (invalid before a report).
    pub pageserver_lsn: Lsn,
    /// The backpressure bound on the pageserver's lag, if any.
    pub max_pageserver_lag: Option<u64>,
    /// Commits are held back: the pageserver lags by more than the bound.
    pub throttling: bool,
    /// Time commits have been held back, in total.
    pub throttled_total: Duration,
    /// A recovery in flight: (for safekeeper, from donor, range).
    pub recovery: Option<(String, String, Lsn, Lsn)>,
    pub safekeepers: Vec<SafekeeperProgress>,
}

impl WalproposerStatus {
    /// One line: what commits wait for, safekeeper by safekeeper.
    pub fn describe_wait(&self) -> String {
        let mut text = String::new();
        if !self.elected {
            let connected = self.safekeepers.iter().filter(|s| s.connected).count();
            let _ = write!(
                text,
                "not elected yet: {connected} of {} safekeepers connected, {} needed; ",
                self.safekeepers.len(),
                self.quorum
            );
        }
        let _ = write!(
            text,
            "WAL read up to {}, committed up to {} (a quorum is {} of {}); ",
            self.received_lsn,
            self.commit_lsn,
            self.quorum,
            self.safekeepers.len()
        );
        for (i, sk) in self.safekeepers.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            let _ = write!(text, "safekeeper {}: ", sk.address);
            if !sk.connected {
                let _ = write!(text, "disconnected, flushed {}", sk.flushed_lsn);
                continue;
            }
            let _ = write!(text, "flushed {}", sk.flushed_lsn);
            match sk.next_lsn {
                Some(next) => {
                    let _ = write!(
                        text,
                        ", sent up to {next}, {} bytes queued",
                        sk.queued_bytes
                    );
                }
                None => text.push_str(", has not accepted our term"),
            }
        }
        if let Some((needy, donor, from, to)) = &self.recovery {
            let _ = write!(text, "; recovering {from}..{to} for {needy} from {donor}");
        }
        if self.source_paused {
            let _ = write!(
                text,
                "; the WAL buffer is full ({} bytes): reading from PostgreSQL paused",
                self.buffered_bytes
            );
        }
        text
    }
}
