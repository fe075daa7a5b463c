//! The PostgreSQL v3 wire protocol, for daemons that are servers, clients or both.
//!
//! Layout:
//!
//! * [`frontend`]: messages a *client* sends (startup packets, `Query`,
//!   `CopyData`, …), parsed by our servers from untrusted bytes.
//! * [`backend`]: messages a *server* sends (`AuthenticationOk`,
//!   `RowDescription`, `ErrorResponse`, `CopyBothResponse`, …), encoded by our
//!   servers.
//! * [`server`]: [`PostgresBackend`], a server connection over any async
//!   stream: startup (answering `SSLRequest`/`GSSENCRequest` with `N`),
//!   message reading, buffered writing, result-set and error helpers.
//! * [`client`]: [`Client`], a client connection over TCP built on the
//!   `postgres-protocol` crate: authentication (trust, cleartext, MD5,
//!   SCRAM-SHA-256), simple queries, COPY OUT and COPY BOTH streams.
//! * [`listener`]: accepting connections with TCP keepalives, a budget of
//!   connections starting up (the oldest evicted beyond it, each with a
//!   startup deadline) and one of sessions (the rest refused with `53300`).
//! * [`query_server`]: a whole server for simple-query daemons: startup,
//!   the authentication hook, the query loop, error replies and
//!   cancellation, around a [`QueryHandler`].
//! * [`replication`]: the physical replication messages carried in
//!   `CopyData` (`w`, `k`, `r`, `h`) and PostgreSQL timestamps; both sides
//!   encode and decode them.
//!
//! Every length read from the network is checked before anything is
//! allocated: messages over a configurable maximum
//! ([`DEFAULT_MAX_MESSAGE_LEN`] by default), truncated or malformed messages
//! give a [`ProtocolError`], never a panic.

pub mod backend;
pub mod client;
pub mod frontend;
pub mod listener;
pub mod query_server;
pub mod replication;
pub mod server;

mod wire;

use std::fmt;

pub use backend::{BeMessage, ColumnDesc, TransactionStatus};
pub use client::{connect, Client, ClientError, CopyBoth, CopyOut, CopyReceiver, CopySender, Row};
pub use frontend::{
    parse_startup, ExtendedMessage, FeMessage, ReplicationMode, StartupPacket, StartupParams,
    StartupRequest,
};
pub use listener::{
    Accepted, Listener, ListenerConfig, Pending, StartupAborted, TooManyConnections,
};
pub use query_server::{
    auth_refusal, authenticate_with_token, QueryError, QueryHandler, QueryOutcome, ServerConfig,
};
pub use server::PostgresBackend;

/// Default limit on the body of one message: 16 MiB of payload plus room for
/// headers. Larger messages are refused before they are buffered.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024 + 1024;

/// Errors decoding or encoding protocol messages, or moving them over the
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed unexpectedly")]
    UnexpectedEof,
    #[error("invalid length {len} in {what}")]
    InvalidLength { what: &'static str, len: i64 },
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    MessageTooLong { len: usize, max: usize },
    #[error("unknown message type {:?}", char::from(*.0))]
    UnknownTag(u8),
    #[error("{0} message is truncated")]
    Truncated(&'static str),
    #[error("{0} message has trailing bytes")]
    TrailingBytes(&'static str),
    #[error("string in {0} message is missing its NUL terminator")]
    MissingTerminator(&'static str),
    #[error("string in {0} message is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocolVersion { major: u16, minor: u16 },
    #[error("invalid startup packet: {0}")]
    InvalidStartupPacket(String),
    #[error("invalid message from server: {0}")]
    InvalidBackendMessage(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

impl ProtocolError {
    /// The SQLSTATE a server reports for this error in an `ErrorResponse`.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::Io(_) | ProtocolError::UnexpectedEof => sqlstate::CONNECTION_FAILURE,
            ProtocolError::UnsupportedProtocolVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            ProtocolError::Encode(_) => sqlstate::INTERNAL_ERROR,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

/// The fields of an `ErrorResponse` or `NoticeResponse`: what a server sends
/// and what a client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, … (not localized).
    pub severity: String,
    /// The SQLSTATE code, e.g. `42601`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The other fields, by their one-letter codes in the order sent: `P`
    /// position, `p` internal position, `q` internal query, `W` where, `s`
    /// schema, `t` table, `c` column, `d` data type, `n` constraint, `F`
    /// file, `L` line, `R` routine.
    pub other: Vec<(u8, String)>,
}

impl ErrorFields {
    /// An error with severity `ERROR`: the query fails, the session goes on.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::new("ERROR", code, message)
    }

    /// An error with severity `FATAL`: the server closes the connection.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self::new("FATAL", code, message)
    }

    fn new(severity: &str, code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: severity.to_owned(),
            code: code.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
            other: Vec::new(),
        }
    }

    /// The value of the field with one-letter code `code` among
    /// [`other`](Self::other).
    pub fn other_field(&self, code: u8) -> Option<&str> {
        self.other
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "; DETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; HINT: {hint}")?;
        }
        Ok(())
    }
}

/// The process id and secret key a server hands out in `BackendKeyData`,
/// and that a `CancelRequest` quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub process_id: i32,
    pub secret_key: i32,
}

/// Text or binary, for result columns and COPY streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }
}

/// SQLSTATE codes our daemons report.
pub mod sqlstate {
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INTERNAL_ERROR: &str = "XX000";
}

/// Type OIDs for [`ColumnDesc`].
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
}

#[cfg(test)]
mod tests;
