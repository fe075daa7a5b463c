//! A PostgreSQL-protocol server for the simple-query daemons (the page
//! service, the safekeepers' WAL service): [`serve`] runs the accept loop,
//! and for each connection the startup phase, the query loop, error
//! replies and cancellation. What a query means is up to a
//! [`QueryHandler`].
//!
//! A connection goes through:
//!
//! 1. the startup packet (`SSLRequest` and `GSSENCRequest` are answered
//!    `N`); a `CancelRequest` cancels the running query of the connection
//!    whose key it quotes;
//! 2. [`QueryHandler::startup`] on the startup parameters, then
//!    [`QueryHandler::authenticate`] (the hook where authentication
//!    belongs); a refusal is sent as `FATAL` and closes the connection.
//!    Steps 1 and 2 are the startup phase: it must end within
//!    [`ServerConfig::startup_timeout`] of the accept, and at most
//!    [`ServerConfig::max_pending_connections`] connections are in it at
//!    once (beyond, the oldest is closed; see [`crate::listener`]). A
//!    connection that times out or is evicted is closed without a word, as
//!    PostgreSQL does at its `authentication_timeout`;
//! 3. a session slot ([`ServerConfig::max_connections`]; beyond, `FATAL
//!    53300`), then `AuthenticationOk`, the parameters of
//!    [`ServerConfig::parameters`], `BackendKeyData` and `ReadyForQuery`;
//! 4. the query loop: each simple `Query` goes to [`QueryHandler::query`].
//!    A failed query is answered with its error and `ReadyForQuery` and the
//!    session goes on (`FATAL` errors end it); a query cancelled by a
//!    `CancelRequest` fails with `57014`. A session that sends nothing for
//!    [`ServerConfig::idle_timeout`] between queries is closed with `FATAL
//!    57P05`. A handler may take the connection over (COPY streams that
//!    read and write at once): the connection ends when the stream does,
//!    and the idle timeout no longer applies (a pagestream or replication
//!    stream may be quiet for long; TCP keepalives notice a peer that
//!    vanished). Other messages than `Query` and `Terminate` are refused
//!    with an error.
//!
//! Shutdown (the `cancel` token of [`serve`]) stops accepting and ends every
//! connection at its next message, and every stream that watches it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::listener::{Listener, ListenerConfig, Pending};
use crate::{
    BeMessage, CancelKey, ErrorFields, FeMessage, PostgresBackend, ProtocolError, StartupParams,
    StartupRequest, TransactionStatus,
};

/// A query's failure, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The SQLSTATE.
    pub code: &'static str,
    pub message: String,
    /// `FATAL`: the connection is closed after the error.
    pub fatal: bool,
}

impl QueryError {
    /// An `ERROR`: the query fails, the session goes on.
    pub fn error(code: &'static str, message: impl Into<String>) -> QueryError {
        QueryError {
            code,
            message: message.into(),
            fatal: false,
        }
    }

    /// A `FATAL` error: the connection is closed.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> QueryError {
        QueryError {
            code,
            message: message.into(),
            fatal: true,
        }
    }

    fn fields(&self) -> ErrorFields {
        if self.fatal {
            ErrorFields::fatal(self.code, &self.message)
        } else {
            ErrorFields::error(self.code, &self.message)
        }
    }
}

/// Any other error is an internal error (`XX000`) of the query, reported
/// with its whole chain of causes.
impl From<anyhow::Error> for QueryError {
    fn from(e: anyhow::Error) -> QueryError {
        QueryError::error("XX000", format!("{e:#}"))
    }
}

impl From<ProtocolError> for QueryError {
    fn from(e: ProtocolError) -> QueryError {
        QueryError::fatal(e.sqlstate(), e.to_string())
    }
}

/// The SQLSTATE-coded error for a refused token: no valid token is
/// `FATAL 28P01` (invalid_password), a valid one that does not open what
/// was asked is `ERROR 42501` (insufficient_privilege).
pub fn auth_refusal(err: auth::AuthError) -> QueryError {
    if err.is_forbidden() {
        QueryError::error("42501", err.to_string())
    } else {
        QueryError::fatal("28P01", err.to_string())
    }
}

/// The largest password message read: a token is well under this.
const MAX_PASSWORD_LEN: usize = 16 * 1024;

