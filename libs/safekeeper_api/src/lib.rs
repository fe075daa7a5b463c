//! What proposers (walproposers) and acceptors (safekeepers) say to each
//! other, and the term history both keep.
//!
//! The protocol is Raft-like with the proposer separate from the acceptors:
//!
//! 1. The proposer greets every acceptor and learns its current term.
//! 2. It asks for votes in a term greater than any it has seen. An acceptor
//!    votes once per term, persisting the term before it answers, and
//!    reports its flush LSN and term history.
//! 3. With a quorum of votes, the proposer takes the most advanced log
//!    (highest last-log term, then highest flush LSN) as its own history,
//!    adds an entry for its term starting at that log's end, and tells each
//!    acceptor where their logs agree (`ProposerElected`); the acceptor
//!    truncates anything after that point and adopts the history.
//! 4. The proposer streams WAL (`AppendRequest`); acceptors fsync before
//!    answering with their flush LSN. The commit LSN is the quorum-th
//!    highest flush LSN among acceptors whose log reaches the start of the
//!    proposer's term.
//!
//! Messages travel in CopyData of a libpq connection; [`messages`] defines
//! their binary encoding.

pub mod messages;
pub mod models;
pub mod term_history;

pub use term_history::{Term, TermHistory, TermLsn};
