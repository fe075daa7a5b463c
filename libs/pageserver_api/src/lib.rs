//! What computes and tools say to the pageserver.
//!
//! * [`pagestream`]: the binary requests and responses carried in CopyData
//!   after `pagestream <tenant> <timeline>`;
//! * [`lazy`]: the relation sizes a lazy base backup carries instead of
//!   relation data.

pub mod lazy;
pub mod models;
pub mod pagestream;
