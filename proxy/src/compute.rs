//! Reaching a client's compute: wake it through the control plane, resolve
//! the address it answers with, and connect. Both entry points (the
//! PostgreSQL port and the serverless listener) come through here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::warn;

use crate::control_plane_client::{ControlPlane, WakeError};
use crate::metrics::Metrics;
use crate::routing::Target;

/// A TCP connection to a woken compute.
pub struct ComputeConnection {
    pub stream: TcpStream,
    pub address: SocketAddr,
    /// The endpoint the control plane woke for the target.
    pub endpoint: String,
}

/// Why a compute could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No such endpoint or branch.
    #[error("{0}")]
    NotFound(String),
    /// The control plane could not wake the compute.
    #[error("{0}")]
    WakeFailed(String),
    /// The compute was woken but could not be reached.
    #[error("{0}")]
    Unreachable(String),
}

impl ConnectError {
    /// The SQLSTATE a client is told.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ConnectError::NotFound(_) => "3D000",
            ConnectError::WakeFailed(_) => "57P03",
            ConnectError::Unreachable(_) => "08006",
        }
    }
}

/// Wake the compute of `target` and connect to it within `connect_timeout`
/// (the wake has the control plane client's own timeout).
pub async fn connect(
    control_plane: &ControlPlane,
    metrics: &Metrics,
    connect_timeout: Duration,
    target: &Target,
) -> Result<ComputeConnection, ConnectError> {
    let started = Instant::now();
    let woken = control_plane.wake(target).await;
    metrics
        .wake_seconds
        .observe(started.elapsed().as_secs_f64());
    let woken = woken.map_err(|e| match e {
        WakeError::NotFound(message) => ConnectError::NotFound(message),
        WakeError::Failed(_) | WakeError::Unavailable(_) => {
            metrics.wake_failures.inc();
            warn!(%target, "waking the compute failed: {e}");
            ConnectError::WakeFailed(format!("{}: {e}", describe(target)))
        }
    })?;
    let address: SocketAddr = tokio::net::lookup_host(&woken.address)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            ConnectError::Unreachable(format!(
                "the control plane gave an unusable address {:?}",
                woken.address
            ))
        })?;
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| {
            ConnectError::Unreachable(format!("connecting to the compute at {address} timed out"))
        })?
        .map_err(|e| {
            ConnectError::Unreachable(format!("connecting to the compute at {address}: {e}"))
        })?;
    pq_proto::listener::configure_socket(&stream);
    Ok(ComputeConnection {
        stream,
        address,
        endpoint: woken.endpoint,
    })
}

fn describe(target: &Target) -> String {
    match target {
        Target::Default => "the default branch".to_owned(),
        other => other.to_string(),
    }
}
