//! What computes and tools say to the pageserver.
//!
//! * [`pagestream`]: the binary requests and responses carried in CopyData
//!   after `pagestream <tenant> <timeline>`.

pub mod models;
pub mod pagestream;
