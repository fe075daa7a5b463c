//! The client side of a connection: [`Client`], over TCP.
//!
//! Messages are encoded and parsed with the `postgres-protocol` crate, whose
//! SCRAM-SHA-256 client does the SASL exchange. Every message is framed and
//! length-checked here first, so at most `max_message_len` bytes are ever
//! buffered for one message.
//!
//! The connection is *ready* between queries. An operation that fails midway
//! (I/O or protocol error, or a COPY handle dropped without
//! [`CopyBoth::finish`]) leaves it not ready, and later operations return
//! [`ClientError::InvalidState`]. A server `ErrorResponse` does not: the
//! client reads on to `ReadyForQuery` and the connection stays usable.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{
    ErrorFields as PgErrorFields, ErrorResponseBody, Message,
};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::{tcp, TcpStream, ToSocketAddrs};

use crate::wire::{read_frame, tagged_frame, WRITE_BUFFER_LIMIT};

mod extended;
use crate::{CancelKey, ErrorFields, ProtocolError, DEFAULT_MAX_MESSAGE_LEN};
pub use extended::{FieldDescription, QueryResult, TextQuery};

/// Errors of client operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The server answered with an `ErrorResponse`.
    #[error("server error: {0}")]
    Server(Box<ErrorFields>),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("unexpected message {:?} from server", char::from(*.0))]
    Unexpected(u8),
    #[error("connection cannot do that now: {0}")]
    InvalidState(&'static str),
    /// A query's rows passed the byte limit given with it; the rest was
    /// not read, so the connection is unusable.
    #[error("the result is larger than the limit of {0} bytes")]
    ResultTooLarge(usize),
}

impl ClientError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Protocol(ProtocolError::Io(e))
    }
}

/// Maps an encoding error of `postgres-protocol` (a NUL inside a string, a
/// length overflow).
fn encode_err(e: io::Error) -> ClientError {
    ClientError::Protocol(ProtocolError::Encode(e.to_string()))
}

fn invalid(e: io::Error) -> ClientError {
    ClientError::Protocol(ProtocolError::InvalidBackendMessage(e.to_string()))
}

/// One row of a simple query result, with text values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl Row {
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values; `None` is SQL NULL.
    pub fn values(&self) -> &[Option<String>] {
        &self.values
    }

    /// The value of column `idx`; `None` for NULL or no such column.
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.values.get(idx)?.as_deref()
    }

    /// The value of the first column named `name`; `None` for NULL or no
    /// such column.
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        self.get(self.columns.iter().position(|c| c == name)?)
    }
}

/// Parses one backend message. The type byte comes back beside the message
/// because `postgres-protocol` has no `CopyBothResponse`: that one is
/// returned as a `CopyOutResponse` (same layout) with tag `W`. Public for
/// the fuzz targets.
pub fn parse_backend(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<(u8, Message)>, ProtocolError> {
    let Some((tag, total)) = tagged_frame(buf, max_len)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(total);
    if tag == b'W' {
        frame[0] = b'H';
    }
    match Message::parse(&mut frame) {
        Ok(Some(msg)) => Ok(Some((tag, msg))),
        Ok(None) => Err(ProtocolError::Truncated("backend")),
        Err(e) => Err(ProtocolError::InvalidBackendMessage(e.to_string())),
    }
}

/// The fields of an `ErrorResponse` or `NoticeResponse` from a server.
pub fn error_fields(mut fields: PgErrorFields<'_>) -> Result<ErrorFields, ClientError> {
    let mut e = ErrorFields::error("", "");
    let (mut severity, mut localized_severity) = (None, None);
    while let Some(field) = fields.next().map_err(invalid)? {
        // Messages may be in the server's encoding: keep what is readable.
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => severity = Some(value),
            b'S' => localized_severity = Some(value),
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            code => e.other.push((code, value)),
        }
    }
    // Servers before 9.6 send only the localized severity.
    e.severity = severity.or(localized_severity).unwrap_or_default();
    Ok(e)
}

fn server_error(fields: PgErrorFields<'_>) -> ClientError {
    match error_fields(fields) {
        Ok(e) => ClientError::Server(Box::new(e)),
        Err(e) => e,
    }
}

