//! Deterministic simulation of the consensus: real `Proposer` and real
//! `Acceptor` state machines, in-memory disks that lose what was not made
//! durable when they crash, and connections that deliver in order but
//! break at random (losing what was in flight), all driven by a seeded
//! schedule. Several computes come and go; each syncs, then streams
//! records, and older ones are fenced by newer terms.
//!
//! Checked after every step:
//! - at most one proposer is elected per term;
//! - committed WAL never changes and stays on a quorum of acceptors'
//!   durable logs (so it is never truncated);
//! - every acceptor's log agrees with the committed WAL up to its commit LSN;
//! - a sync result covers all WAL committed before it.
//!
//! A failure prints its seed; `SIM_SEEDS=<n>` runs more seeds.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safekeeper::acceptor::{Acceptor, ControlStore, PersistentState, ServerInfo, WalStore};
use safekeeper_api::messages::{AcceptorMessage, ProposerMessage};
use utils::{Lsn, NodeId, TenantId, TimelineId};
use walproposer::proposer::{Action, Mode, Proposer, ProposerConfig, ProposerError};
use walproposer::pump::{PumpAction, PumpLimits, Recovery, WalPump};

const ACCEPTORS: usize = 3;
const TIMELINE_START: Lsn = Lsn(0x1000);
/// The walproposer's memory, scaled down to the simulation's records.
const LIMITS: PumpLimits = PumpLimits {
    max_buffered: 1200,
    max_queued: 600,
    append_chunk: 200,
    recovery_chunk: 400,
};
/// WAL taken from the source in one read (PostgreSQL's message).
const SOURCE_READ: usize = 150;

/// What survives a crash.
#[derive(Clone, Default)]
struct Disk {
    state: Option<PersistentState>,
    wal_start: Lsn,
    wal: Vec<u8>,
}

#[derive(Clone)]
struct MemWal {
    start: Lsn,
    data: Vec<u8>,
    durable: usize,
}

/// The sim's acceptor persists through this store into its node's disk.
struct SharedControl(std::rc::Rc<std::cell::RefCell<Disk>>);

impl ControlStore for SharedControl {
    fn persist(&mut self, state: &PersistentState) -> anyhow::Result<()> {
        self.0.borrow_mut().state = Some(state.clone());
        Ok(())
    }
}

struct SharedWal {
    disk: std::rc::Rc<std::cell::RefCell<Disk>>,
    mem: MemWal,
}

impl WalStore for SharedWal {
    fn write_lsn(&self) -> Lsn {
        if self.mem.start.is_valid() {
            self.mem.start + self.mem.data.len() as u64
        } else {
            Lsn::INVALID
        }
    }
    fn flush_lsn(&self) -> Lsn {
        if self.mem.start.is_valid() {
            self.mem.start + self.mem.durable as u64
        } else {
            Lsn::INVALID
        }
    }
    fn write(&mut self, at: Lsn, data: &[u8]) -> anyhow::Result<()> {
        assert_eq!(at, self.write_lsn());
        self.mem.data.extend_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.mem.durable = self.mem.data.len();
        let mut disk = self.disk.borrow_mut();
        disk.wal_start = self.mem.start;
        disk.wal = self.mem.data.clone();
        Ok(())
    }
    fn truncate(&mut self, at: Lsn) -> anyhow::Result<()> {
        if !self.mem.start.is_valid() || at < self.mem.start {
            self.mem.start = at;
            self.mem.data.clear();
        } else {
            self.mem.data.truncate((at - self.mem.start) as usize);
        }
        self.mem.durable = self.mem.data.len();
        let mut disk = self.disk.borrow_mut();
        disk.wal_start = self.mem.start;
        disk.wal = self.mem.data.clone();
        Ok(())
    }
}

type SimAcceptor = Acceptor<SharedControl, SharedWal>;

struct Node {
    disk: std::rc::Rc<std::cell::RefCell<Disk>>,
    acceptor: Option<SimAcceptor>,
}

