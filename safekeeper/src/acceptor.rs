//! The acceptor side of the consensus protocol, as a state machine over
//! durable storage (see `safekeeper_api` for the protocol).
//!
//! Safety rests on three rules enforced here:
//! - a vote is given at most once per term, and the term is persisted
//!   before the vote is answered;
//! - messages of a lower term than the acceptor's are refused;
//! - WAL is acknowledged only after it is flushed, and WAL at or below the
//!   commit LSN is never truncated.

use serde::{Deserialize, Serialize};
use utils::{Lsn, NodeId, TenantId, TimelineId};

use safekeeper_api::messages::{
    AcceptorMessage, AppendRequest, AppendResponse, ProposerElected, ProposerGreeting,
    ProposerMessage, VoteResponse, PROTOCOL_VERSION,
};
use safekeeper_api::{Term, TermHistory};

/// What the timeline's WAL is, fixed by its first proposer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `PG_VERSION_NUM`; 0 until a proposer or the creator sets it.
    pub pg_version: u32,
    /// 0 until known.
    pub system_id: u64,
    pub wal_seg_size: u32,
}

/// Everything an acceptor keeps in its control file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    /// The highest term this acceptor has seen (and voted in, if any).
    pub term: Term,
    /// Whose WAL the log holds.
    pub term_history: TermHistory,
    pub server: ServerInfo,
    pub proposer_id: [u8; 16],
    /// Where the timeline's WAL begins.
    pub timeline_start_lsn: Lsn,
    /// Where this acceptor's WAL begins (it may have joined late).
    pub local_start_lsn: Lsn,
    /// A commit LSN known at the last persist (the live one is in memory).
    pub commit_lsn: Lsn,
    pub backup_lsn: Lsn,
    pub remote_consistent_lsn: Lsn,
    pub peer_horizon_lsn: Lsn,
}

impl PersistentState {
    pub fn new(tenant_id: TenantId, timeline_id: TimelineId, server: ServerInfo) -> Self {
        PersistentState {
            tenant_id,
            timeline_id,
            term: 0,
            term_history: TermHistory::empty(),
            server,
            proposer_id: [0; 16],
            timeline_start_lsn: Lsn::INVALID,
            local_start_lsn: Lsn::INVALID,
            commit_lsn: Lsn::INVALID,
            backup_lsn: Lsn::INVALID,
            remote_consistent_lsn: Lsn::INVALID,
            peer_horizon_lsn: Lsn::INVALID,
        }
    }
}

/// Durable storage of the acceptor's state.
pub trait ControlStore {
    /// Make `state` durable (it survives a crash once this returns).
    fn persist(&mut self, state: &PersistentState) -> anyhow::Result<()>;
}

