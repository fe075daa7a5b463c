//! The safekeeper's acceptor (`safekeeper/src/acceptor.rs`) driven by an
//! arbitrary sequence of proposer messages (greetings, votes, elections,
//! appends with arbitrary terms, LSNs and WAL), flushes, progress persists
//! and crashes, over in-memory storage that loses what was not made durable
//! when it crashes. Every message goes through the wire encoding, and the
//! persisted state through the safekeeper's control file format
//! (`safekeeper/src/state_file.rs`).
//!
//! Checked after every step:
//! - the term never goes back, in memory or persisted, and a vote is given
//!   at most once per term (votes are persisted before they are answered);
//! - the commit LSN never exceeds the flush LSN, and an append response
//!   reports the storage's flush LSN and the acceptor's term;
//! - WAL up to the commit LSN never changes while the acceptor knows that
//!   commit LSN: a restart may fall back only to the persisted commit LSN,
//!   and WAL up to the persisted commit LSN never changes at all;
//! - an elected proposer's history is what the acceptor keeps: valid, and
//!   ending in the acceptor's term;
//! - every answer encodes and decodes to itself.

#![no_main]

use std::cell::RefCell;
use std::rc::Rc;

use arbitrary::Arbitrary;
use bytes::Bytes;
use fuzz::acceptor::{Acceptor, ControlStore, PersistentState, ServerInfo, WalStore};
use fuzz::state_file;
use libfuzzer_sys::fuzz_target;
use safekeeper_api::messages::{
    AcceptorMessage, AppendRequest, ProposerElected, ProposerGreeting, ProposerMessage,
    PROTOCOL_VERSION,
};
use safekeeper_api::{TermHistory, TermLsn};
use utils::{Lsn, NodeId, TenantId, TimelineId};

const BASE: u64 = 0x0100_0000;
const TENANT: [u8; 16] = [1; 16];
const TIMELINE: [u8; 16] = [2; 16];

/// An LSN near the others, so that they meet.
fn lsn(offset: u16) -> Lsn {
    Lsn(BASE + u64::from(offset))
}

#[derive(Arbitrary, Debug)]
enum Op {
    Greeting {
        pg_version: u8,
        system_id: u8,
        wal_seg_size: u8,
        proposer_id: u8,
        other_timeline: bool,
        old_protocol: bool,
    },
    Vote {
        term: u8,
    },
    Elected {
        term: u8,
        start: u16,
        /// The history before the proposer's own term.
        history: Vec<(u8, u16)>,
        /// Where the proposer's own term starts, if not at `start`.
        own_start: Option<u16>,
        timeline_start: u16,
    },
    Append {
        term: u8,
        /// Where the WAL goes, if not where the acceptor's WAL ends.
        begin: Option<u16>,
        len: u8,
        fill: u8,
        /// The proposer's commit LSN, as an offset back from the end.
        commit_back: u16,
        truncate: u16,
    },
    Flush,
    PersistProgress,
    PersistHorizons {
        backup: u16,
        remote: u16,
    },
    Crash,
}

/// What survives a crash.
#[derive(Default)]
struct Disk {
    /// The control file's state, as decoded from the file written.
    state: Option<PersistentState>,
    wal_start: Lsn,
    wal: Vec<u8>,
}

struct Control(Rc<RefCell<Disk>>);

impl ControlStore for Control {
    fn persist(&mut self, state: &PersistentState) -> anyhow::Result<()> {
        let file = state_file::encode(state)?;
        let decoded = state_file::decode(&file)?;
        assert_eq!(&decoded, state, "the control file does not keep the state");
        self.0.borrow_mut().state = Some(decoded);
        Ok(())
    }
}

/// WAL written in memory and made durable on `flush` and `truncate`.
struct MemWal {
    disk: Rc<RefCell<Disk>>,
    start: Lsn,
    data: Vec<u8>,
    durable: usize,
}

impl MemWal {
    fn sync(&mut self) {
        self.durable = self.data.len();
        let mut disk = self.disk.borrow_mut();
        disk.wal_start = self.start;
        disk.wal = self.data.clone();
    }
}

