//! The proposer as a state machine: it is told of connections and
//! messages, and answers with [`Action`]s. WAL bytes are supplied by the
//! caller: [`Proposer::wal_needed`] says which range an acceptor needs next.

use bytes::Bytes;
use utils::{Lsn, TenantId, TimelineId};

use safekeeper_api::messages::{
    AcceptorMessage, AppendRequest, ProposerElected, ProposerGreeting, ProposerMessage,
    VoteResponse, PROTOCOL_VERSION,
};
use safekeeper_api::{Term, TermHistory, TermLsn};

/// Who the proposer is and what it writes.
#[derive(Clone, Debug)]
pub struct ProposerConfig {
    pub tenant_id: TenantId,
    pub timeline_id: TimelineId,
    pub system_id: u64,
    pub pg_version: u32,
    pub wal_seg_size: u32,
    pub proposer_id: [u8; 16],
    /// Number of acceptors; a quorum is a majority of them.
    pub acceptors: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Elect a term, bring a quorum to the most advanced log, report its
    /// end as committed. Writes no new WAL.
    Sync,
    /// Stream new WAL that begins at `start_lsn` (the compute's base
    /// backup LSN), which must be where the most advanced log ends.
    Stream { start_lsn: Lsn },
}

/// What the proposer asks its caller to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        to: usize,
        message: ProposerMessage,
    },
    /// Elected in `term`. WAL below `epoch_start` that acceptors lack is
    /// read from acceptor `donor`.
    Elected {
        term: Term,
        donor: usize,
        epoch_start: Lsn,
    },
    /// The commit LSN advanced.
    Committed(Lsn),
    /// Sync mode is done: WAL up to this LSN is committed (0 if the
    /// timeline has no WAL at all).
    SyncDone(Lsn),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposerError {
    #[error("safekeeper {acceptor} has term {term}, higher than ours ({ours}): another proposer took over")]
    Fenced {
        acceptor: usize,
        term: Term,
        ours: Term,
    },
    #[error("the most advanced WAL ends at {log_end}, but this compute starts at {start_lsn}: sync the safekeepers and take a new base backup")]
    StartMismatch { start_lsn: Lsn, log_end: Lsn },
    #[error("safekeeper {acceptor}: {reason}")]
    Protocol { acceptor: usize, reason: String },
}

#[derive(Clone, Debug, Default)]
struct Slot {
    connected: bool,
    greeted_term: Option<Term>,
    /// The answer to our vote request on this connection.
    vote: Option<VoteResponse>,
    /// Next LSN to send, once `ProposerElected` was sent on this connection.
    next_send: Option<Lsn>,
    /// Flushed WAL acknowledged in our term.
    flush_lsn: Lsn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Greeting,
    Voting,
    Elected,
}

pub struct Proposer {
    config: ProposerConfig,
    mode: Mode,
    quorum: usize,
    phase: Phase,
    term: Term,
    slots: Vec<Slot>,
    history: TermHistory,
    epoch_start: Lsn,
    timeline_start: Lsn,
    commit_lsn: Lsn,
    /// End of the WAL the caller can supply.
    available: Lsn,
    sync_done: bool,
}

impl Proposer {
    pub fn new(config: ProposerConfig, mode: Mode) -> Self {
        let quorum = config.acceptors / 2 + 1;
        let slots = vec![Slot::default(); config.acceptors];
        Proposer {
            config,
            mode,
            quorum,
            phase: Phase::Greeting,
            term: 0,
            slots,
            history: TermHistory::empty(),
            epoch_start: Lsn::INVALID,
            timeline_start: Lsn::INVALID,
            commit_lsn: Lsn::INVALID,
            available: Lsn::INVALID,
            sync_done: false,
        }
    }

    pub fn term(&self) -> Term {
        self.term
    }
    pub fn is_elected(&self) -> bool {
        self.phase == Phase::Elected
    }
    pub fn commit_lsn(&self) -> Lsn {
        self.commit_lsn
    }
    pub fn epoch_start(&self) -> Lsn {
        self.epoch_start
    }
    pub fn history(&self) -> &TermHistory {
        &self.history
    }
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// A connection to acceptor `i` is up: greet it.
    pub fn on_connect(&mut self, i: usize) -> Vec<Action> {
        self.slots[i] = Slot {
            connected: true,
            ..Slot::default()
        };
        let c = &self.config;
        vec![Action::Send {
            to: i,
            message: ProposerMessage::Greeting(ProposerGreeting {
                protocol_version: PROTOCOL_VERSION,
                pg_version: c.pg_version,
                proposer_id: c.proposer_id,
                system_id: c.system_id,
                tenant_id: c.tenant_id,
                timeline_id: c.timeline_id,
                wal_seg_size: c.wal_seg_size,
            }),
        }]
    }

    /// The connection to acceptor `i` is gone; what it acknowledged stands.
    pub fn on_disconnect(&mut self, i: usize) {
        let flush_lsn = self.slots[i].flush_lsn;
        self.slots[i] = Slot {
            flush_lsn,
            ..Slot::default()
        };
    }