impl Node {
    fn boot(&mut self, tenant: TenantId, timeline: TimelineId, id: u64) {
        let disk = self.disk.borrow().clone();
        let state = disk.state.unwrap_or_else(|| {
            PersistentState::new(
                tenant,
                timeline,
                ServerInfo {
                    pg_version: 150000,
                    system_id: 1,
                    wal_seg_size: 1 << 24,
                },
            )
        });
        let mem = MemWal {
            start: disk.wal_start,
            durable: disk.wal.len(),
            data: disk.wal,
        };
        self.acceptor = Some(Acceptor::new(
            state,
            NodeId(id),
            SharedControl(self.disk.clone()),
            SharedWal {
                disk: self.disk.clone(),
                mem,
            },
        ));
    }

    /// Bytes of the durable log in `[from, to)`, if it holds them.
    fn durable(&self, from: Lsn, to: Lsn) -> Option<Vec<u8>> {
        let disk = self.disk.borrow();
        if !disk.wal_start.is_valid()
            || from < disk.wal_start
            || to > disk.wal_start + disk.wal.len() as u64
        {
            return None;
        }
        let a = (from - disk.wal_start) as usize;
        let b = (to - disk.wal_start) as usize;
        Some(disk.wal[a..b].to_vec())
    }
}

/// One message in flight on connection `(compute, acceptor)`.
enum Wire {
    ToAcceptor(ProposerMessage),
    ToProposer(AcceptorMessage),
}

struct Compute {
    id: usize,
    proposer: Proposer,
    /// The compute's WAL from the timeline start: PostgreSQL's pg_wal,
    /// which its replication slot keeps.
    source: Vec<u8>,
    /// The walproposer's memory and flow control, as in the driver.
    pump: WalPump,
    /// How far the pump has read `source`.
    read: Lsn,
    donor: Option<usize>,
    stopped: bool,
    records: u64,
}

impl Compute {
    fn new(id: usize, proposer: Proposer, source: Vec<u8>, start: Lsn) -> Self {
        Compute {
            id,
            proposer,
            source,
            pump: WalPump::new(start, LIMITS),
            read: start,
            donor: None,
            stopped: false,
            records: 0,
        }
    }
}

/// How a schedule runs.
#[derive(Clone, Copy)]
struct Options {
    /// Acceptors whose writes are much slower than the source.
    slow: [bool; ACCEPTORS],
}

struct Sim {
    rng: StdRng,
    seed: u64,
    tenant: TenantId,
    timeline: TimelineId,
    nodes: Vec<Node>,
    computes: Vec<Compute>,
    /// Connections: (compute, acceptor) → FIFO of messages, both directions.
    links: BTreeMap<(usize, usize), VecDeque<Wire>>,
    committed: Vec<u8>,
    leaders: BTreeMap<u64, usize>,
    /// The highest LSN committed by the proposer of each term.
    committed_by_term: BTreeMap<u64, Lsn>,
    /// Recoveries asked for by a compute's pump and not answered yet.
    recoveries: Vec<(usize, Recovery)>,
    options: Options,
    /// Set for the calm end of a liveness run: no faults, no new computes.
    calm: bool,
    /// Recoveries completed, and pumps that found the buffer full.
    recovered: u64,
    paused: u64,
    events: u64,
}

impl Sim {
    fn fail(&self, what: String) -> ! {
        panic!("seed {}: after {} events: {what}", self.seed, self.events);
    }

