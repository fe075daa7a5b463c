//! Accepting TCP connections for a PostgreSQL-protocol port, at most a
//! fixed number at once: [`Listener`].
//!
//! A connection over the limit is answered with `FATAL 53300 too many
//! connections to this <service>` in a task of its own and closed, so the
//! accept loop never waits on a client that is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{BeMessage, ErrorFields, PostgresBackend};

/// How a connection over the limit is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Read the startup packet first (answering `SSLRequest` with `N`),
    /// then send the error: what a plain-text server does.
    AfterStartup,
    /// Send the error at once, before reading anything: for a server that
    /// would offer TLS, so a client that requires TLS still reads the
    /// reason rather than "server does not support SSL".
    Immediately,
}

/// A connection within the limit; the slot is held until `permit` drops.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// A listening socket with a connection limit.
pub struct Listener {
    listener: TcpListener,
    limit: Arc<Semaphore>,
    /// Named in the refusal: "too many connections to this `service`".
    service: &'static str,
    refusal: Refusal,
    startup_timeout: Duration,
}

impl Listener {
    /// `max_connections` at once (at least one).
    pub fn new(
        listener: TcpListener,
        service: &'static str,
        max_connections: usize,
        refusal: Refusal,
        startup_timeout: Duration,
    ) -> Listener {
        Listener {
            listener,
            limit: Arc::new(Semaphore::new(max_connections.max(1))),
            service,
            refusal,
            startup_timeout,
        }
    }

    /// The next connection within the limit. Connections over the limit are
    /// refused on the way; a failed `accept` (say, out of file descriptors)
    /// is returned after a short pause so that a caller looping on it does
    /// not spin. Cancel-safe.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(e);
                }
            };
            let _ = stream.set_nodelay(true);
            match self.limit.clone().try_acquire_owned() {
                Ok(permit) => {
                    return Ok(Accepted {
                        stream,
                        peer,
                        permit,
                    })
                }
                Err(_) => {
                    let message = format!("too many connections to this {}", self.service);
                    tokio::spawn(refuse(stream, message, self.refusal, self.startup_timeout));
                }
            }
        }
    }
}

async fn refuse(stream: TcpStream, message: String, refusal: Refusal, timeout: Duration) {
    let fields = ErrorFields::fatal("53300", message);
    match refusal {
        Refusal::Immediately => {
            let mut stream = stream;
            let mut out = BytesMut::new();
            if BeMessage::ErrorResponse(&fields).write(&mut out).is_ok() {
                let _ = tokio::time::timeout(timeout, stream.write_all(&out)).await;
            }
        }
        Refusal::AfterStartup => {
            let mut pgb = PostgresBackend::new(stream);
            if let Ok(Ok(_)) = tokio::time::timeout(timeout, pgb.read_startup()).await {
                let _ = pgb.write_message(&BeMessage::ErrorResponse(&fields)).await;
                let _ = tokio::time::timeout(timeout, pgb.flush()).await;
            }
        }
    }
}