/// Durable storage of the acceptor's WAL.
pub trait WalStore {
    /// End of the WAL written (flushed or not).
    fn write_lsn(&self) -> Lsn;
    /// End of the last complete record that is flushed.
    fn flush_lsn(&self) -> Lsn;
    /// Append `data` at `at`, which must be `write_lsn()`.
    fn write(&mut self, at: Lsn, data: &[u8]) -> anyhow::Result<()>;
    /// Make all written WAL durable.
    fn flush(&mut self) -> anyhow::Result<()>;
    /// Remove all WAL from `at` on, durably; `at` becomes the write and
    /// flush position. On an empty log this sets where the log begins.
    fn truncate(&mut self, at: Lsn) -> anyhow::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptorError {
    #[error("term {received} is lower than this safekeeper's term {current}")]
    StaleTerm { received: Term, current: Term },
    #[error("unsupported protocol version {0}, this safekeeper speaks {PROTOCOL_VERSION}")]
    ProtocolVersion(u32),
    #[error("greeting for {got_tenant}/{got_timeline} reached timeline {tenant}/{timeline}")]
    WrongTimeline {
        got_tenant: TenantId,
        got_timeline: TimelineId,
        tenant: TenantId,
        timeline: TimelineId,
    },
    #[error("proposer's {what} {proposed} differs from the timeline's {existing}")]
    ServerMismatch {
        what: &'static str,
        proposed: u64,
        existing: u64,
    },
    #[error("{0} before a greeting")]
    NotGreeted(&'static str),
    #[error("append in term {0} before this safekeeper accepted a proposer of that term")]
    NotElected(Term),
    #[error("invalid term history from proposer: {0}")]
    InvalidHistory(String),
    #[error(
        "refusing to truncate WAL at {at}: WAL up to the commit LSN {commit_lsn} is committed"
    )]
    TruncateCommitted { at: Lsn, commit_lsn: Lsn },
    #[error("proposer wants to stream from {start}, but this safekeeper's WAL ends at {end}")]
    Gap { start: Lsn, end: Lsn },
    #[error("append of {begin}..{end} does not continue the WAL written up to {write_lsn}")]
    Discontinuous {
        begin: Lsn,
        end: Lsn,
        write_lsn: Lsn,
    },
    #[error(
        "proposer's {what} {lsn} is beyond the greatest LSN a timeline may reach ({MAX_PEER_LSN})"
    )]
    LsnOutOfRange { what: &'static str, lsn: Lsn },
    #[error("append of {len} bytes at {begin} claims to end at {end}")]
    AppendLength { begin: Lsn, end: Lsn, len: usize },
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

/// The greatest LSN a proposer may name: 2^62 (4 EiB of WAL, beyond any
/// real timeline). Adding a segment or a message to an LSN below it can
/// never overflow, so no state a proposer makes this safekeeper persist
/// can break its arithmetic later.
pub const MAX_PEER_LSN: Lsn = Lsn(1 << 62);

fn check_lsn(what: &'static str, lsn: Lsn) -> Result<(), AcceptorError> {
    if lsn > MAX_PEER_LSN {
        return Err(AcceptorError::LsnOutOfRange { what, lsn });
    }
    Ok(())
}

/// Take the proposer's value if the timeline has none (0) yet, else require
/// it to match; a proposer that does not know it (0) accepts ours.
fn adopt_or_check<T>(what: &'static str, proposed: T, existing: &mut T) -> Result<(), AcceptorError>
where
    T: Copy + PartialEq + Default + Into<u64>,
{
    if proposed == T::default() {
        return Ok(());
    }
    if *existing == T::default() {
        *existing = proposed;
    } else if *existing != proposed {
        return Err(AcceptorError::ServerMismatch {
            what,
            proposed: proposed.into(),
            existing: (*existing).into(),
        });
    }
    Ok(())
}

/// One timeline's acceptor.
pub struct Acceptor<C, W> {
    pub state: PersistentState,
    pub node_id: NodeId,
    control: C,
    wal: W,
    /// The commit LSN as known now (at least `state.commit_lsn`).
    commit_lsn: Lsn,
    /// A commit LSN received with appends, applied at the next flush.
    pending_commit_lsn: Lsn,
}

impl<C: ControlStore, W: WalStore> Acceptor<C, W> {
    pub fn new(state: PersistentState, node_id: NodeId, control: C, wal: W) -> Self {
        let commit_lsn = state.commit_lsn.min(wal.flush_lsn());
        Acceptor {
            state,
            node_id,
            control,
            wal,
            commit_lsn,
            pending_commit_lsn: Lsn::INVALID,
        }
    }

    pub fn commit_lsn(&self) -> Lsn {
        self.commit_lsn
    }

    pub fn flush_lsn(&self) -> Lsn {
        self.wal.flush_lsn()
    }

    pub fn wal(&self) -> &W {
        &self.wal
    }

    /// The term whose WAL ends this acceptor's log.
    pub fn last_log_term(&self) -> Term {
        self.state
            .term_history
            .up_to(self.wal.flush_lsn())
            .last_term()
    }

    /// Handle one message; the connection makes sure a greeting comes
    /// first. Appends are written but not flushed: call
    /// [`flush`](Self::flush) after a batch to make them durable and get
    /// the response.
    pub fn process(
        &mut self,
        message: ProposerMessage,
    ) -> Result<Option<AcceptorMessage>, AcceptorError> {
        match message {
            ProposerMessage::Greeting(greeting) => self.greet(greeting).map(Some),
            ProposerMessage::VoteRequest { term } => self.vote(term).map(Some),
            ProposerMessage::Elected(elected) => self.elected(elected).map(|()| None),
            ProposerMessage::Append(append) => self.append(append).map(|()| None),
        }
    }

    fn greet(&mut self, g: ProposerGreeting) -> Result<AcceptorMessage, AcceptorError> {
        if g.protocol_version != PROTOCOL_VERSION {
            return Err(AcceptorError::ProtocolVersion(g.protocol_version));
        }
        if (g.tenant_id, g.timeline_id) != (self.state.tenant_id, self.state.timeline_id) {
            return Err(AcceptorError::WrongTimeline {
                got_tenant: g.tenant_id,
                got_timeline: g.timeline_id,
                tenant: self.state.tenant_id,
                timeline: self.state.timeline_id,
            });
        }
        let mut updated = self.state.server;
        adopt_or_check("system id", g.system_id, &mut updated.system_id)?;
        adopt_or_check("PostgreSQL version", g.pg_version, &mut updated.pg_version)?;
        adopt_or_check(
            "WAL segment size",
            g.wal_seg_size,
            &mut updated.wal_seg_size,
        )?;
        if updated != self.state.server || g.proposer_id != self.state.proposer_id {
            let mut state = self.state.clone();
            state.server = updated;
            state.proposer_id = g.proposer_id;
            self.persist(state)?;
        }
        Ok(AcceptorMessage::Greeting {
            term: self.state.term,
            node_id: self.node_id,
        })
    }

    fn vote(&mut self, term: Term) -> Result<AcceptorMessage, AcceptorError> {
        let vote_given = term > self.state.term;
        if vote_given {
            let mut state = self.state.clone();
            state.term = term;
            self.persist(state)?;
        }
        let flush_lsn = self.wal.flush_lsn();
        Ok(AcceptorMessage::Vote(VoteResponse {
            term: self.state.term,
            vote_given,
            flush_lsn,
            truncate_lsn: self.state.peer_horizon_lsn,
            term_history: self.state.term_history.up_to(flush_lsn),
            timeline_start_lsn: self.state.timeline_start_lsn,
        }))
    }

    fn elected(&mut self, e: ProposerElected) -> Result<(), AcceptorError> {
        check_lsn("start_streaming_at", e.start_streaming_at)?;
        check_lsn("timeline_start_lsn", e.timeline_start_lsn)?;
        for entry in &e.term_history.0 {
            check_lsn("term history LSN", entry.lsn)?;
        }
        if e.term < self.state.term {
            return Err(AcceptorError::StaleTerm {
                received: e.term,
                current: self.state.term,
            });
        }
        e.term_history
            .validate()
            .map_err(|err| AcceptorError::InvalidHistory(err.to_string()))?;
        if e.term_history.last_term() != e.term {
            return Err(AcceptorError::InvalidHistory(format!(
                "it ends in term {}, not the proposer's term {}",
                e.term_history.last_term(),
                e.term
            )));
        }
        let empty = self.state.term_history.0.is_empty() && !self.wal.flush_lsn().is_valid();
        let start = e.start_streaming_at;
        if !empty {
            if start < self.commit_lsn {
                return Err(AcceptorError::TruncateCommitted {
                    at: start,
                    commit_lsn: self.commit_lsn,
                });
            }
            if start > self.wal.flush_lsn() {
                return Err(AcceptorError::Gap {
                    start,
                    end: self.wal.flush_lsn(),
                });
            }
        }
        // Truncate first: a crash before the history is persisted leaves
        // the old history over a shorter log, which is still true.
        if empty || self.wal.write_lsn() != start {
            self.wal.truncate(start)?;
        }
        let mut state = self.state.clone();
        state.term = e.term;
        state.term_history = e.term_history;
        if empty {
            state.local_start_lsn = start;
        }
        if !state.timeline_start_lsn.is_valid() {
            state.timeline_start_lsn = e.timeline_start_lsn;
        }
        self.persist(state)?;
        Ok(())
    }

    fn append(&mut self, a: AppendRequest) -> Result<(), AcceptorError> {
        check_lsn("begin_lsn", a.begin_lsn)?;
        check_lsn("end_lsn", a.end_lsn)?;
        check_lsn("commit_lsn", a.commit_lsn)?;
        check_lsn("truncate_lsn", a.truncate_lsn)?;
        if a.begin_lsn.checked_add(a.wal_data.len() as u64) != Some(a.end_lsn) {
            return Err(AcceptorError::AppendLength {
                begin: a.begin_lsn,
                end: a.end_lsn,
                len: a.wal_data.len(),
            });
        }
        if a.term < self.state.term {
            return Err(AcceptorError::StaleTerm {
                received: a.term,
                current: self.state.term,
            });
        }
        if a.term > self.state.term || self.state.term_history.last_term() != a.term {
            return Err(AcceptorError::NotElected(a.term));
        }
        let write_lsn = self.wal.write_lsn();
        if a.begin_lsn != write_lsn {
            return Err(AcceptorError::Discontinuous {
                begin: a.begin_lsn,
                end: a.end_lsn,
                write_lsn,
            });
        }
        if !a.wal_data.is_empty() {
            self.wal.write(a.begin_lsn, &a.wal_data)?;
        }
        self.pending_commit_lsn = self.pending_commit_lsn.max(a.commit_lsn);
        self.state.peer_horizon_lsn = self.state.peer_horizon_lsn.max(a.truncate_lsn);
        Ok(())
    }

    /// Flush appended WAL and answer with what is durable. The commit LSN
    /// advances to what the proposer said, but never past our flushed WAL.
    pub fn flush(&mut self) -> Result<AcceptorMessage, AcceptorError> {
        self.wal.flush()?;
        let flush_lsn = self.wal.flush_lsn();
        self.commit_lsn = self.commit_lsn.max(self.pending_commit_lsn.min(flush_lsn));
        Ok(AcceptorMessage::Append(AppendResponse {
            term: self.state.term,
            flush_lsn,
            commit_lsn: self.commit_lsn,
            // Filled in by the WAL service, which knows the readers.
            pageserver_last_record_lsn: Lsn::INVALID,
        }))
    }

    /// Persist the in-memory commit LSN and horizons (done now and then,
    /// not on every append: they can be recovered).
    pub fn persist_progress(&mut self) -> Result<(), AcceptorError> {
        if self.state.commit_lsn != self.commit_lsn {
            let mut state = self.state.clone();
            state.commit_lsn = self.commit_lsn;
            self.persist(state)?;
        }
        Ok(())
    }

    /// Persist the in-memory commit LSN with the offload horizons: WAL below
    /// `backup_lsn` is in remote storage, WAL below `remote_consistent_lsn`
    /// is in the pageserver's remote storage. Both only move forward.
    pub fn persist_horizons(
        &mut self,
        backup_lsn: Lsn,
        remote_consistent_lsn: Lsn,
    ) -> Result<(), AcceptorError> {
        let mut state = self.state.clone();
        state.commit_lsn = state.commit_lsn.max(self.commit_lsn);
        state.backup_lsn = state.backup_lsn.max(backup_lsn);
        state.remote_consistent_lsn = state.remote_consistent_lsn.max(remote_consistent_lsn);
        if state != self.state {
            self.persist(state)?;
        }
        Ok(())
    }

    fn persist(&mut self, state: PersistentState) -> Result<(), AcceptorError> {
        self.control.persist(&state)?;
        self.state = state;
        Ok(())
    }
}
