//! The walproposer: the proposer side of the safekeepers' consensus.
//!
//! * [`proposer`]: the protocol as a state machine without I/O;
//! * [`driver`]: runs it against real safekeepers, reading WAL from
//!   PostgreSQL (as a physical replication client) or from a donor
//!   safekeeper: [`driver::sync_safekeepers`] and [`driver::stream`];
//! * [`safekeeper_link`], [`wal_buffer`]: the connections and the WAL in memory.

pub mod driver;
pub mod proposer;
pub mod safekeeper_link;
pub mod wal_buffer;
