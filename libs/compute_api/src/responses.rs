//! compute_ctl's HTTP answers.

use serde::{Deserialize, Serialize};
use utils::{Lsn, TenantId, TimelineId};

/// Where a compute is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeStatus {
    /// No spec yet: waiting for `POST /configure`.
    Empty,
    /// Starting: syncing safekeepers, fetching the base backup, starting
    /// postgres, applying roles and databases.
    Init,
    /// postgres accepts connections and the spec is applied.
    Running,
    /// The start failed, postgres exited on its own, or a newer compute
    /// fenced this one's walproposer; `error` says which. postgres is stopped.
    Failed,
    /// Stopped on request (`POST /terminate` or SIGTERM).
    Terminated,
}

impl ComputeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeStatus::Empty => "empty",
            ComputeStatus::Init => "init",
            ComputeStatus::Running => "running",
            ComputeStatus::Failed => "failed",
            ComputeStatus::Terminated => "terminated",
        }
    }
}

impl std::fmt::Display for ComputeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /status`. Times are RFC 3339, UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeState {
    pub status: ComputeStatus,
    /// When the current (or last) start began.
    pub start_time: Option<String>,
    /// The last time a client was seen: a query running, a session
    /// starting, or an idle session's last state change.
    pub last_active: Option<String>,
    /// Why the compute failed, or what stopped it.
    pub error: Option<String>,
    pub tenant_id: Option<TenantId>,
    pub timeline_id: Option<TimelineId>,
    /// `primary` or `static`.
    pub mode: Option<String>,
    /// The LSN the compute started from (its base backup's).
    pub start_lsn: Option<Lsn>,
    /// The compute's current WAL position (insert LSN of a primary; the
    /// fixed LSN of a static compute), as last seen by the monitor.
    pub current_lsn: Option<Lsn>,
    pub pg_port: Option<u16>,
    /// The postmaster's pid while postgres runs.
    pub postgres_pid: Option<u32>,
    /// `lazy` (relation blocks read from the pageserver on first use) or
    /// `full` (copied at start), once the start has chosen.
    #[serde(default)]
    pub data_directory: Option<String>,
    /// A primary's commits: how far they got and whether they wait for
    /// the safekeepers (absent while no walproposer runs).
    #[serde(default)]
    pub commits: Option<CommitProgress>,
}

/// A primary's commits, from its walproposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitProgress {
    /// The end of the WAL read from PostgreSQL.
    pub received_lsn: Lsn,
    /// WAL flushed by a quorum of safekeepers: commits up to it returned.
    pub commit_lsn: Lsn,
    /// How long WAL has waited for a quorum without the commit LSN moving,
    /// in whole seconds (0: nothing waits).
    pub stalled_seconds: u64,
    /// While WAL waits: what for, safekeeper by safekeeper.
    pub waiting_for: Option<String>,
    /// Backpressure: the last record the pageserver has ingested, as the
    /// safekeepers report it (absent before a report).
    #[serde(default)]
    pub pageserver_lsn: Option<Lsn>,
    /// The bound on the pageserver's lag behind the commit LSN (absent:
    /// backpressure is off).
    #[serde(default)]
    pub max_pageserver_lag_bytes: Option<u64>,
    /// Commits are held back now: the pageserver lags by more than the bound.
    #[serde(default)]
    pub throttled: bool,
    /// Time commits have been held back, in total, in seconds.
    #[serde(default)]
    pub throttled_seconds: f64,
}

impl CommitProgress {
    /// Commits that waited this long are shown as stuck.
    pub const STUCK_AFTER_SECONDS: u64 = 10;

    pub fn is_stuck(&self) -> bool {
        self.stalled_seconds >= Self::STUCK_AFTER_SECONDS
    }

    /// Bytes of committed WAL the pageserver has not ingested yet.
    pub fn pageserver_lag_bytes(&self) -> Option<u64> {
        self.pageserver_lsn
            .map(|ingested| self.commit_lsn.0.saturating_sub(ingested.0))
    }
}

impl ComputeState {
    pub fn empty() -> Self {
        ComputeState {
            status: ComputeStatus::Empty,
            start_time: None,
            last_active: None,
            error: None,
            tenant_id: None,
            timeline_id: None,
            mode: None,
            start_lsn: None,
            current_lsn: None,
            pg_port: None,
            postgres_pid: None,
            data_directory: None,
            commits: None,
        }
    }
}
