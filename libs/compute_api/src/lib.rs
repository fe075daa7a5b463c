//! What a compute is asked to run, and what compute_ctl answers about it.
//!
//! * [`spec`]: the compute spec, a JSON document compute_ctl reads from
//!   `-c spec.json` or receives on `POST /configure`;
//! * [`responses`]: the documents of compute_ctl's HTTP API (`GET /status`),
//!   with timestamps as [`time`] writes and reads them.

pub mod responses;
pub mod spec;
pub mod time;

pub use responses::{ComputeState, ComputeStatus};
pub use spec::{ComputeMode, ComputeSpec, Database, DeltaOp, Role, SpecError};
