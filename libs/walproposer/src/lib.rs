//! The walproposer: the proposer side of the safekeepers' consensus.
//!
//! * [`proposer`]: the protocol as a state machine without I/O;
//! * [`pump`]: which WAL goes to which safekeeper, what stays in memory and
//!   when reading from PostgreSQL pauses (flow control), without I/O;
//! * [`driver`]: runs both against real safekeepers, reading WAL from
//!   PostgreSQL (as a physical replication client) or from a donor
//!   safekeeper: [`driver::sync_safekeepers`] and [`driver::stream`];
//! * [`backpressure`]: commits wait while the pageserver lags too far;
//! * [`status`]: the progress a running walproposer publishes;
//! * [`safekeeper_link`], [`wal_buffer`]: the connections and the WAL in memory.

pub mod backpressure;
pub mod driver;
mod postgres_source;
pub mod proposer;
pub mod pump;
mod recovery;
pub mod safekeeper_link;
pub mod status;
pub mod wal_buffer;