    fn trace(&self, what: String) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("[{:5}] {what}", self.events);
        }
    }

    fn committed_end(&self) -> Lsn {
        TIMELINE_START + self.committed.len() as u64
    }

    fn new_proposer(&self, id: usize, mode: Mode) -> Proposer {
        let mut proposer_id = [0u8; 16];
        proposer_id[0] = id as u8;
        let config = ProposerConfig {
            tenant_id: self.tenant,
            timeline_id: self.timeline,
            system_id: 1,
            pg_version: 150000,
            wal_seg_size: 1 << 24,
            proposer_id,
            acceptors: ACCEPTORS,
        };
        Proposer::new(config, mode)
    }

    /// A compute comes up: it syncs first (then streams, see `SyncDone`).
    fn start_compute(&mut self) {
        let id = self.computes.len();
        let proposer = self.new_proposer(id, Mode::Sync);
        self.computes
            .push(Compute::new(id, proposer, Vec::new(), Lsn::INVALID));
        for a in 0..ACCEPTORS {
            self.connect(id, a);
        }
    }

    fn connect(&mut self, c: usize, a: usize) {
        if self.computes[c].stopped
            || self.nodes[a].acceptor.is_none()
            || self.links.contains_key(&(c, a))
        {
            return;
        }
        self.links.insert((c, a), VecDeque::new());
        let actions = self.computes[c].proposer.on_connect(a);
        self.apply(c, actions);
    }

    fn disconnect(&mut self, c: usize, a: usize) {
        if self.links.remove(&(c, a)).is_some() && !self.computes[c].stopped {
            self.computes[c].proposer.on_disconnect(a);
        }
    }

    fn stop_compute(&mut self, c: usize) {
        self.computes[c].stopped = true;
        for a in 0..ACCEPTORS {
            self.links.remove(&(c, a));
        }
    }

    fn apply(&mut self, c: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    if let Some(link) = self.links.get_mut(&(c, to)) {
                        link.push_back(Wire::ToAcceptor(message));
                    }
                }
                Action::Elected {
                    term,
                    donor,
                    epoch_start,
                } => {
                    self.trace(format!("compute {c} elected in term {term}, donor {donor}, epoch start {epoch_start}, history {:?}", self.computes[c].proposer.history()));
                    if let Some(other) = self.leaders.insert(term, c) {
                        self.fail(format!(
                            "computes {other} and {c} both elected in term {term}"
                        ));
                    }
                    // Read the donor's WAL up to where our term starts (a
                    // replication connection to it, in the real walproposer).
                    let source = if epoch_start > TIMELINE_START {
                        match self.nodes[donor].durable(TIMELINE_START, epoch_start) {
                            Some(bytes) => bytes,
                            None => {
                                // Only a newer term truncates a log: this
                                // proposer is stale and its recovery read
                                // fails, as it would for real.
                                let donor_term = self.nodes[donor]
                                    .disk
                                    .borrow()
                                    .state
                                    .as_ref()
                                    .map_or(0, |s| s.term);
                                if donor_term <= term {
                                    self.fail(format!("donor {donor} lost WAL up to {epoch_start} without a newer term"));
                                }
                                self.trace(format!("compute {c}: donor {donor} moved to term {donor_term}, stopping"));
                                self.stop_compute(c);
                                return;
                            }
                        }
                    } else {
                        Vec::new()
                    };
                    // Leader completeness: the elected log holds all WAL
                    // committed by lower terms.
                    let bound = self
                        .committed_by_term
                        .range(..term)
                        .map(|(_, &lsn)| lsn)
                        .max();
                    if let Some(bound) = bound {
                        if epoch_start < bound {
                            self.fail(format!("compute {c} elected in term {term} at {epoch_start}, below {bound} committed by a lower term"));
                        }
                        let n = (bound - TIMELINE_START) as usize;
                        if source.len() < n || source[..n] != self.committed[..n] {
                            self.fail(format!("compute {c}'s elected log differs from WAL committed by lower terms"));
                        }
                    }
                    let compute = &mut self.computes[c];
                    compute.source = source;
                    compute.donor = Some(donor);
                    if compute.proposer.mode() == Mode::Sync {
                        // Everything below the epoch start comes from the donor.
                        compute.pump.reset(epoch_start);
                        compute.read = epoch_start;
                    }
                }
                Action::Committed(lsn) => {
                    self.trace(format!("compute {c} committed {lsn}"));
                    self.record_commit(c, lsn)
                }
                Action::SyncDone(lsn) => {
                    // A stale sync (a newer term committed more meanwhile) is
                    // still a committed prefix; its stream proposer will be
                    // refused (StartMismatch), as the real compute would be.
                    self.record_commit(c, lsn.max(TIMELINE_START));
                    // The compute now starts PostgreSQL from this LSN and streams.
                    let start = if lsn.is_valid() { lsn } else { TIMELINE_START };
                    let source = std::mem::take(&mut self.computes[c].source);
                    self.stop_compute(c);
                    let id = self.computes.len();
                    let mut proposer = self.new_proposer(id, Mode::Stream { start_lsn: start });
                    proposer.set_available(start);
                    self.computes
                        .push(Compute::new(id, proposer, source, start));
                    for a in 0..ACCEPTORS {
                        self.connect(id, a);
                    }
                }
            }
        }
    }

    fn record_commit(&mut self, c: usize, lsn: Lsn) {
        let term = self.computes[c].proposer.term();
        let entry = self.committed_by_term.entry(term).or_insert(lsn);
        *entry = (*entry).max(lsn);
        let source = &self.computes[c].source;
        let len = (lsn - TIMELINE_START) as usize;
        if len > source.len() {
            self.fail(format!("compute {c} committed {lsn} beyond its WAL"));
        }
        let common = len.min(self.committed.len());
        if source[..common] != self.committed[..common] {
            self.fail(format!(
                "compute {c} committed WAL that differs from earlier committed WAL"
            ));
        }
        if len > self.committed.len() {
            self.committed = source[..len].to_vec();
        }
    }

    fn deliver(&mut self, c: usize, a: usize) {
        let Some(wire) = self.links.get_mut(&(c, a)).and_then(|l| l.pop_front()) else {
            return;
        };
        match wire {
            Wire::ToAcceptor(message) => {
                if let ProposerMessage::Elected(e) = &message {
                    self.trace(format!(
                        "acceptor {a} gets elected from compute {c}: term {} start {}",
                        e.term, e.start_streaming_at
                    ));
                }
                if let ProposerMessage::VoteRequest { term } = &message {
                    let flush = self.nodes[a]
                        .acceptor
                        .as_ref()
                        .map(|x| (x.state.term, x.flush_lsn()));
                    self.trace(format!("acceptor {a} vote request term {term} from compute {c}; (term, flush) {flush:?}"));
                }
                let Some(acceptor) = &mut self.nodes[a].acceptor else {
                    return;
                };
                let is_append = matches!(message, ProposerMessage::Append(_));
                let result = acceptor.process(message).and_then(|reply| {
                    if is_append {
                        acceptor.flush().map(Some)
                    } else {
                        Ok(reply)
                    }
                });
                match result {
                    Ok(Some(reply)) => {
                        if let Some(link) = self.links.get_mut(&(c, a)) {
                            link.push_back(Wire::ToProposer(reply));
                        }
                    }
                    Ok(None) => {}
                    // A refusal closes the connection, as the server does.
                    Err(_) => self.disconnect(c, a),
                }
            }
            Wire::ToProposer(message) => {
                if self.computes[c].stopped {
                    return;
                }
                if let AcceptorMessage::Append(r) = &message {
                    self.trace(format!(
                        "compute {c} gets append response from acceptor {a}: {r:?}"
                    ));
                }
                match self.computes[c].proposer.on_message(a, message) {
                    Ok(actions) => self.apply(c, actions),
                    Err(ProposerError::Fenced { .. } | ProposerError::StartMismatch { .. }) => {
                        self.stop_compute(c)
                    }
                    Err(e) => self.fail(format!("compute {c}: {e}")),
                }
            }
        }
    }

    /// Bytes of WAL queued on the link to acceptor `a`.
    fn queued(&self, c: usize, a: usize) -> usize {
        self.links.get(&(c, a)).map_or(0, |q| {
            q.iter()
                .map(|w| match w {
                    Wire::ToAcceptor(ProposerMessage::Append(r)) => r.wal_data.len(),
                    _ => 0,
                })
                .sum()
        })
    }

    /// The walproposer's loop: read the source while the buffer has room,
    /// then let the pump send WAL and ask for recoveries.
    fn pump_wal(&mut self, c: usize) {
        let queued: Vec<usize> = (0..ACCEPTORS).map(|a| self.queued(c, a)).collect();
        let compute = &mut self.computes[c];
        if compute.stopped || !compute.proposer.is_elected() {
            return;
        }
        if matches!(compute.proposer.mode(), Mode::Stream { .. }) {
            let end = TIMELINE_START + compute.source.len() as u64;
            while !compute.pump.source_paused() && compute.read < end {
                let from = (compute.read - TIMELINE_START) as usize;
                let to = compute.source.len().min(from + SOURCE_READ);
                let at = compute.read;
                compute
                    .pump
                    .source_wal(
                        &mut compute.proposer,
                        at,
                        Bytes::copy_from_slice(&compute.source[from..to]),
                    )
                    .expect("source WAL is contiguous");
                compute.read = TIMELINE_START + to as u64;
            }
            if compute.pump.source_paused() {
                self.paused += 1;
            }
        }
        let donor = compute.donor;
        let actions = compute.pump.pump(&mut compute.proposer, &queued, donor);
        for action in actions {
            match action {
                PumpAction::Send { to, message } => {
                    if let Some(link) = self.links.get_mut(&(c, to)) {
                        link.push_back(Wire::ToAcceptor(message));
                    }
                }
                PumpAction::Recover(r) => self.recoveries.push((c, r)),
            }
        }
    }

    /// A recovery read from the donor's durable log completes (or fails,
    /// if the donor is down or no longer holds that WAL).
    fn finish_recovery(&mut self) {
        if self.recoveries.is_empty() {
            return;
        }
        let (c, r) = self
            .recoveries
            .swap_remove(self.rng.random_range(0..self.recoveries.len()));
        if self.computes[c].stopped {
            return;
        }
        let read = self.nodes[r.donor]
            .acceptor
            .as_ref()
            .and_then(|_| self.nodes[r.donor].durable(r.from, r.to));
        let pump = &mut self.computes[c].pump;
        match read {
            Some(bytes) => {
                self.recovered += 1;
                pump.recovered(r.from, Bytes::from(bytes))
            }
            None => pump.recovery_failed(),
        }
    }

    fn write_record(&mut self, c: usize) {
        let compute = &mut self.computes[c];
        let streaming = matches!(compute.proposer.mode(), Mode::Stream { .. });
        if compute.stopped || !compute.proposer.is_elected() || !streaming {
            return;
        }
        compute.records += 1;
        let len = self.rng.random_range(1..200);
        let marker = (compute.id as u8)
            .wrapping_mul(31)
            .wrapping_add(compute.records as u8);
        compute.source.extend(std::iter::repeat_n(marker, len));
    }

    fn check(&self) {
        for compute in self.computes.iter().filter(|c| !c.stopped) {
            let held = compute.pump.buffered_bytes();
            if held > LIMITS.max_buffered + SOURCE_READ {
                self.fail(format!(
                    "compute {} holds {held} bytes of WAL, more than the limit",
                    compute.id
                ));
            }
        }
        let end = self.committed_end();
        let holders = self
            .nodes
            .iter()
            .filter(|n| n.durable(TIMELINE_START, end).as_deref() == Some(&self.committed[..]))
            .count();
        if !self.committed.is_empty() && holders < ACCEPTORS / 2 + 1 {
            self.fail(format!(
                "committed WAL up to {end} is on only {holders} acceptors"
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(acceptor) = &node.acceptor else {
                continue;
            };
            let commit = acceptor.commit_lsn().min(end);
            if commit > TIMELINE_START {
                let local_start = node.disk.borrow().wal_start.max(TIMELINE_START);
                let ok = node.durable(local_start, commit).is_some_and(|bytes| {
                    bytes[..]
                        == self.committed[(local_start - TIMELINE_START) as usize
                            ..(commit - TIMELINE_START) as usize]
                });
                if !ok {
                    self.fail(format!(
                        "acceptor {i} disagrees with committed WAL below its commit LSN {commit}"
                    ));
                }
            }
            if acceptor.commit_lsn() > end {
                self.fail(format!(
                    "acceptor {i} has commit LSN {} beyond the committed {end}",
                    acceptor.commit_lsn()
                ));
            }
        }
    }

    fn deliver_any(&mut self) {
        let busy: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if !busy.is_empty() {
            let (c, a) = busy[self.rng.random_range(0..busy.len())];
            // A slow acceptor takes an append only now and then.
            let append_to_slow = self.options.slow[a]
                && matches!(
                    self.links[&(c, a)].front(),
                    Some(Wire::ToAcceptor(ProposerMessage::Append(r))) if !r.wal_data.is_empty()
                );
            if append_to_slow && self.rng.random_range(0..10) != 0 {
                return;
            }
            self.deliver(c, a);
        }
    }

    fn step(&mut self) {
        self.events += 1;
        let roll = self.rng.random_range(0..100);
        let live: Vec<usize> = (0..self.computes.len())
            .filter(|&c| !self.computes[c].stopped)
            .collect();
        if self.calm && (80..=89).contains(&roll) {
            // No faults now; connections come back.
            self.reconnect_all();
            self.check();
            return;
        }
        match roll {
            0..=49 => self.deliver_any(),
            50..=54 => self.finish_recovery(),
            55..=69 => {
                if let Some(&c) = live.get(self.rng.random_range(0..live.len().max(1))) {
                    if !self.calm {
                        self.write_record(c);
                    }
                    self.pump_wal(c);
                }
            }
            70..=79 => {
                for c in live {
                    self.pump_wal(c);
                    for a in 0..ACCEPTORS {
                        if let Some(hb) = self.computes[c].proposer.heartbeat(a) {
                            if let Some(link) = self.links.get_mut(&(c, a)) {
                                if link.is_empty() {
                                    link.push_back(Wire::ToAcceptor(hb));
                                }
                            }
                        }
                    }
                }
            }
            80..=84 => {
                // A connection breaks, losing what is in flight; or one comes back.
                let c = self.rng.random_range(0..self.computes.len());
                let a = self.rng.random_range(0..ACCEPTORS);
                if self.links.contains_key(&(c, a)) {
                    self.disconnect(c, a);
                } else {
                    self.connect(c, a);
                }
            }
            85..=87 => {
                // An acceptor crashes (losing unflushed WAL) or restarts.
                let a = self.rng.random_range(0..ACCEPTORS);
                if self.nodes[a].acceptor.is_some() {
                    self.nodes[a].acceptor = None;
                    for c in 0..self.computes.len() {
                        self.disconnect(c, a);
                    }
                } else {
                    let (tenant, timeline) = (self.tenant, self.timeline);
                    self.nodes[a].boot(tenant, timeline, a as u64);
                    for c in 0..self.computes.len() {
                        self.connect(c, a);
                    }
                }
            }
            88 => {
                if let Some(&c) = live.first() {
                    self.stop_compute(c);
                }
            }
            89 => {
                // A second compute competes with a running one.
                if live.len() < 2 {
                    self.start_compute();
                }
            }
            _ => {
                if live.is_empty() {
                    self.start_compute();
                }
                self.deliver_any();
            }
        }
        self.check();
    }
}

impl Sim {
    fn new(seed: u64, options: Options) -> Sim {
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            seed,
            tenant: TenantId::from_bytes([1; 16]),
            timeline: TimelineId::from_bytes([2; 16]),
            nodes: (0..ACCEPTORS)
                .map(|_| Node {
                    disk: Default::default(),
                    acceptor: None,
                })
                .collect(),
            computes: Vec::new(),
            links: BTreeMap::new(),
            committed: Vec::new(),
            leaders: BTreeMap::new(),
            committed_by_term: BTreeMap::new(),
            recoveries: Vec::new(),
            options,
            calm: false,
            recovered: 0,
            paused: 0,
            events: 0,
        };
        for a in 0..ACCEPTORS {
            let (tenant, timeline) = (sim.tenant, sim.timeline);
            sim.nodes[a].boot(tenant, timeline, a as u64);
        }
        sim.start_compute();
        sim
    }

    /// Every live compute connected to every running acceptor.
    fn reconnect_all(&mut self) {
        for c in 0..self.computes.len() {
            for a in 0..ACCEPTORS {
                self.connect(c, a);
            }
        }
    }

    /// The calm end of a liveness run: acceptor `down` (if any) stays
    /// down, the others run, no more faults and no new WAL. Runs until
    /// a streaming compute has committed all its source's WAL; fails if
    /// that does not happen within `max_steps`.
    fn settle(&mut self, down: Option<usize>, max_steps: u64) -> Lsn {
        self.calm = true;
        for a in 0..ACCEPTORS {
            let running = self.nodes[a].acceptor.is_some();
            if Some(a) == down && running {
                self.nodes[a].acceptor = None;
                for c in 0..self.computes.len() {
                    self.disconnect(c, a);
                }
            } else if Some(a) != down && !running {
                let (tenant, timeline) = (self.tenant, self.timeline);
                self.nodes[a].boot(tenant, timeline, a as u64);
            }
        }
        self.reconnect_all();
        for _ in 0..max_steps {
            self.step();
            // A sync whose donor is gone starts over (the driver gives up
            // on a donor it cannot reach).
            for c in 0..self.computes.len() {
                let compute = &self.computes[c];
                if !compute.stopped
                    && compute.proposer.mode() == Mode::Sync
                    && compute
                        .donor
                        .is_some_and(|d| self.nodes[d].acceptor.is_none())
                {
                    self.trace(format!("compute {c}: donor is down, sync starts over"));
                    self.stop_compute(c);
                }
            }
            let done = self.computes.iter().find(|c| {
                !c.stopped
                    && matches!(c.proposer.mode(), Mode::Stream { .. })
                    && c.proposer.is_elected()
                    && c.proposer.commit_lsn() == TIMELINE_START + c.source.len() as u64
            });
            if let Some(c) = done {
                return c.proposer.commit_lsn();
            }
        }
        let state: Vec<String> = self
            .computes
            .iter()
            .filter(|c| !c.stopped)
            .map(|c| {
                let (start, end) = c.pump.buffered();
                format!(
                    "compute {} ({:?}): committed {} of {}, buffer {start}..{end}, recovery {:?}, acknowledged {:?}",
                    c.id,
                    c.proposer.mode(),
                    c.proposer.commit_lsn(),
                    TIMELINE_START + c.source.len() as u64,
                    c.pump.recovery(),
                    (0..ACCEPTORS).map(|a| c.proposer.acknowledged(a)).collect::<Vec<_>>()
                )
            })
            .collect();
        self.fail(format!(
            "liveness: with acceptors {:?} running ({:?} slow), the WAL was not all committed within {max_steps} calm steps: {state:?}",
            (0..ACCEPTORS).filter(|&a| Some(a) != down).collect::<Vec<_>>(),
            self.options.slow,
        ))
    }
}

