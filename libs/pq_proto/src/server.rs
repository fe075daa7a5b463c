//! The server side of a connection: [`PostgresBackend`].
//!
//! A typical server reads the startup packet, authenticates, sends
//! `ParameterStatus`/`BackendKeyData`/`ReadyForQuery`, then loops on
//! [`PostgresBackend::read_message`]. Writes are buffered until
//! [`PostgresBackend::flush`] (or until the buffer holds 64 KiB). For
//! streaming in both directions at once, [`PostgresBackend::split`] gives a
//! reading half and a writing half.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::backend::{BeMessage, ColumnDesc};
use crate::frontend::{parse_message, parse_startup, FeMessage, StartupPacket, StartupRequest};
use crate::wire::{read_frame, WRITE_BUFFER_LIMIT};
use crate::{ErrorFields, ProtocolError, DEFAULT_MAX_MESSAGE_LEN};

/// A server connection over any byte stream. Reading needs `S: AsyncRead`,
/// writing `S: AsyncWrite`, so the halves returned by
/// [`split`](Self::split) offer one side each.
#[derive(Debug)]
pub struct PostgresBackend<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    max_message_len: usize,
}

impl<S> PostgresBackend<S> {
    pub fn new(stream: S) -> Self {
        PostgresBackend {
            stream,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
        }
    }

    /// Sets the largest message body accepted from the client.
    pub fn set_max_message_len(&mut self, max: usize) {
        self.max_message_len = max;
    }

    /// The underlying stream, e.g. to ask for the peer address.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> PostgresBackend<S> {
    /// Reads the next message. `Ok(None)` means the client closed the
    /// connection cleanly between messages. Cancel-safe.
    pub async fn read_message(&mut self) -> Result<Option<FeMessage>, ProtocolError> {
        read_frame(
            &mut self.stream,
            &mut self.read_buf,
            self.max_message_len,
            parse_message,
        )
        .await
    }
}

impl<S: AsyncWrite + Unpin> PostgresBackend<S> {
    /// Buffers a message; writes the buffer out once it is large.
    pub async fn write_message(&mut self, msg: &BeMessage<'_>) -> Result<(), ProtocolError> {
        msg.write(&mut self.write_buf)?;
        if self.write_buf.len() >= WRITE_BUFFER_LIMIT {
            self.stream.write_all_buf(&mut self.write_buf).await?;
        }
        Ok(())
    }

    /// Writes out everything buffered and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        self.stream.write_all_buf(&mut self.write_buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Buffers an `ErrorResponse` with severity `ERROR`. In a query cycle,
    /// follow it with `ReadyForQuery`.
    pub async fn send_error(&mut self, code: &str, message: &str) -> Result<(), ProtocolError> {
        self.write_message(&BeMessage::ErrorResponse(&ErrorFields::error(
            code, message,
        )))
        .await
    }

    /// Buffers a whole result set of text values: `RowDescription`, one
    /// `DataRow` per row, `CommandComplete` with tag `SELECT <n>`.
    pub async fn send_query_result(
        &mut self,
        columns: &[ColumnDesc],
        rows: &[Vec<Option<String>>],
    ) -> Result<(), ProtocolError> {
        self.write_message(&BeMessage::RowDescription(columns))
            .await?;
        for row in rows {
            let values: Vec<Option<&[u8]>> = row
                .iter()
                .map(|v| v.as_deref().map(str::as_bytes))
                .collect();
            self.write_message(&BeMessage::DataRow(&values)).await?;
        }
        self.write_message(&BeMessage::CommandComplete(&format!(
            "SELECT {}",
            rows.len()
        )))
        .await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PostgresBackend<S> {
    /// Runs the startup phase up to the `StartupMessage` or `CancelRequest`.
    /// `SSLRequest` and `GSSENCRequest` are answered `N` (no encryption) once
    /// each. A request for protocol 3.x with x > 0 or for `_pq_.` options
    /// buffers a `NegotiateProtocolVersion` down to 3.0. Errors here can be
    /// reported with [`ProtocolError::sqlstate`] before closing.
    pub async fn read_startup(&mut self) -> Result<StartupRequest, ProtocolError> {
        let (mut ssl_refused, mut gss_refused) = (false, false);
        loop {
            let packet = read_frame(&mut self.stream, &mut self.read_buf, 0, |buf, _| {
                parse_startup(buf)
            })
            .await?
            .ok_or(ProtocolError::UnexpectedEof)?;
            let refused = match packet {
                StartupPacket::Cancel(key) => return Ok(StartupRequest::Cancel(key)),
                StartupPacket::Startup { minor, params } => {
                    let unrecognized: Vec<String> = params
                        .iter()
                        .filter(|(k, _)| k.starts_with("_pq_."))
                        .map(|(k, _)| k.to_owned())
                        .collect();
                    if minor > 0 || !unrecognized.is_empty() {
                        let msg = BeMessage::NegotiateProtocolVersion {
                            newest_minor: 0,
                            unrecognized: &unrecognized,
                        };
                        self.write_message(&msg).await?;
                    }
                    return Ok(StartupRequest::Startup(params));
                }
                StartupPacket::SslRequest => &mut ssl_refused,
                StartupPacket::GssEncRequest => &mut gss_refused,
            };
            if *refused {
                return Err(ProtocolError::InvalidStartupPacket(
                    "repeated encryption request".into(),
                ));
            }
            *refused = true;
            // Bytes sent before our answer could not have been encrypted as
            // the client meant: refuse them rather than read them as plain.
            if !self.read_buf.is_empty() {
                return Err(ProtocolError::InvalidStartupPacket(
                    "data sent after an encryption request before its answer".into(),
                ));
            }
            self.stream.write_all(b"N").await?;
            self.stream.flush().await?;
        }
    }

    /// Splits the connection into a reading and a writing half, e.g. to
    /// receive replies while streaming in COPY BOTH.
    pub fn split(self) -> (PostgresBackend<ReadHalf<S>>, PostgresBackend<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.stream);
        let reader = PostgresBackend {
            stream: r,
            read_buf: self.read_buf,
            write_buf: BytesMut::new(),
            max_message_len: self.max_message_len,
        };
        let writer = PostgresBackend {
            stream: w,
            read_buf: BytesMut::new(),
            write_buf: self.write_buf,
            max_message_len: self.max_message_len,
        };
        (reader, writer)
    }
}