/// Keeps the first server error of a query cycle, to be returned at
/// `ReadyForQuery`. A `FATAL` or `PANIC` error is returned at once: the
/// server closes the connection after it.
fn keep_error(
    error: &mut Option<ClientError>,
    body: &ErrorResponseBody,
) -> Result<(), ClientError> {
    let e = server_error(body.fields());
    if matches!(&e, ClientError::Server(f) if f.severity == "FATAL" || f.severity == "PANIC") {
        return Err(e);
    }
    error.get_or_insert(e);
    Ok(())
}

/// Send a `CancelRequest` for the session with `key` on a connection of its
/// own, then wait for the server to close it (as libpq's `PQcancel` does).
/// Whether anything was cancelled is not reported, by design.
pub async fn send_cancel_request(addr: impl ToSocketAddrs, key: CancelKey) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut packet = BytesMut::with_capacity(16);
    frontend::cancel_request(key.process_id, key.secret_key, &mut packet);
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&packet).await?;
    stream.shutdown().await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    Ok(())
}

/// Connects over TCP and runs the startup phase: sends a `StartupMessage`
/// with `params` (`user` is required; add `database`, `application_name`,
/// `options`, `replication=true`, …; `client_encoding` defaults to UTF8),
/// authenticates with `password` if the server asks (cleartext, MD5 or
/// SCRAM-SHA-256), and waits for `ReadyForQuery`.
pub async fn connect(
    addr: impl ToSocketAddrs,
    params: &[(&str, &str)],
    password: Option<&str>,
) -> Result<Client, ClientError> {
    let stream = TcpStream::connect(addr).await?;
    connect_stream(stream, params, password).await
}

/// [`connect`] on a TCP connection made by the caller (who chose its
/// timeout and socket options).
pub async fn connect_stream(
    stream: TcpStream,
    params: &[(&str, &str)],
    password: Option<&str>,
) -> Result<Client, ClientError> {
    let mut client = authenticated(stream, params, password).await?;
    client.read_until_ready(None).await?;
    Ok(client)
}

/// Runs the startup phase on `stream` up to the server's
/// `AuthenticationOk` and hands the connection back: the socket, and the
/// bytes already read past `AuthenticationOk` (the start of the server's
/// `ParameterStatus`, `BackendKeyData` and `ReadyForQuery`). For a proxy
/// that authenticates on a client's behalf and relays the rest.
pub async fn authenticate_stream(
    stream: TcpStream,
    params: &[(&str, &str)],
    password: Option<&str>,
) -> Result<(TcpStream, BytesMut), ClientError> {
    let client = authenticated(stream, params, password).await?;
    Ok((client.stream, client.read_buf))
}

async fn authenticated(
    stream: TcpStream,
    params: &[(&str, &str)],
    password: Option<&str>,
) -> Result<Client, ClientError> {
    stream.set_nodelay(true)?;
    let mut client = Client {
        stream,
        read_buf: BytesMut::new(),
        write_buf: BytesMut::new(),
        max_message_len: DEFAULT_MAX_MESSAGE_LEN,
        parameters: HashMap::new(),
        cancel_key: None,
        ready: false,
        transaction_status: b'I',
    };
    let mut startup = params.to_vec();
    if !params.iter().any(|(k, _)| *k == "client_encoding") {
        startup.push(("client_encoding", "UTF8"));
    }
    frontend::startup_message(startup, &mut client.write_buf).map_err(encode_err)?;
    client.flush().await?;
    let user = params
        .iter()
        .find(|(k, _)| *k == "user")
        .map_or("", |(_, v)| v);
    client.authenticate(user, password).await?;
    Ok(client)
}

/// A client connection to a PostgreSQL server (or to one of our daemons).
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    max_message_len: usize,
    parameters: HashMap<String, String>,
    cancel_key: Option<CancelKey>,
    ready: bool,
    /// The status of the last `ReadyForQuery`: `I` idle, `T` in a
    /// transaction, `E` in a failed one.
    transaction_status: u8,
}

impl Client {
    /// A parameter the server reported with `ParameterStatus`, e.g.
    /// `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The key from `BackendKeyData`, for a `CancelRequest`.
    pub fn cancel_key(&self) -> Option<CancelKey> {
        self.cancel_key
    }

    /// Whether the connection is between queries, outside any transaction:
    /// the last operation completed and the server was idle after it.
    pub fn is_idle(&self) -> bool {
        self.ready && self.transaction_status == b'I'
    }

