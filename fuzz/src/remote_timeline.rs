//! `pageserver/src/remote_timeline/index_part.rs`.

#[path = "../../pageserver/src/remote_timeline/index_part.rs"]
mod index_part;

pub use index_part::*;
