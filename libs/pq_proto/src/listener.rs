//! Accepting TCP connections for a PostgreSQL-protocol port: [`Listener`].
//!
//! A connection goes through two budgets:
//!
//! * While it starts up (startup packet, TLS, authentication) it is
//!   *pending*: at most [`ListenerConfig::max_pending`] at once, each with
//!   [`ListenerConfig::startup_timeout`] from its accept to finish
//!   ([`Pending::startup`]). When the pending budget is full, the oldest
//!   pending connection is closed to make room for the new one: sockets
//!   that connect and say nothing cannot keep a real client out, unless they
//!   are opened faster than that client completes its startup, and each of
//!   them lives at most the startup timeout.
//! * Once started up, it trades its pending slot for one of
//!   [`ListenerConfig::max_connections`] sessions ([`Pending::establish`]);
//!   over the limit, it is refused with `FATAL 53300 too many connections to
//!   this <service>`. Pending connections never hold session slots, so an
//!   idle flood cannot exhaust them.
//!
//! At most `max_pending + max_connections` sockets are open at once. Every
//! accepted socket gets TCP keepalives (first probe after 30 s of silence,
//! then every 10 s, 3 unanswered probes close it), so a peer that vanished
//! is noticed even on a stream that is legitimately quiet (an idle
//! pagestream connection, a replication stream).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// TCP keepalive on accepted sockets: idle time before the first probe.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// TCP keepalive: time between probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive: unanswered probes before the connection is dropped.
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// Pending-connection evictions are logged at most this often.
const EVICTION_REPORT: Duration = Duration::from_secs(10);

/// The budgets of a [`Listener`].
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Named in refusals: "too many connections to this `service`".
    pub service: &'static str,
    /// Established sessions at once (at least one).
    pub max_connections: usize,
    /// Connections still starting up at once (at least one); beyond, the
    /// oldest is closed.
    pub max_pending: usize,
    /// Time from accept to the end of the startup phase.
    pub startup_timeout: Duration,
}

/// A connection just accepted, still starting up.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub pending: Pending,
}

/// Why a startup phase was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartupAborted {
    #[error("the startup phase did not finish within the startup timeout of {0:?}")]
    TimedOut(Duration),
    #[error("closed to make room for newer connections: too many connections were starting up")]
    Evicted,
}

/// The session budget is full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many connections to this {service}")]
pub struct TooManyConnections {
    pub service: &'static str,
}

impl TooManyConnections {
    /// The SQLSTATE of the refusal (`too_many_connections`).
    pub const SQLSTATE: &'static str = "53300";
}

struct Shared {
    config: ListenerConfig,
    sessions: Arc<Semaphore>,
    /// Pending connections by age (ids increase): their eviction tokens.
    pending: Mutex<BTreeMap<u64, CancellationToken>>,
    next_id: AtomicU64,
    /// Evictions not yet logged, and when they were last logged.
    evictions: Mutex<(u64, Option<Instant>)>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report_eviction(&self) {
        let mut evictions = self.evictions.lock().unwrap_or_else(|p| p.into_inner());
        evictions.0 += 1;
        let now = Instant::now();
        if evictions.1.is_none_or(|at| now - at >= EVICTION_REPORT) {
            warn!(
                "{} pending connection(s) closed to make room: more than {} connections to this {} were starting up at once",
                evictions.0, self.config.max_pending, self.config.service
            );
            *evictions = (0, Some(now));
        }
    }
}

/// A connection in its startup phase; it leaves the pending budget when
/// dropped or established.
pub struct Pending {
    id: u64,
    deadline: Instant,
    evicted: CancellationToken,
    shared: Arc<Shared>,
}

impl Pending {
    /// Runs (part of) the startup phase: `work`'s output, unless the
    /// startup deadline passes or the connection is evicted first. Several
    /// calls share the one deadline, counted from the accept.
    pub async fn startup<T>(&self, work: impl Future<Output = T>) -> Result<T, StartupAborted> {
        tokio::select! {
            biased;
            () = self.evicted.cancelled() => Err(StartupAborted::Evicted),
            result = tokio::time::timeout_at(self.deadline, work) => {
                result.map_err(|_| StartupAborted::TimedOut(self.shared.config.startup_timeout))
            }
        }
    }

    /// Whether this connection was evicted (its startup work may have
    /// finished in the same instant).
    pub fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }

    /// The startup phase is over: take a session slot, held until the
    /// returned permit drops.
    pub fn establish(self) -> Result<OwnedSemaphorePermit, TooManyConnections> {
        self.shared
            .sessions
            .clone()
            .try_acquire_owned()
            .map_err(|_| TooManyConnections {
                service: self.shared.config.service,
            })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.id);
    }
}