    /// Whether the connection is between queries (the last operation
    /// completed), in a transaction or not.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The transaction status of the last `ReadyForQuery` (`I`, `T` or
    /// `E`).
    pub fn transaction_status(&self) -> u8 {
        self.transaction_status
    }

    /// Whether the server closed the connection or sent something
    /// unasked (e.g. a FATAL error before closing it) while it was idle: a
    /// look at the socket without waiting and without consuming anything.
    /// A connection kept idle (in a pool) is checked before it is used.
    pub fn is_closed(&self) -> bool {
        if !self.read_buf.is_empty() {
            return true;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking (tokio's), so the peek does not wait.
        match socket2::SockRef::from(&self.stream).peek(&mut probe) {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// The server's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }

    /// Sets the largest message body accepted from the server.
    pub fn set_max_message_len(&mut self, max: usize) {
        self.max_message_len = max;
    }

    /// Runs a simple query (one or more statements) and returns the rows of
    /// all its result sets. A server error is returned as
    /// [`ClientError::Server`] once the server is ready again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ClientError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns: Arc<[String]> = Arc::new([]);
        let mut error = None;
        loop {
            match self.next().await? {
                (_, Message::RowDescription(body)) => {
                    let names: Vec<String> = body
                        .fields()
                        .map(|f| Ok(f.name().to_owned()))
                        .collect()
                        .map_err(invalid)?;
                    columns = names.into();
                }
                (_, Message::DataRow(body)) => {
                    let buf = body.buffer();
                    let values: Vec<Option<String>> = body
                        .ranges()
                        .map_err(invalid)
                        .map(|range| {
                            let Some(range) = range else { return Ok(None) };
                            let bytes =
                                buf.get(range).ok_or(ProtocolError::Truncated("DataRow"))?;
                            let text = std::str::from_utf8(bytes)
                                .map_err(|_| ProtocolError::InvalidUtf8("DataRow"))?;
                            Ok(Some(text.to_owned()))
                        })
                        .collect()?;
                    if values.len() != columns.len() {
                        return Err(ProtocolError::InvalidBackendMessage(
                            "DataRow does not match RowDescription".into(),
                        )
                        .into());
                    }
                    rows.push(Row {
                        columns: columns.clone(),
                        values,
                    });
                }
                (_, Message::ErrorResponse(body)) => keep_error(&mut error, &body)?,
                (_, Message::CopyInResponse(_)) => {
                    frontend::copy_fail(
                        "COPY FROM STDIN is not supported by simple_query",
                        &mut self.write_buf,
                    )
                    .map_err(encode_err)?;
                    self.flush().await?;
                }
                (_, Message::ReadyForQuery(body)) => {
                    self.ready = true;
                    self.transaction_status = body.status();
                    return error.map_or(Ok(rows), Err);
                }
                (b'W', _) => return Err(ClientError::Unexpected(b'W')),
                // CommandComplete, EmptyQueryResponse, notices, COPY OUT data.
                (_, msg) => self.note(&msg),
            }
        }
    }

    /// Sends a query that starts COPY BOTH, e.g. `START_REPLICATION`.
    pub async fn copy_both(&mut self, query: &str) -> Result<CopyBoth<'_>, ClientError> {
        self.start_copy(query, b'W').await?;
        Ok(CopyBoth {
            client: self,
            recv: RecvState::Open,
            send_done: false,
        })
    }

    /// Sends a query that starts COPY OUT, e.g. `COPY t TO STDOUT` or a base
    /// backup.
    pub async fn copy_out(&mut self, query: &str) -> Result<CopyOut<'_>, ClientError> {
        self.start_copy(query, b'H').await?;
        Ok(CopyOut(CopyBoth {
            client: self,
            recv: RecvState::Open,
            send_done: true,
        }))
    }

    /// Sends `Terminate` and closes the connection.
    pub async fn close(mut self) -> Result<(), ClientError> {
        frontend::terminate(&mut self.write_buf);
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all_buf(&mut self.write_buf).await?;
        Ok(())
    }

    async fn next(&mut self) -> Result<(u8, Message), ClientError> {
        read_frame(
            &mut self.stream,
            &mut self.read_buf,
            self.max_message_len,
            parse_backend,
        )
        .await?
        .ok_or(ClientError::Protocol(ProtocolError::UnexpectedEof))
    }

    /// Keeps what an asynchronous message tells; ignores the rest.
    fn note(&mut self, msg: &Message) {
        if let Message::ParameterStatus(body) = msg {
            if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                self.parameters.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&str>,
    ) -> Result<(), ClientError> {
        let password =
            || password.ok_or_else(|| ClientError::Auth("the server asks for a password".into()));
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next().await? {
                (_, Message::AuthenticationOk) => return Ok(()),
                (_, Message::AuthenticationCleartextPassword) => {
                    frontend::password_message(password()?.as_bytes(), &mut self.write_buf)
                        .map_err(encode_err)?;
                }
                (_, Message::AuthenticationMd5Password(body)) => {
                    let hash = md5_hash(user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(encode_err)?;
                }
                (_, Message::AuthenticationSasl(body)) => {
                    if !body
                        .mechanisms()
                        .any(|m| Ok(m == SCRAM_SHA_256))
                        .map_err(invalid)?
                    {
                        return Err(ClientError::Auth(
                            "the server offers no SASL mechanism we support".into(),
                        ));
                    }
                    // No TLS, so no channel binding.
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        s.message(),
                        &mut self.write_buf,
                    )
                    .map_err(encode_err)?;
                    scram = Some(s);
                }
                (_, Message::AuthenticationSaslContinue(body)) => {
                    let s = scram.as_mut().ok_or(ClientError::Unexpected(b'R'))?;
                    s.update(body.data())
                        .map_err(|e| ClientError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)
                        .map_err(encode_err)?;
                }
                (_, Message::AuthenticationSaslFinal(body)) => {
                    let s = scram.as_mut().ok_or(ClientError::Unexpected(b'R'))?;
                    s.finish(body.data())
                        .map_err(|e| ClientError::Auth(e.to_string()))?;
                    continue;
                }
                (_, Message::ErrorResponse(body)) => return Err(server_error(body.fields())),
                (_, Message::NoticeResponse(_)) => continue,
                (b'R', _) => {
                    return Err(ClientError::Auth(
                        "the server asks for an unsupported method".into(),
                    ))
                }
                (tag, _) => return Err(ClientError::Unexpected(tag)),
            }
            self.flush().await?;
        }
    }

    /// Reads to `ReadyForQuery`, keeping `ParameterStatus` and
    /// `BackendKeyData`, skipping everything else. Returns `error`, or the
    /// first server error read.
    async fn read_until_ready(
        &mut self,
        mut error: Option<ClientError>,
    ) -> Result<(), ClientError> {
        loop {
            match self.next().await? {
                (_, Message::ReadyForQuery(body)) => {
                    self.ready = true;
                    self.transaction_status = body.status();
                    return error.map_or(Ok(()), Err);
                }
                (_, Message::BackendKeyData(body)) => {
                    self.cancel_key = Some(CancelKey {
                        process_id: body.process_id(),
                        secret_key: body.secret_key(),
                    });
                }
                (_, Message::ErrorResponse(body)) => keep_error(&mut error, &body)?,
                (_, msg) => self.note(&msg),
            }
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), ClientError> {
        if !self.ready {
            return Err(ClientError::InvalidState(
                "an earlier operation failed or was abandoned midway",
            ));
        }
        frontend::query(sql, &mut self.write_buf).map_err(encode_err)?;
        self.ready = false;
        self.flush().await
    }

    /// Sends `query` and waits for the copy response with type byte `want`.
    async fn start_copy(&mut self, query: &str, want: u8) -> Result<(), ClientError> {
        self.send_query(query).await?;
        loop {
            match self.next().await? {
                (tag, _) if tag == want => return Ok(()),
                (_, Message::ErrorResponse(body)) => {
                    let mut error = None;
                    keep_error(&mut error, &body)?;
                    return self.read_until_ready(error).await;
                }
                (_, msg @ (Message::NoticeResponse(_) | Message::ParameterStatus(_))) => {
                    self.note(&msg)
                }
                (tag, _) => return Err(ClientError::Unexpected(tag)),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    Open,
    /// The server sent `CopyDone`.
    Done,
    /// The server sent `ErrorResponse` and left COPY mode.
    Failed,
}

/// A COPY BOTH stream. Receive with [`recv`](Self::recv), send with
/// [`send`](Self::send) and [`flush`](Self::flush), or [`split`](Self::split)
/// to do both at once. End with [`finish`](Self::finish), which returns the
/// connection to the ready state.
#[derive(Debug)]
pub struct CopyBoth<'a> {
    client: &'a mut Client,
    recv: RecvState,
    send_done: bool,
}

/// A COPY OUT stream: [`recv`](Self::recv) until `None`, then
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct CopyOut<'a>(CopyBoth<'a>);

/// The receiving half of a [`CopyBoth`].
#[derive(Debug)]
pub struct CopyReceiver<'a> {
    stream: tcp::ReadHalf<'a>,
    buf: &'a mut BytesMut,
    max_message_len: usize,
    state: &'a mut RecvState,
}

/// The sending half of a [`CopyBoth`].
#[derive(Debug)]
pub struct CopySender<'a> {
    stream: tcp::WriteHalf<'a>,
    buf: &'a mut BytesMut,
    done: &'a mut bool,
}

impl CopyReceiver<'_> {
    /// The next `CopyData` payload; `None` once the server sent `CopyDone`
    /// (or after it reported an error). Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ClientError> {
        while *self.state == RecvState::Open {
            let frame = read_frame(
                &mut self.stream,
                self.buf,
                self.max_message_len,
                parse_backend,
            )
            .await?;
            match frame.ok_or(ProtocolError::UnexpectedEof)? {
                (_, Message::CopyData(body)) => return Ok(Some(body.into_bytes())),
                (_, Message::CopyDone) => *self.state = RecvState::Done,
                (_, Message::ErrorResponse(body)) => {
                    *self.state = RecvState::Failed;
                    return Err(server_error(body.fields()));
                }
                (_, Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                (tag, _) => return Err(ClientError::Unexpected(tag)),
            }
        }
        Ok(None)
    }
}