impl WalStore for MemWal {
    fn write_lsn(&self) -> Lsn {
        if self.start.is_valid() {
            self.start + self.data.len() as u64
        } else {
            Lsn::INVALID
        }
    }
    fn flush_lsn(&self) -> Lsn {
        if self.start.is_valid() {
            self.start + self.durable as u64
        } else {
            Lsn::INVALID
        }
    }
    fn write(&mut self, at: Lsn, data: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(at == self.write_lsn(), "write at {at} off the end of WAL");
        anyhow::ensure!(self.start.is_valid(), "write before the log has a start");
        self.data.extend_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.sync();
        Ok(())
    }
    fn truncate(&mut self, at: Lsn) -> anyhow::Result<()> {
        if !self.start.is_valid() || at < self.start {
            self.start = at;
            self.data.clear();
        } else {
            let keep = usize::try_from(at - self.start).unwrap_or(usize::MAX);
            anyhow::ensure!(keep <= self.data.len(), "truncate at {at} past the end");
            self.data.truncate(keep);
        }
        self.sync();
        Ok(())
    }
}

type Node = Acceptor<Control, MemWal>;

fn boot(disk: &Rc<RefCell<Disk>>) -> Node {
    let (state, wal_start, wal) = {
        let d = disk.borrow();
        let state = d.state.clone().unwrap_or_else(|| {
            PersistentState::new(
                TenantId::from_bytes(TENANT),
                TimelineId::from_bytes(TIMELINE),
                ServerInfo::default(),
            )
        });
        (state, d.wal_start, d.wal.clone())
    };
    let wal = MemWal {
        disk: disk.clone(),
        start: wal_start,
        durable: wal.len(),
        data: wal,
    };
    Acceptor::new(state, NodeId(1), Control(disk.clone()), wal)
}

/// The persisted state.
fn persisted(disk: &Disk) -> Option<&PersistentState> {
    disk.state.as_ref()
}

/// Durable WAL in `[from, to)`, if the disk holds all of it.
fn durable(disk: &Disk, from: Lsn, to: Lsn) -> Option<Vec<u8>> {
    if !disk.wal_start.is_valid() || from < disk.wal_start || to < from {
        return None;
    }
    let a = usize::try_from(from - disk.wal_start).ok()?;
    let b = usize::try_from(to - disk.wal_start).ok()?;
    disk.wal.get(a..b).map(<[u8]>::to_vec)
}

fn message(op: &Op, node: &Node) -> Option<ProposerMessage> {
    Some(match *op {
        Op::Greeting {
            pg_version,
            system_id,
            wal_seg_size,
            proposer_id,
            other_timeline,
            old_protocol,
        } => ProposerMessage::Greeting(ProposerGreeting {
            protocol_version: PROTOCOL_VERSION - u32::from(old_protocol),
            pg_version: u32::from(pg_version % 3) * 150_000,
            proposer_id: [proposer_id; 16],
            system_id: u64::from(system_id % 3),
            tenant_id: TenantId::from_bytes(TENANT),
            timeline_id: TimelineId::from_bytes(if other_timeline { [3; 16] } else { TIMELINE }),
            wal_seg_size: u32::from(wal_seg_size % 3) << 24,
        }),
        Op::Vote { term } => ProposerMessage::VoteRequest { term: term.into() },
        Op::Elected {
            term,
            start,
            ref history,
            own_start,
            timeline_start,
        } => {
            let mut entries: Vec<TermLsn> = history
                .iter()
                .take(8)
                .map(|&(t, l)| TermLsn {
                    term: t.into(),
                    lsn: lsn(l),
                })
                .collect();
            entries.push(TermLsn {
                term: term.into(),
                lsn: lsn(own_start.unwrap_or(start)),
            });
            ProposerMessage::Elected(ProposerElected {
                term: term.into(),
                start_streaming_at: lsn(start),
                term_history: TermHistory(entries),
                timeline_start_lsn: lsn(timeline_start),
            })
        }
        Op::Append {
            term,
            begin,
            len,
            fill,
            commit_back,
            truncate,
        } => {
            let begin_lsn = begin.map_or(node.wal().write_lsn(), lsn);
            let end_lsn = begin_lsn.checked_add(u64::from(len))?;
            let wal: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i)).collect();
            ProposerMessage::Append(AppendRequest {
                term: term.into(),
                begin_lsn,
                end_lsn,
                commit_lsn: Lsn(end_lsn.0.saturating_sub(commit_back.into())),
                truncate_lsn: lsn(truncate),
                wal_data: Bytes::from(wal),
            })
        }
        _ => return None,
    })
}

fn check_answer(answer: &AcceptorMessage) {
    assert_eq!(
        AcceptorMessage::decode(&answer.encode()).as_ref(),
        Ok(answer),
        "answer does not survive the wire"
    );
}