/// Asks the client for a token as its password (cleartext: use TLS or a
/// trusted network) and verifies it: the token's claims, or a `FATAL`
/// refusal.
pub async fn authenticate_with_token<S>(
    pgb: &mut PostgresBackend<S>,
    verifier: &auth::JwtVerifier,
) -> Result<auth::Claims, QueryError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pgb.write_message(&BeMessage::AuthenticationCleartextPassword)
        .await?;
    pgb.flush().await?;
    pgb.set_max_message_len(MAX_PASSWORD_LEN);
    let message = pgb.read_message().await;
    pgb.set_max_message_len(crate::DEFAULT_MAX_MESSAGE_LEN);
    let password = match message? {
        Some(FeMessage::PasswordMessage(raw)) => raw,
        None => {
            return Err(QueryError::fatal(
                "08006",
                "the client left before authenticating",
            ))
        }
        Some(other) => {
            return Err(QueryError::fatal(
                "08P01",
                format!("expected a password message, got {other:?}"),
            ))
        }
    };
    let password = password.strip_suffix(b"\0").unwrap_or(&password);
    let token = std::str::from_utf8(password)
        .map_err(|_| auth_refusal(auth::AuthError::Invalid("the password is not UTF-8".into())))?;
    if token.is_empty() {
        return Err(auth_refusal(auth::AuthError::Missing(
            "send the token as the password",
        )));
    }
    verifier.verify(token).map_err(auth_refusal)
}

/// A stream that owns the connection until it ends; it should stop when
/// the token fires (shutdown, or a `CancelRequest` for this connection).
pub type Stream<S> = Box<
    dyn FnOnce(
            PostgresBackend<S>,
            CancellationToken,
        ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;

/// What a handler did with a query.
pub enum QueryOutcome<S> {
    /// The query is answered (up to, not including, `ReadyForQuery`).
    Done,
    /// The handler takes the connection over.
    TakeOver(Stream<S>),
}

impl<S> QueryOutcome<S> {
    /// Take the connection over with `stream`.
    pub fn take_over<F, Fut>(stream: F) -> QueryOutcome<S>
    where
        F: FnOnce(PostgresBackend<S>, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        QueryOutcome::TakeOver(Box::new(move |pgb, cancel| Box::pin(stream(pgb, cancel))))
    }
}

/// What a daemon's queries mean.
pub trait QueryHandler<S>: Send + Sync + 'static {
    /// What the daemon keeps of a connection (its startup parameters, say).
    type Session: Send;

    /// Accept or refuse the startup parameters.
    fn startup(&self, params: &StartupParams) -> Result<Self::Session, QueryError>;

    /// Authenticate the client (an exchange over `pgb` if needed) before
    /// `AuthenticationOk`; by default everyone is let in.
    fn authenticate(
        &self,
        _session: &mut Self::Session,
        _pgb: &mut PostgresBackend<S>,
    ) -> impl Future<Output = Result<(), QueryError>> + Send {
        async { Ok(()) }
    }

    /// Answer one simple query.
    fn query(
        &self,
        session: &mut Self::Session,
        pgb: &mut PostgresBackend<S>,
        query: &str,
    ) -> impl Future<Output = Result<QueryOutcome<S>, QueryError>> + Send;
}

/// Connections in their startup phase at once, by default.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 100;
/// Time to start up and authenticate, by default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Silence between queries before a session is closed, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of a [`serve`]d port.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Names the daemon in errors: "too many connections to this pageserver".
    pub service: &'static str,
    /// Established sessions at once.
    pub max_connections: usize,
    /// Connections in their startup phase at once; beyond, the oldest is
    /// closed.
    pub max_pending_connections: usize,
    /// A connection must send its startup packet and authenticate within
    /// this time of its accept (as PostgreSQL's `authentication_timeout`),
    /// or it is closed.
    pub startup_timeout: Duration,
    /// A session silent this long between queries is closed (`None`:
    /// never). Streams a handler took over are not timed.
    pub idle_timeout: Option<Duration>,
    /// `ParameterStatus` sent after authentication.
    pub parameters: Vec<(&'static str, &'static str)>,
}

impl ServerConfig {
    /// The defaults: 100 connections starting up at once, 30 s to start
    /// up, 10 minutes of silence between queries, the parameters a client
    /// library expects from a PostgreSQL 15 server.
    pub fn new(service: &'static str, max_connections: usize) -> ServerConfig {
        ServerConfig {
            service,
            max_connections,
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            parameters: vec![
                ("server_version", "15.0"),
                ("server_encoding", "UTF8"),
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO"),
                ("integer_datetimes", "on"),
            ],
        }
    }
}