impl CopySender<'_> {
    /// Buffers one `CopyData` message; writes the buffer out once it is large.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        if *self.done {
            return Err(ClientError::InvalidState("CopyDone was already sent"));
        }
        frontend::CopyData::new(data)
            .map_err(encode_err)?
            .write(self.buf);
        if self.buf.len() >= WRITE_BUFFER_LIMIT {
            self.stream.write_all_buf(self.buf).await?;
        }
        Ok(())
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all_buf(self.buf).await?;
        Ok(())
    }

    /// Sends `CopyDone`: the client will send no more data.
    pub async fn send_done(&mut self) -> Result<(), ClientError> {
        if !*self.done {
            frontend::copy_done(self.buf);
            *self.done = true;
        }
        self.flush().await
    }
}

impl CopyBoth<'_> {
    /// Borrows a receiving and a sending half, usable concurrently (e.g. in
    /// `tokio::join!` or `select!`).
    pub fn split(&mut self) -> (CopyReceiver<'_>, CopySender<'_>) {
        let client = &mut *self.client;
        let (r, w) = client.stream.split();
        let receiver = CopyReceiver {
            stream: r,
            buf: &mut client.read_buf,
            max_message_len: client.max_message_len,
            state: &mut self.recv,
        };
        (
            receiver,
            CopySender {
                stream: w,
                buf: &mut client.write_buf,
                done: &mut self.send_done,
            },
        )
    }

    /// See [`CopyReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ClientError> {
        self.split().0.recv().await
    }

    /// See [`CopySender::send`].
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.split().1.send(data).await
    }

    /// See [`CopySender::flush`].
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.split().1.flush().await
    }

    /// See [`CopySender::send_done`].
    pub async fn send_done(&mut self) -> Result<(), ClientError> {
        self.split().1.send_done().await
    }

    /// Ends the COPY: sends `CopyDone` if not sent yet, discards data until
    /// the server's `CopyDone`, then reads to `ReadyForQuery` (skipping the
    /// command's results). An error the server reports meanwhile is returned.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        let mut error = None;
        if self.recv != RecvState::Failed {
            let (mut receiver, mut sender) = self.split();
            sender.send_done().await?;
            loop {
                match receiver.recv().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e @ ClientError::Server(_)) => {
                        error = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.client.read_until_ready(error).await
    }
}

impl CopyOut<'_> {
    /// See [`CopyReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ClientError> {
        self.0.recv().await
    }

    /// See [`CopyBoth::finish`].
    pub async fn finish(self) -> Result<(), ClientError> {
        self.0.finish().await
    }
}
