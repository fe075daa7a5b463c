//! The pool of compute connections behind `POST /sql`.
//!
//! Connections are kept per [`PoolKey`]: the routing target, role,
//! database, options and a digest of the password, so a connection is
//! only ever reused with the password it was opened with. A connection
//! goes back to the pool only when its last request left it idle outside
//! a transaction; it is reset (`DISCARD ALL`, pipelined with the next
//! statement) before it is used again. Before reuse, a connection whose
//! compute closed it (the compute was suspended) is dropped.
//!
//! Limits: at most `pool_max_connections` connections, busy or idle, over
//! all keys (when none is free, the oldest idle one of another key is
//! closed, else the request waits); idle ones are closed after
//! `pool_idle_timeout_seconds`. Pooled sessions carry application_name
//! [`compute_api::spec::SERVERLESS_APPLICATION_NAME`], which the compute's
//! activity monitor does not count while they are idle: a warm pool does
//! not keep a compute from suspending.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pq_proto::Client;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::routing::Target;
use crate::serverless::Serverless;

/// Which connections may serve a request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub target: Target,
    pub user: String,
    pub database: String,
    /// The `options` passed on to the compute.
    pub options: Option<String>,
    /// SHA-256 of the password.
    pub password_digest: [u8; 32],
}

impl PoolKey {
    pub fn new(
        target: Target,
        user: &str,
        database: &str,
        options: Option<String>,
        password: &str,
    ) -> PoolKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
        let mut password_digest = [0u8; 32];
        password_digest.copy_from_slice(digest.as_ref());
        PoolKey {
            target,
            user: user.to_owned(),
            database: database.to_owned(),
            options,
            password_digest,
        }
    }
}

/// Without the password digest.
impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as {} on {}", self.target, self.user, self.database)
    }
}

/// A compute connection taken from the pool (or opened for it), with its
/// place among the pool's connections.
pub struct PooledClient {
    pub client: Client,
    /// Where the compute listens (for a cancel request).
    pub address: SocketAddr,
    /// Whether an earlier request used it: the session is then reset first.
    pub reused: bool,
    slot: OwnedSemaphorePermit,
}

struct Idle {
    client: Client,
    address: SocketAddr,
    slot: OwnedSemaphorePermit,
    since: Instant,
}

/// The pool's metrics, on the proxy's `/metrics`.
pub struct PoolMetrics {
    pub opened: IntCounter,
    pub reused: IntCounter,
    pub idle: IntGauge,
}

impl PoolMetrics {
    fn new() -> PoolMetrics {
        PoolMetrics {
            opened: IntCounter::new(
                "proxy_serverless_pool_opened_total",
                "Compute connections the serverless pool opened",
            )
            .expect("valid metric"),
            reused: IntCounter::new(
                "proxy_serverless_pool_reused_total",
                "Requests served on a pooled compute connection",
            )
            .expect("valid metric"),
            idle: IntGauge::new(
                "proxy_serverless_pool_idle",
                "Idle compute connections in the serverless pool",
            )
            .expect("valid metric"),
        }
    }

    pub fn register(&self, registry: &Registry) -> anyhow::Result<()> {
        registry.register(Box::new(self.opened.clone()))?;
        registry.register(Box::new(self.reused.clone()))?;
        registry.register(Box::new(self.idle.clone()))?;
        Ok(())
    }
}

/// No connection slot came free in time.
#[derive(Debug, thiserror::Error)]
#[error("all {0} pooled compute connections are busy; try again later")]
pub struct PoolExhausted(pub usize);

pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    idle_timeout: Duration,
    pub metrics: PoolMetrics,
}

impl Pool {
    pub fn new(max_connections: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            idle_timeout,
            metrics: PoolMetrics::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection for `key` that is still
    /// open; closed or expired ones met on the way are dropped.
    pub fn take(&self, key: &PoolKey) -> Option<PooledClient> {
        let mut idle = self.lock();
        let connections = idle.get_mut(key)?;
        let mut found = None;
        while let Some(candidate) = connections.pop() {
            self.metrics.idle.dec();
            if candidate.since.elapsed() < self.idle_timeout && !candidate.client.is_closed() {
                found = Some(candidate);
                break;
            }
            debug!(?key, "dropping a pooled connection the compute closed");
        }
        if connections.is_empty() {
            idle.remove(key);
        }
        let found = found?;
        self.metrics.reused.inc();
        Some(PooledClient {
            client: found.client,
            address: found.address,
            reused: true,
            slot: found.slot,
        })
    }

    /// A slot for a new connection: a free one, else one of the oldest
    /// idle connection (closed for it), else the first to come free
    /// within `wait`.
    pub async fn slot(&self, wait: Duration) -> Result<OwnedSemaphorePermit, PoolExhausted> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        if let Some(slot) = self.evict_oldest() {
            return Ok(slot);
        }
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(PoolExhausted(self.max_connections)),
        }
    }

    fn evict_oldest(&self) -> Option<OwnedSemaphorePermit> {
        let mut idle = self.lock();
        let key = idle
            .iter()
            .filter_map(|(key, list)| list.first().map(|oldest| (key, oldest.since)))
            .min_by_key(|(_, since)| *since)
            .map(|(key, _)| key.clone())?;
        let list = idle.get_mut(&key)?;
        let oldest = list.remove(0);
        if list.is_empty() {
            idle.remove(&key);
        }
        self.metrics.idle.dec();
        debug!(?key, "closing an idle pooled connection to make room");
        Some(oldest.slot)
    }

    /// A connection opened in `slot`, not yet used.
    pub fn opened(
        &self,
        client: Client,
        address: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) -> PooledClient {
        self.metrics.opened.inc();
        PooledClient {
            client,
            address,
            reused: false,
            slot,
        }
    }

    /// Takes a connection back after a request: kept if it is idle outside
    /// a transaction, else closed.
    pub fn put(&self, key: PoolKey, connection: PooledClient) {
        if !connection.client.is_idle() {
            debug!(
                ?key,
                "closing a compute connection left busy or in a transaction"
            );
            return;
        }
        self.metrics.idle.inc();
        self.lock().entry(key).or_default().push(Idle {
            client: connection.client,
            address: connection.address,
            slot: connection.slot,
            since: Instant::now(),
        });
    }

    /// Takes out the idle connections past the idle timeout, or closed by
    /// their compute.
    fn expired(&self) -> Vec<Client> {
        let mut idle = self.lock();
        let mut expired = Vec::new();
        idle.retain(|_, list| {
            let (keep, old): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                .into_iter()
                .partition(|c| c.since.elapsed() < self.idle_timeout && !c.client.is_closed());
            expired.extend(old.into_iter().map(|c| c.client));
            *list = keep;
            !list.is_empty()
        });
        self.metrics.idle.sub(expired.len() as i64);
        expired
    }
}

/// Closes idle connections past their timeout, politely (`Terminate`), a
/// few times per idle timeout, until `cancel`.
pub async fn close_idle_connections(state: Arc<Serverless>, cancel: CancellationToken) {
    let every =
        (state.pool.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for client in state.pool.expired() {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
        }
    }
}