impl ServerConfig {
    /// These limits, from a daemon's settings: `startup_timeout_seconds`
    /// must be positive, `idle_timeout_seconds` 0 means never.
    pub fn with_limits(
        mut self,
        max_pending_connections: usize,
        startup_timeout_seconds: f64,
        idle_timeout_seconds: f64,
    ) -> anyhow::Result<ServerConfig> {
        anyhow::ensure!(
            max_pending_connections >= 1,
            "max_unauthenticated_connections must be at least 1"
        );
        self.max_pending_connections = max_pending_connections;
        self.startup_timeout = Duration::try_from_secs_f64(startup_timeout_seconds)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "startup_timeout_seconds must be a positive number of seconds, not {startup_timeout_seconds}"
                )
            })?;
        let idle = Duration::try_from_secs_f64(idle_timeout_seconds).map_err(|_| {
            anyhow::anyhow!(
                "idle_timeout_seconds must be a number of seconds (0: never), not {idle_timeout_seconds}"
            )
        })?;
        self.idle_timeout = (!idle.is_zero()).then_some(idle);
        Ok(self)
    }
}

/// The running query's cancellation token of every connection, by key.
#[derive(Default)]
struct CancelRegistry {
    running: Mutex<HashMap<CancelKey, CancellationToken>>,
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, CancellationToken>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A key not in use, for a new connection.
    fn register(&self, token: CancellationToken) -> CancelKey {
        let mut running = self.lock();
        loop {
            let key = CancelKey {
                process_id: rand::random::<i32>() & i32::MAX,
                secret_key: rand::random(),
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(key) {
                slot.insert(token);
                return key;
            }
        }
    }

    fn set(&self, key: CancelKey, token: CancellationToken) {
        self.lock().insert(key, token);
    }

    fn remove(&self, key: CancelKey) {
        self.lock().remove(&key);
    }

    /// Cancel what the connection with `key` runs; an unknown key is
    /// ignored, as PostgreSQL does.
    fn cancel(&self, key: CancelKey) {
        match self.lock().get(&key) {
            Some(token) => {
                info!(process_id = key.process_id, "cancel request");
                token.cancel();
            }
            None => debug!("cancel request with an unknown key"),
        }
    }
}

/// Serve `listener` with `handler` until `cancel` fires.
pub async fn serve<H>(
    listener: tokio::net::TcpListener,
    handler: Arc<H>,
    config: ServerConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()>
where
    H: QueryHandler<tokio::net::TcpStream>,
{
    let listener = Listener::new(
        listener,
        ListenerConfig {
            service: config.service,
            max_connections: config.max_connections,
            max_pending: config.max_pending_connections,
            startup_timeout: config.startup_timeout,
        },
    );
    let server = Arc::new(Server {
        handler,
        config,
        registry: CancelRegistry::default(),
    });
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!("accepting a connection: {e}");
                    continue;
                }
            },
        };
        let (server, cancel) = (server.clone(), cancel.clone());
        let span = info_span!("connection", service = server.config.service, peer = %accepted.peer);
        tokio::spawn(
            async move {
                let pgb = PostgresBackend::new(accepted.stream);
                if let Err(e) = server.connection(pgb, accepted.pending, cancel).await {
                    // Evictions can come at any rate: the listener logs
                    // them in sum. (Timeouts come at most max_pending per
                    // startup timeout.)
                    let evicted = e.downcast_ref::<crate::listener::StartupAborted>()
                        == Some(&crate::listener::StartupAborted::Evicted);
                    if evicted {
                        debug!("connection ended: {e:#}");
                    } else {
                        info!("connection ended: {e:#}");
                    }
                }
            }
            .instrument(span),
        );
    }
}

struct Server<H> {
    handler: Arc<H>,
    config: ServerConfig,
    registry: CancelRegistry,
}