    /// Stream mode: WAL up to `end` (what PostgreSQL has flushed) can now
    /// be supplied. Sync mode writes no new WAL, so this does nothing there.
    pub fn set_available(&mut self, end: Lsn) {
        if let Mode::Stream { .. } = self.mode {
            self.available = self.available.max(end);
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn on_message(
        &mut self,
        i: usize,
        message: AcceptorMessage,
    ) -> Result<Vec<Action>, ProposerError> {
        let mut actions = Vec::new();
        match message {
            AcceptorMessage::Greeting { term, .. } => {
                self.slots[i].greeted_term = Some(term);
                match self.phase {
                    Phase::Greeting => {
                        let greeted: Vec<Term> =
                            self.slots.iter().filter_map(|s| s.greeted_term).collect();
                        if greeted.len() >= self.quorum {
                            let highest = greeted.iter().max().copied().unwrap_or(0);
                            self.term = highest.checked_add(1).ok_or_else(|| {
                                ProposerError::Protocol {
                                    acceptor: i,
                                    reason: format!(
                                        "a safekeeper reports term {highest}, the highest there is: no proposer can be elected on this timeline"
                                    ),
                                }
                            })?;
                            self.phase = Phase::Voting;
                            for (to, slot) in self.slots.iter().enumerate() {
                                if slot.greeted_term.is_some() {
                                    actions.push(self.vote_request(to));
                                }
                            }
                        }
                    }
                    Phase::Voting | Phase::Elected => actions.push(self.vote_request(i)),
                }
            }
            AcceptorMessage::Vote(vote) => {
                if vote.term > self.term {
                    return Err(ProposerError::Fenced {
                        acceptor: i,
                        term: vote.term,
                        ours: self.term,
                    });
                }
                if vote.term < self.term {
                    // An answer to our request in an earlier term (we stood
                    // again since); the request in our term follows it.
                    return Ok(actions);
                }
                if self.phase == Phase::Voting && !vote.vote_given {
                    // It already voted in our term: for a competing proposer
                    // (a split vote) or for us on an earlier connection. No
                    // quorum may ever form in this term: stand again in the
                    // next one (a competitor seeing it is fenced).
                    self.term += 1;
                    for (to, slot) in self.slots.iter_mut().enumerate() {
                        slot.vote = None;
                        if slot.connected && slot.greeted_term.is_some() {
                            actions.push(Action::Send {
                                to,
                                message: ProposerMessage::VoteRequest { term: self.term },
                            });
                        }
                    }
                    return Ok(actions);
                }
                self.slots[i].vote = Some(vote);
                match self.phase {
                    Phase::Voting => {
                        let votes = self
                            .slots
                            .iter()
                            .filter(|s| s.vote.as_ref().is_some_and(|v| v.vote_given))
                            .count();
                        if votes >= self.quorum {
                            self.elect(&mut actions)?;
                        }
                    }
                    Phase::Elected => self.send_elected(i, &mut actions),
                    Phase::Greeting => {}
                }
            }
            AcceptorMessage::Append(response) => {
                if response.term > self.term {
                    return Err(ProposerError::Fenced {
                        acceptor: i,
                        term: response.term,
                        ours: self.term,
                    });
                }
                if self.slots[i].next_send.is_none() || response.term < self.term {
                    return Err(ProposerError::Protocol {
                        acceptor: i,
                        reason: format!(
                            "append response in term {} before it accepted our term {}",
                            response.term, self.term
                        ),
                    });
                }
                let slot = &mut self.slots[i];
                slot.flush_lsn = slot.flush_lsn.max(response.flush_lsn);
                self.update_commit(&mut actions);
            }
        }
        Ok(actions)
    }

    fn vote_request(&self, to: usize) -> Action {
        Action::Send {
            to,
            message: ProposerMessage::VoteRequest { term: self.term },
        }
    }

    /// A quorum voted: adopt the most advanced log among the voters.
    fn elect(&mut self, actions: &mut Vec<Action>) -> Result<(), ProposerError> {
        let (donor, vote) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.vote.as_ref().filter(|v| v.vote_given).map(|v| (i, v)))
            .max_by_key(|(_, v)| (v.term_history.up_to(v.flush_lsn).last_term(), v.flush_lsn))
            .expect("a quorum voted");
        let log_end = vote.flush_lsn;
        let epoch_start = match self.mode {
            Mode::Sync => log_end,
            Mode::Stream { start_lsn } if !log_end.is_valid() => start_lsn,
            Mode::Stream { start_lsn } if start_lsn == log_end => start_lsn,
            Mode::Stream { start_lsn } => {
                return Err(ProposerError::StartMismatch { start_lsn, log_end });
            }
        };
        if self.mode == Mode::Sync && !epoch_start.is_valid() {
            // Nothing was ever written: nothing to sync.
            self.phase = Phase::Elected;
            self.sync_done = true;
            actions.push(Action::SyncDone(Lsn::INVALID));
            return Ok(());
        }
        let mut history = vote.term_history.up_to(log_end);
        history.0.push(TermLsn {
            term: self.term,
            lsn: epoch_start,
        });
        self.timeline_start = if vote.timeline_start_lsn.is_valid() {
            vote.timeline_start_lsn
        } else {
            epoch_start
        };
        self.history = history;
        self.epoch_start = epoch_start;
        self.available = self.available.max(epoch_start);
        self.phase = Phase::Elected;
        actions.push(Action::Elected {
            term: self.term,
            donor,
            epoch_start,
        });
        for i in 0..self.slots.len() {
            if self.slots[i].vote.is_some() {
                self.send_elected(i, actions);
            }
        }
        Ok(())
    }

    /// Tell acceptor `i` where its log and ours agree; it streams from there.
    fn send_elected(&mut self, i: usize, actions: &mut Vec<Action>) {
        let Some(vote) = &self.slots[i].vote else {
            return;
        };
        let empty = !vote.flush_lsn.is_valid() && vote.term_history.0.is_empty();
        // An empty acceptor becomes a full replica: it receives the
        // timeline's WAL from its start (older WAL comes from the donor).
        let start = if empty {
            self.timeline_start
        } else {
            // Our log ends where our WAL does: an acceptor that reconnects
            // keeps what it already has of our own term.
            let our_end = self.available.max(self.epoch_start);
            self.history
                .highest_common_point(our_end, &vote.term_history, vote.flush_lsn)
                .unwrap_or(self.timeline_start)
        };
        self.slots[i].next_send = Some(start);
        actions.push(Action::Send {
            to: i,
            message: ProposerMessage::Elected(ProposerElected {
                term: self.term,
                start_streaming_at: start,
                term_history: self.history.clone(),
                timeline_start_lsn: self.timeline_start,
            }),
        });
    }

    fn update_commit(&mut self, actions: &mut Vec<Action>) {
        let mut flushes: Vec<Lsn> = self
            .slots
            .iter()
            .filter(|s| s.flush_lsn >= self.epoch_start && s.flush_lsn.is_valid())
            .map(|s| s.flush_lsn)
            .collect();
        if flushes.len() < self.quorum {
            return;
        }
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = flushes[self.quorum - 1];
        if candidate > self.commit_lsn {
            self.commit_lsn = candidate;
            actions.push(Action::Committed(candidate));
        }
        if self.mode == Mode::Sync && !self.sync_done && self.commit_lsn >= self.epoch_start {
            self.sync_done = true;
            actions.push(Action::SyncDone(self.epoch_start));
        }
    }

    /// The next LSN acceptor `i` needs, if there is WAL to send it.
    pub fn wal_needed(&self, i: usize) -> Option<Lsn> {
        let slot = &self.slots[i];
        slot.next_send
            .filter(|&next| slot.connected && next < self.available)
    }

    /// Whether a connection to acceptor `i` is up.
    pub fn is_connected(&self, i: usize) -> bool {
        self.slots[i].connected
    }

    /// The next LSN to send acceptor `i`, once it accepted our term.
    pub fn next_send(&self, i: usize) -> Option<Lsn> {
        self.slots[i].next_send
    }

    /// The WAL acceptor `i` acknowledged as flushed in our term.
    pub fn acknowledged(&self, i: usize) -> Lsn {
        self.slots[i].flush_lsn
    }

    pub fn acceptors(&self) -> usize {
        self.slots.len()
    }

    /// Up to where WAL can be sent now.
    pub fn available(&self) -> Lsn {
        self.available
    }

    /// An append of `data`, which begins at `wal_needed(i)`, for acceptor `i`.
    pub fn append(&mut self, i: usize, data: Bytes) -> ProposerMessage {
        let begin = self.slots[i]
            .next_send
            .expect("append before ProposerElected");
        let end = begin + data.len() as u64;
        assert!(end <= self.available, "append beyond the available WAL");
        self.slots[i].next_send = Some(end);
        ProposerMessage::Append(self.append_request(begin, end, data))
    }

    /// An empty append carrying the commit LSN (a heartbeat), for an
    /// acceptor that accepted our term.
    pub fn heartbeat(&self, i: usize) -> Option<ProposerMessage> {
        let next = self.slots[i]
            .next_send
            .filter(|_| self.slots[i].connected)?;
        Some(ProposerMessage::Append(self.append_request(
            next,
            next,
            Bytes::new(),
        )))
    }

    fn append_request(&self, begin: Lsn, end: Lsn, data: Bytes) -> AppendRequest {
        let horizon = self
            .slots
            .iter()
            .map(|s| s.flush_lsn)
            .min()
            .unwrap_or(Lsn::INVALID)
            .min(self.commit_lsn);
        AppendRequest {
            term: self.term,
            begin_lsn: begin,
            end_lsn: end,
            commit_lsn: self.commit_lsn,
            truncate_lsn: horizon,
            wal_data: data,
        }
    }
}
