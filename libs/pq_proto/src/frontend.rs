//! Messages sent by a client (a *frontend*), parsed by our servers.
//!
//! Input is untrusted: every function here returns a [`ProtocolError`] for
//! malformed bytes and never allocates more than the checked message length.

use bytes::{Buf, BytesMut};

use crate::wire::{tagged_frame, Reader};
use crate::{CancelKey, ProtocolError};

/// Startup packets are small; PostgreSQL refuses anything over 10000 bytes.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

const PROTOCOL_MAJOR: u16 = 3;
const CANCEL_REQUEST_CODE: i32 = (1234 << 16) | 5678;
const SSL_REQUEST_CODE: i32 = (1234 << 16) | 5679;
const GSSENC_REQUEST_CODE: i32 = (1234 << 16) | 5680;

/// What a connection asks for once the startup phase is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// A `StartupMessage`: a session is wanted.
    Startup(StartupParams),
    /// A `CancelRequest`: cancel the query of another session, then close.
    Cancel(CancelKey),
}

/// One packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup { minor: u16, params: StartupParams },
}

/// How a startup packet's `replication` parameter asks for replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// A normal session.
    None,
    /// `replication=true`: a walsender accepting physical replication commands.
    Physical,
    /// `replication=database`: logical replication.
    Logical,
}

/// The parameters of a `StartupMessage`, in the order sent. `user` is always
/// present and `replication`, if present, is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupParams {
    params: Vec<(String, String)>,
    replication: ReplicationMode,
}

impl StartupParams {
    /// Any parameter, e.g. `application_name` or `options`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.get("user").unwrap_or_default()
    }

    /// `database`, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> &str {
        self.get("database").unwrap_or_else(|| self.user())
    }

    pub fn replication(&self) -> ReplicationMode {
        self.replication
    }

    /// All parameters, in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Parses one startup-phase packet (Int32 length, Int32 code, body) from the
/// front of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    let Some(&[a, b, c, d]) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    let len = usize::try_from(len)
        .ok()
        .filter(|len| (8..=MAX_STARTUP_PACKET_LEN).contains(len))
        .ok_or(ProtocolError::InvalidLength {
            what: "startup packet",
            len: len.into(),
        })?;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(len).freeze();
    body.advance(4);
    let mut r = Reader::new(body, "startup");
    let code = r.i32()?;
    let packet = match code {
        SSL_REQUEST_CODE => StartupPacket::SslRequest,
        GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            let key = CancelKey {
                process_id: r.i32()?,
                secret_key: r.i32()?,
            };
            StartupPacket::Cancel(key)
        }
        _ => {
            // The two halves of the code, as PostgreSQL reports them.
            let (major, minor) = ((code >> 16) as u16, code as u16);
            if major != PROTOCOL_MAJOR {
                return Err(ProtocolError::UnsupportedProtocolVersion { major, minor });
            }
            StartupPacket::Startup {
                minor,
                params: parse_params(&mut r)?,
            }
        }
    };
    r.finish()?;
    Ok(Some(packet))
}

fn parse_params(r: &mut Reader) -> Result<StartupParams, ProtocolError> {
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let name = r.cstr()?;
        if name.is_empty() {
            break;
        }
        let value = r.cstr()?;
        if params.iter().any(|(k, _)| *k == name) {
            return Err(ProtocolError::InvalidStartupPacket(format!(
                "duplicate parameter {name:?}"
            )));
        }
        params.push((name, value));
    }
    let find = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if find("user").is_none_or(str::is_empty) {
        return Err(ProtocolError::InvalidStartupPacket(
            "no user name specified".into(),
        ));
    }
    let replication = match find("replication") {
        None => ReplicationMode::None,
        Some("database") => ReplicationMode::Logical,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => ReplicationMode::Physical,
            "false" | "off" | "no" | "0" => ReplicationMode::None,
            _ => {
                return Err(ProtocolError::InvalidStartupPacket(format!(
                    "invalid value for parameter \"replication\": {v:?}"
                )))
            }
        },
    };
    Ok(StartupParams {
        params,
        replication,
    })
}

/// A message from a client after the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeMessage {
    /// `Q`: a simple query (possibly several statements).
    Query(String),
    /// `d`: a chunk of COPY data.
    CopyData(bytes::Bytes),
    /// `c`: the client has finished sending COPY data.
    CopyDone,
    /// `f`: the client aborts COPY FROM STDIN with this message.
    CopyFail(String),
    /// `X`: the client is closing the connection.
    Terminate,
    /// `p`: a password, a SASLInitialResponse or a SASLResponse; which one
    /// depends on what authentication request the server sent. The body is
    /// raw: a cleartext password still ends with its NUL terminator.
    PasswordMessage(bytes::Bytes),
    /// A message of the extended query protocol; its body is skipped.
    Extended(ExtendedMessage),
}

/// The extended-query-protocol messages, recognised so that a server can
/// refuse them cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendedMessage {
    Parse,
    Bind,
    Execute,
    Describe,
    Close,
    Sync,
    Flush,
}

fn known_tag(tag: u8) -> Result<(), ProtocolError> {
    match tag {
        b'Q' | b'd' | b'c' | b'f' | b'X' | b'p' | b'P' | b'B' | b'E' | b'D' | b'C' | b'S'
        | b'H' => Ok(()),
        _ => Err(ProtocolError::UnknownTag(tag)),
    }
}

/// Parses one message from the front of `buf`, whose body may be at most
/// `max_len` bytes. `Ok(None)` means more bytes are needed; an unknown type
/// byte or a bad length is reported before the body arrives. Public for the
/// fuzz targets; servers read messages with [`crate::PostgresBackend`].
pub fn parse_message(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<FeMessage>, ProtocolError> {
    if let Some(&tag) = buf.first() {
        known_tag(tag)?;
    }
    let Some((tag, total)) = tagged_frame(buf, max_len)? else {
        return Ok(None);
    };
    let mut body = buf.split_to(total).freeze();
    body.advance(5);
    let empty = |what| Reader::new(body.clone(), what).finish();
    let msg = match tag {
        b'Q' => {
            let mut r = Reader::new(body, "Query");
            let query = r.cstr()?;
            r.finish()?;
            FeMessage::Query(query)
        }
        b'd' => FeMessage::CopyData(body),
        b'c' => empty("CopyDone").map(|()| FeMessage::CopyDone)?,
        b'f' => {
            let mut r = Reader::new(body, "CopyFail");
            let message = r.cstr()?;
            r.finish()?;
            FeMessage::CopyFail(message)
        }
        b'X' => empty("Terminate").map(|()| FeMessage::Terminate)?,
        b'p' => FeMessage::PasswordMessage(body),
        b'P' => FeMessage::Extended(ExtendedMessage::Parse),
        b'B' => FeMessage::Extended(ExtendedMessage::Bind),
        b'E' => FeMessage::Extended(ExtendedMessage::Execute),
        b'D' => FeMessage::Extended(ExtendedMessage::Describe),
        b'C' => FeMessage::Extended(ExtendedMessage::Close),
        b'S' => FeMessage::Extended(ExtendedMessage::Sync),
        b'H' => FeMessage::Extended(ExtendedMessage::Flush),
        _ => return Err(ProtocolError::UnknownTag(tag)),
    };
    Ok(Some(msg))
}