impl<H> Server<H> {
    async fn connection<S>(
        &self,
        mut pgb: PostgresBackend<S>,
        pending: Pending,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>
    where
        H: QueryHandler<S>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The startup phase, errors included, within the startup deadline:
        // a client that does not read its error cannot hold the slot.
        let started = pending.startup(self.start_session(&mut pgb)).await;
        let mut session = match started {
            Err(aborted) => return Err(aborted.into()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(session))) => session,
        };
        let _slot = match pending.establish() {
            Ok(slot) => slot,
            Err(refused) => {
                let error = QueryError::fatal(
                    crate::listener::TooManyConnections::SQLSTATE,
                    refused.to_string(),
                );
                let sent = send_error(&mut pgb, &error);
                let _ = tokio::time::timeout(self.config.startup_timeout, sent).await;
                return Err(refused.into());
            }
        };
        pgb.write_message(&BeMessage::AuthenticationOk).await?;
        for &(name, value) in &self.config.parameters {
            pgb.write_message(&BeMessage::ParameterStatus { name, value })
                .await?;
        }
        let key = self.registry.register(shutdown.child_token());
        let result = self.query_loop(&mut session, pgb, key, &shutdown).await;
        self.registry.remove(key);
        result
    }

    /// The startup packet, then the handler's startup and authentication:
    /// the session, or `None` for a cancel request. Refusals are sent.
    async fn start_session<S>(
        &self,
        pgb: &mut PostgresBackend<S>,
    ) -> anyhow::Result<Option<H::Session>>
    where
        H: QueryHandler<S>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let params = match pgb.read_startup().await {
            Ok(StartupRequest::Startup(params)) => params,
            Ok(StartupRequest::Cancel(key)) => {
                self.registry.cancel(key);
                return Ok(None);
            }
            Err(e) => {
                let error = QueryError::fatal(e.sqlstate(), format!("invalid startup packet: {e}"));
                let _ = send_error(pgb, &error).await;
                return Err(anyhow::Error::new(e).context("reading the startup packet"));
            }
        };
        match self.authenticate(pgb, &params).await {
            Ok(session) => Ok(Some(session)),
            Err(error) => {
                let _ = send_error(pgb, &error).await;
                anyhow::bail!("refused: {}", error.message);
            }
        }
    }

    async fn authenticate<S>(
        &self,
        pgb: &mut PostgresBackend<S>,
        params: &StartupParams,
    ) -> Result<H::Session, QueryError>
    where
        H: QueryHandler<S>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut session = self.handler.startup(params)?;
        self.handler.authenticate(&mut session, pgb).await?;
        Ok(session)
    }

    async fn query_loop<S>(
        &self,
        session: &mut H::Session,
        mut pgb: PostgresBackend<S>,
        key: CancelKey,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()>
    where
        H: QueryHandler<S>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        pgb.write_message(&BeMessage::BackendKeyData(key)).await?;
        loop {
            pgb.write_message(&BeMessage::ReadyForQuery(TransactionStatus::Idle))
                .await?;
            pgb.flush().await?;
            let message = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = read_within(&mut pgb, self.config.idle_timeout) => m,
            };
            let message = match message {
                Some(m) => m?,
                None => {
                    let error = QueryError::fatal(
                        "57P05",
                        "terminating connection due to idle-session timeout",
                    );
                    let sent = send_error(&mut pgb, &error);
                    let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
                    anyhow::bail!(
                        "closed after {:?} without a query (the idle timeout)",
                        self.config.idle_timeout.unwrap_or_default()
                    );
                }
            };
            let query = match message {
                None | Some(FeMessage::Terminate) => return Ok(()),
                Some(FeMessage::Query(query)) => query,
                Some(other) => {
                    let error = QueryError::error(
                        "08P01",
                        format!("unexpected message {other:?}: only simple queries are accepted"),
                    );
                    pgb.write_message(&BeMessage::ErrorResponse(&error.fields()))
                        .await?;
                    continue;
                }
            };
            // A fresh token per query: a cancel request cancels the query
            // running when it arrives, not a later one.
            let running = shutdown.child_token();
            self.registry.set(key, running.clone());
            let outcome = tokio::select! {
                outcome = self.handler.query(session, &mut pgb, &query) => outcome,
                _ = running.cancelled() => Err(if shutdown.is_cancelled() {
                    QueryError::fatal("57P01", "terminating connection: the server is shutting down")
                } else {
                    QueryError::error("57014", "canceling statement due to user request")
                }),
            };
            match outcome {
                Ok(QueryOutcome::Done) => {}
                Ok(QueryOutcome::TakeOver(stream)) => return stream(pgb, running).await,
                Err(error) => {
                    debug!(query, "query failed: {}", error.message);
                    pgb.write_message(&BeMessage::ErrorResponse(&error.fields()))
                        .await?;
                    if error.fatal {
                        pgb.flush().await?;
                        anyhow::bail!("{}", error.message);
                    }
                }
            }
        }
    }
}

/// The next message, or `None` if none came within `timeout`.
async fn read_within<S: AsyncRead + Unpin>(
    pgb: &mut PostgresBackend<S>,
    timeout: Option<Duration>,
) -> Option<Result<Option<FeMessage>, ProtocolError>> {
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, pgb.read_message()).await.ok(),
        None => Some(pgb.read_message().await),
    }
}

async fn send_error<S: AsyncWrite + Unpin>(
    pgb: &mut PostgresBackend<S>,
    error: &QueryError,
) -> Result<(), ProtocolError> {
    pgb.write_message(&BeMessage::ErrorResponse(&error.fields()))
        .await?;
    pgb.flush().await
}
