//! Domain types shared by every component of the system.
//!
//! * [`lsn::Lsn`]: a position in the write-ahead log.
//! * [`id::TenantId`], [`id::TimelineId`]: 128-bit ids written as 32 hex digits.
//! * [`id::NodeId`]: the id of a pageserver or safekeeper node.
//! * [`bytes_reader::Reader`]: a bounds-checked cursor for decoding
//!   untrusted bytes.
//! * [`failpoint`]: named points where a test can force an interleaving.

pub mod bytes_reader;
pub mod failpoint;
pub mod id;
pub mod lsn;

pub use id::{NodeId, TenantId, TimelineId};
pub use lsn::Lsn;