/// What the checks remember between steps.
struct Model {
    term: u64,
    persisted_term: u64,
    voted: Vec<u64>,
    /// WAL up to the commit LSN as the acceptor knows it.
    committed: Option<(Lsn, Vec<u8>)>,
}

fuzz_target!(|ops: Vec<Op>| {
    let disk = Rc::new(RefCell::new(Disk::default()));
    let mut node = boot(&disk);
    let mut model = Model {
        term: 0,
        persisted_term: 0,
        voted: Vec::new(),
        committed: None,
    };
    for op in ops.iter().take(64) {
        match op {
            Op::Flush => {
                let answer = node.flush().expect("in-memory flush");
                check_answer(&answer);
                let AcceptorMessage::Append(a) = answer else {
                    panic!("flush answered {answer:?}");
                };
                assert_eq!(a.flush_lsn, node.wal().flush_lsn());
                assert_eq!(a.term, node.state.term);
                assert!(a.commit_lsn <= a.flush_lsn, "{a:?}");
            }
            Op::PersistProgress => node.persist_progress().expect("in-memory persist"),
            Op::PersistHorizons { backup, remote } => node
                .persist_horizons(lsn(*backup), lsn(*remote))
                .expect("in-memory persist"),
            Op::Crash => {
                drop(node);
                node = boot(&disk);
                let persisted = persisted(&disk.borrow()).map_or(Lsn(0), |s| s.commit_lsn);
                assert!(
                    node.commit_lsn() >= persisted,
                    "the persisted commit LSN was lost"
                );
                // The in-memory commit LSN is gone: keep what is persisted.
                if let Some((start, bytes)) = &mut model.committed {
                    let keep = usize::try_from(node.commit_lsn().0.saturating_sub(start.0))
                        .unwrap_or(usize::MAX);
                    bytes.truncate(keep);
                }
                if model.committed.as_ref().is_some_and(|(_, b)| b.is_empty()) {
                    model.committed = None;
                }
            }
            _ => {
                let Some(m) = message(op, &node) else {
                    continue;
                };
                let wire = m.encode();
                let m = ProposerMessage::decode(&wire).expect("an encoded message decodes");
                let vote_term = match &m {
                    ProposerMessage::VoteRequest { term } => Some(*term),
                    _ => None,
                };
                let elected = matches!(m, ProposerMessage::Elected(_));
                match node.process(m) {
                    Ok(Some(answer)) => {
                        check_answer(&answer);
                        if let (AcceptorMessage::Vote(v), Some(term)) = (&answer, vote_term) {
                            assert_eq!(v.term, node.state.term);
                            if v.vote_given {
                                assert_eq!(v.term, term);
                                assert!(!model.voted.contains(&term), "two votes in term {term}");
                                model.voted.push(term);
                            }
                            assert!(v.flush_lsn == node.wal().flush_lsn());
                        }
                    }
                    Ok(None) => {
                        if elected {
                            let history = &node.state.term_history;
                            assert!(history.validate().is_ok(), "{history:?}");
                            assert_eq!(history.last_term(), node.state.term);
                        }
                    }
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }

        // The term never goes back.
        assert!(node.state.term >= model.term, "term went back");
        model.term = node.state.term;
        let persisted_term = persisted(&disk.borrow()).map_or(0, |s| s.term);
        assert!(
            persisted_term >= model.persisted_term,
            "persisted term went back"
        );
        model.persisted_term = persisted_term;

        // Commit LSN within flushed WAL; committed WAL unchanged.
        let commit = node.commit_lsn();
        let flush = node.wal().flush_lsn();
        assert!(commit <= flush, "commit {commit} > flush {flush}");
        let d = disk.borrow();
        if let Some((start, bytes)) = &model.committed {
            let end = *start + bytes.len() as u64;
            assert_eq!(
                durable(&d, *start, end).as_ref(),
                Some(bytes),
                "committed WAL {start}..{end} changed"
            );
        }
        if commit.is_valid() && d.wal_start.is_valid() && commit > d.wal_start {
            let start = model.committed.as_ref().map_or(d.wal_start, |(s, _)| *s);
            // An empty range protects nothing (the log may still move).
            if let Some(bytes) = durable(&d, start, commit).filter(|b| !b.is_empty()) {
                if model
                    .committed
                    .as_ref()
                    .is_none_or(|(_, old)| bytes.len() >= old.len())
                {
                    model.committed = Some((start, bytes));
                }
            }
        }
    }
});