fn run(seed: u64, steps: u64, options: Options) -> (usize, Lsn) {
    let mut sim = Sim::new(seed, options);
    for _ in 0..steps {
        sim.step();
    }
    (sim.leaders.len(), sim.committed_end())
}

/// Random slow acceptors, at least one.
fn slow_acceptors(rng: &mut StdRng) -> [bool; ACCEPTORS] {
    let mut slow = [false; ACCEPTORS];
    for s in slow.iter_mut() {
        *s = rng.random_range(0..3) == 0;
    }
    slow[rng.random_range(0..ACCEPTORS)] = true;
    slow
}

#[test]
fn consensus_survives_random_schedules() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let (mut terms, mut committed) = (0, 0u64);
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    for seed in only.map_or(0..seeds, |s| s..s + 1) {
        // Every other schedule has slow acceptors.
        let slow = if seed % 2 == 1 {
            slow_acceptors(&mut StdRng::seed_from_u64(seed ^ 0x5eed))
        } else {
            [false; ACCEPTORS]
        };
        let (t, end) = run(seed, 3000, Options { slow });
        terms += t;
        committed += end - TIMELINE_START;
    }
    if only.is_some() {
        return;
    }
    // The schedules exercised elections and committed WAL, not just faults.
    assert!(
        terms as u64 > seeds * 2,
        "only {terms} elections over {seeds} seeds"
    );
    assert!(
        committed > seeds * 1000,
        "only {committed} bytes committed over {seeds} seeds"
    );
    println!("{seeds} seeds: {terms} elections, {committed} bytes committed");
}