/// A listening socket with the two budgets of the module doc.
pub struct Listener {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Listener {
    pub fn new(listener: TcpListener, mut config: ListenerConfig) -> Listener {
        config.max_connections = config.max_connections.max(1);
        config.max_pending = config.max_pending.max(1);
        Listener {
            listener,
            shared: Arc::new(Shared {
                sessions: Arc::new(Semaphore::new(config.max_connections)),
                config,
                pending: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
                evictions: Mutex::new((0, None)),
            }),
        }
    }

    /// The address listened on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, pending. A failed `accept` (say, out of file
    /// descriptors) is returned after a short pause so that a caller looping
    /// on it does not spin. Cancel-safe.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        let (stream, peer) = match self.listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(e);
            }
        };
        configure_socket(&stream);
        let evicted = CancellationToken::new();
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut evictions = 0;
        {
            let mut pending = self.shared.pending();
            while pending.len() >= self.shared.config.max_pending {
                let Some((_, oldest)) = pending.pop_first() else {
                    break;
                };
                oldest.cancel();
                evictions += 1;
            }
            pending.insert(id, evicted.clone());
        }
        for _ in 0..evictions {
            self.shared.report_eviction();
        }
        Ok(Accepted {
            stream,
            peer,
            pending: Pending {
                id,
                deadline: Instant::now() + self.shared.config.startup_timeout,
                evicted,
                shared: self.shared.clone(),
            },
        })
    }
}

/// No Nagle delay for small request/response exchanges; TCP keepalives
/// (see the module doc). Done on every accepted socket; for a client's own
/// sockets (the proxy's connections to computes).
pub fn configure_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        warn!("enabling TCP keepalives on an accepted connection: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener(max_connections: usize, max_pending: usize, timeout: Duration) -> Listener {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Listener::new(
            tcp,
            ListenerConfig {
                service: "test",
                max_connections,
                max_pending,
                startup_timeout: timeout,
            },
        )
    }

    #[tokio::test]
    async fn accepted_sockets_have_keepalives() {
        let listener = listener(4, 4, Duration::from_secs(30)).await;
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&accepted.stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            TCP_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().unwrap(),
            TCP_KEEPALIVE_RETRIES
        );
        assert!(accepted.stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_full_pending_budget_evicts_the_oldest() {
        let listener = listener(4, 2, Duration::from_secs(30)).await;
        let addr = listener.local_addr().unwrap();
        let mut accepted = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            accepted.push(listener.accept().await.unwrap());
        }
        assert!(accepted[0].pending.is_evicted());
        assert!(!accepted[1].pending.is_evicted());
        assert!(!accepted[2].pending.is_evicted());
        let never = std::future::pending::<()>();
        assert_eq!(
            accepted[0].pending.startup(never).await,
            Err(StartupAborted::Evicted)
        );
        // The newest finishes its startup; an established session leaves
        // the pending budget, so the next accept evicts nobody.
        let newest = accepted.pop().unwrap();
        assert_eq!(newest.pending.startup(async { 7 }).await, Ok(7));
        let _session = newest.pending.establish().unwrap();
        clients.push(TcpStream::connect(addr).await.unwrap());
        let another = listener.accept().await.unwrap();
        assert!(!accepted[1].pending.is_evicted());
        assert!(!another.pending.is_evicted());
    }

    async fn connect(listener: &Listener) -> (TcpStream, Accepted) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (client, listener.accept().await.unwrap())
    }

    #[tokio::test]
    async fn sessions_are_capped_apart_from_pending_connections() {
        let listener = listener(1, 8, Duration::from_secs(30)).await;
        // Pending connections hold no session slot.
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(connect(&listener).await);
        }
        let first = connect(&listener).await.1.pending.establish().unwrap();
        let refused = connect(&listener).await.1.pending.establish().unwrap_err();
        assert_eq!(refused.to_string(), "too many connections to this test");
        drop(first);
        let _again = connect(&listener).await.1.pending.establish().unwrap();
        assert!(idle.iter().all(|(_, a)| !a.pending.is_evicted()));
    }

    #[tokio::test]
    async fn the_startup_deadline_counts_from_the_accept() {
        let listener = listener(4, 4, Duration::from_secs(1)).await;
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = listener.accept().await.unwrap();
        let first = accepted
            .pending
            .startup(tokio::time::sleep(Duration::from_millis(600)))
            .await;
        assert_eq!(first, Ok(()));
        let second = accepted
            .pending
            .startup(tokio::time::sleep(Duration::from_millis(600)))
            .await;
        assert_eq!(
            second,
            Err(StartupAborted::TimedOut(Duration::from_secs(1)))
        );
    }
}
