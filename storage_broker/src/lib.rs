//! The storage broker: a pub/sub through which safekeepers publish the state
//! of each timeline and pageservers learn which safekeeper to follow.
//!
//! * The daemon ([`run`]) serves the gRPC service `storage_broker.BrokerService`
//!   (`proto/broker.proto`), the standard gRPC health service, and the
//!   management API (`/v1/status`, `/metrics`) on one listen address: gRPC
//!   requests are told apart by their content type and need HTTP/2; the
//!   management API answers HTTP/1 and HTTP/2.
//! * The client ([`BrokerClient`]) is what safekeepers and pageservers use;
//!   it speaks in [`SafekeeperTimelineInfo`], built from the workspace's id
//!   and LSN types, so that they need not depend on tonic or prost.
//!
//! The broker keeps nothing: a subscriber receives what is published after
//! it subscribed. Safekeepers republish each active timeline about once a
//! second, so a subscriber that loses messages (a slow reader) or
//! reconnects is up to date again a second later.

use std::sync::Arc;

use auth::Access;
use axum::Router;
use daemon_utils::{bind_listener, CancellationToken, HttpServer, RouteRequest, ServiceInfo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

mod client;
mod info;
mod server;

/// The protobuf messages and the generated gRPC client and server.
pub mod proto {
    tonic::include_proto!("storage_broker");
}

pub use client::{BrokerClient, BrokerError, Code, InfoStream, DEFAULT_CONNECT_TIMEOUT};
pub use info::{InvalidMessage, SafekeeperTimelineInfo};

pub const SERVICE: ServiceInfo = daemon_utils::service_info!("storage_broker");

/// The largest channel buffer accepted, in messages.
const MAX_BUFFER: usize = 1 << 24;
/// The most bytes one ring may hold at its limits (buffer × message size).
const MAX_RING_BYTES: usize = 1 << 30;
/// The message size limit, by default: a real message (two ids, eight
/// numbers, two `host:port` strings) is a few hundred bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;

/// `storage_broker.toml`: every key is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConf {
    /// Address for gRPC and the HTTP management API.
    pub listen_addr: String,
    /// Publish and subscribe streams served at once; beyond, calls fail with
    /// `RESOURCE_EXHAUSTED`.
    pub max_concurrent_streams: usize,
    /// Messages kept for the subscribers to all timelines: one that falls
    /// further behind loses the oldest. About a second of publications of a
    /// large region at the default (three safekeepers publishing 10 000
    /// active timelines a second).
    pub all_timelines_buffer: usize,
    /// Messages kept for the subscribers to one timeline (about ten seconds
    /// of its publications at the default).
    pub timeline_buffer: usize,
    /// The largest message accepted, encoded, in bytes (requests too); a
    /// publish stream that sends a larger one ends with
    /// `RESOURCE_EXHAUSTED`, before the message is buffered. With the
    /// buffers, it bounds the broker's memory: a ring holds at most
    /// `buffer × max_message_bytes` of messages (128 MiB for all timelines
    /// at the defaults), whatever subscribers lag; each must stay under
    /// 1 GiB.
    pub max_message_bytes: usize,
    /// Public key(s) that verify tokens (PEM). Publishing then needs a
    /// `safekeeper` token, subscribing a `pageserver` one (or admin), and
    /// `/metrics` admin; without it, nobody is asked.
    pub auth_public_key: Option<std::path::PathBuf>,
}

impl Default for BrokerConf {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:50051".into(),
            max_concurrent_streams: 10_000,
            all_timelines_buffer: 32_768,
            timeline_buffer: 32,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            auth_public_key: None,
        }
    }
}

impl BrokerConf {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_concurrent_streams >= 1,
            "max_concurrent_streams must be at least 1"
        );
        for (name, value) in [
            ("all_timelines_buffer", self.all_timelines_buffer),
            ("timeline_buffer", self.timeline_buffer),
        ] {
            anyhow::ensure!(
                (1..=MAX_BUFFER).contains(&value),
                "{name} must be between 1 and {MAX_BUFFER}, not {value}"
            );
            let bytes = value.saturating_mul(self.max_message_bytes);
            anyhow::ensure!(
                bytes <= MAX_RING_BYTES,
                "{name} of {value} messages of up to max_message_bytes = {} bytes could hold {bytes} bytes, more than the {MAX_RING_BYTES} allowed: lower one of them",
                self.max_message_bytes
            );
        }
        anyhow::ensure!(
            self.max_message_bytes >= 256,
            "max_message_bytes must be at least 256 (a message with its ids and addresses), not {}",
            self.max_message_bytes
        );
        Ok(())
    }
}

/// Runs the broker until `cancel` fires.
pub async fn run(conf: BrokerConf, cancel: CancellationToken) -> anyhow::Result<()> {
    conf.validate()?;
    let listener = bind_listener("gRPC and HTTP", &conf.listen_addr).await?;
    serve(conf, listener, cancel).await
}

/// Runs the broker on a listener that is already bound (tests bind port 0)
/// until `cancel` fires. Subscriptions then end and publish calls fail with
/// `UNAVAILABLE`.
pub async fn serve(
    conf: BrokerConf,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let auth = daemon_utils::load_verifier(conf.auth_public_key.as_deref())?;
    let mut http = HttpServer::new(SERVICE)?;
    if let Some(verifier) = &auth {
        http = http.with_auth(verifier.clone(), Arc::new(|_: &RouteRequest| Access::Admin));
    }
    let broker = server::Broker::new(&conf, http.registry(), auth, cancel.clone())?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::broker_service_server::BrokerServiceServer<server::Broker>>()
        .await;
    // The limit is checked on each message's header, before its body is
    // buffered.
    let max_message_bytes = conf.max_message_bytes;
    let grpc = tonic::service::Routes::new(
        proto::broker_service_server::BrokerServiceServer::new(broker)
            .max_decoding_message_size(max_message_bytes),
    )
    .add_service(health_service)
    .into_axum_router();
    http.with_grpc(grpc)
        .serve(listener, Router::new(), cancel)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded_in_bytes() {
        BrokerConf::default().validate().unwrap();
        let big_messages = BrokerConf {
            max_message_bytes: 64 * 1024,
            ..BrokerConf::default()
        };
        let err = big_messages.validate().unwrap_err().to_string();
        assert!(
            err.contains("all_timelines_buffer of 32768 messages"),
            "{err}"
        );
        // Fewer messages of that size fit.
        BrokerConf {
            all_timelines_buffer: 1024,
            ..big_messages
        }
        .validate()
        .unwrap();
        let tiny = BrokerConf {
            max_message_bytes: 100,
            ..BrokerConf::default()
        };
        assert!(tiny.validate().is_err());
    }
}