/// Liveness with slow acceptors and a bounded buffer: after a random
/// schedule of faults, with a quorum running (one acceptor possibly down
/// for good, any of them slow), every byte of WAL the source produced is
/// committed, and the walproposer never holds more than its limit.
#[test]
fn slow_acceptors_commit_everything() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    let (mut committed, mut recovered, mut paused) = (0u64, 0u64, 0u64);
    for seed in only.map_or(0..seeds, |s| s..s + 1) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x11fe);
        let slow = slow_acceptors(&mut rng);
        let down = (rng.random_range(0..2) == 0).then(|| rng.random_range(0..ACCEPTORS));
        let mut sim = Sim::new(seed, Options { slow });
        for _ in 0..2000 {
            sim.step();
        }
        let end = sim.settle(down, 200_000);
        committed += end - TIMELINE_START;
        recovered += sim.recovered;
        paused += sim.paused;
    }
    if only.is_some() {
        return;
    }
    assert!(
        committed > seeds * (LIMITS.max_buffered as u64),
        "only {committed} bytes committed over {seeds} seeds: the sources wrote too little to fill the buffer"
    );
    // The schedules filled the buffer (flow control) and made laggards
    // recover from other acceptors, not just ran at the source's pace.
    assert!(paused > seeds, "the buffer was full only {paused} times");
    assert!(recovered > seeds, "only {recovered} recoveries");
    println!("{seeds} seeds: {committed} bytes committed, all of every source's WAL; buffer full {paused} times, {recovered} recoveries");
}

/// A safekeeper at the highest term there is (a hostile or corrupt one):
/// electing a term above it is impossible, and the proposer says so
/// instead of overflowing.
#[test]
fn greeting_at_the_highest_term_is_an_error_not_an_overflow() {
    let mut proposer_id = [0u8; 16];
    proposer_id[0] = 1;
    let config = ProposerConfig {
        tenant_id: TenantId::generate(),
        timeline_id: TimelineId::generate(),
        system_id: 1,
        pg_version: 150000,
        wal_seg_size: 1 << 24,
        proposer_id,
        acceptors: 1,
    };
    let mut proposer = Proposer::new(config, Mode::Sync);
    proposer.on_connect(0);
    let greeting = AcceptorMessage::Greeting {
        term: u64::MAX,
        node_id: NodeId(1),
    };
    match proposer.on_message(0, greeting) {
        Err(ProposerError::Protocol {
            acceptor: 0,
            reason,
        }) => {
            assert!(reason.contains(&u64::MAX.to_string()), "{reason}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
}
