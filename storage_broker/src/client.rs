//! The client that safekeepers (publishing) and pageservers (subscribing)
//! use.

use std::time::Duration;

use futures_util::stream::{BoxStream, Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use utils::{TenantId, TimelineId};

use crate::info::{InvalidMessage, SafekeeperTimelineInfo};
use crate::proto::broker_service_client::BrokerServiceClient;
use crate::proto::subscribe_safekeeper_info_request::SubscriptionKey;
use crate::proto::{self, SubscribeSafekeeperInfoRequest};

pub use tonic::Code;

/// How long [`BrokerClient::connect`] waits for the broker.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 pings on idle connections, so that a broker that vanished without
/// closing the connection is noticed within this interval plus the timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The timeline states a subscription receives. It ends when the broker
/// shuts down or the connection breaks (after an error item); subscribe
/// again then, as the broker keeps no state to miss.
pub type InfoStream = BoxStream<'static, Result<SafekeeperTimelineInfo, BrokerError>>;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid storage broker endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("connecting to the storage broker at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("connecting to the storage broker at {endpoint}: timed out after {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    /// The broker, or the connection to it, ended the call with this status.
    #[error("storage broker: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("malformed message from the storage broker: {0}")]
    InvalidMessage(#[from] InvalidMessage),
}

impl BrokerError {
    /// The gRPC status code, when the call ended with a status.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

impl From<tonic::Status> for BrokerError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// An error and its sources, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// A connection to the storage broker. Cheap to clone; clones share the
/// connection (one HTTP/2 connection, on which every call is a stream),
/// which is re-established on the next call after it breaks.
///
/// The broker accepts at most 200 streams at once on one connection; a call
/// beyond that waits until one of them ends. To follow many timelines,
/// [`subscribe_all`](Self::subscribe_all) and filter, or use several clients
/// made with `connect` (clones share their connection).
#[derive(Clone, Debug)]
pub struct BrokerClient {
    endpoint: String,
    inner: BrokerServiceClient<Channel>,
    /// The token presented with every call, and its `authorization` metadata.
    token: Option<String>,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl BrokerClient {
    /// Connects to the broker at `endpoint` (`host:port` or
    /// `http://host:port`) now, waiting at most [`DEFAULT_CONNECT_TIMEOUT`].
    pub async fn connect(endpoint: &str) -> Result<Self, BrokerError> {
        Self::connect_with_timeout(endpoint, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with another timeout.
    pub async fn connect_with_timeout(
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let config = endpoint_config(endpoint, timeout)?;
        let channel = tokio::time::timeout(timeout, config.connect())
            .await
            .map_err(|_| BrokerError::ConnectTimeout {
                endpoint: endpoint.to_owned(),
                timeout,
            })?
            .map_err(|err| BrokerError::Connect {
                endpoint: endpoint.to_owned(),
                reason: chain(&err),
            })?;
        Ok(Self::new(endpoint, channel))
    }

    /// A client that connects on its first call (each connection attempt
    /// waiting at most [`DEFAULT_CONNECT_TIMEOUT`]): for daemons that must
    /// start while the broker is down. Fails only on a malformed endpoint.
    pub fn connect_lazy(endpoint: &str) -> Result<Self, BrokerError> {
        let channel = endpoint_config(endpoint, DEFAULT_CONNECT_TIMEOUT)?.connect_lazy();
        Ok(Self::new(endpoint, channel))
    }

    fn new(endpoint: &str, channel: Channel) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            inner: BrokerServiceClient::new(channel),
            token: None,
            authorization: None,
        }
    }

    /// Presents `token` (a `safekeeper` token to publish, a `pageserver`
    /// one to subscribe) with every call; `None`: no token.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, BrokerError> {
        self.authorization = match token {
            None => None,
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                BrokerError::InvalidEndpoint {
                    endpoint: self.endpoint.clone(),
                    reason: "the token is not printable ASCII".into(),
                }
            })?),
        };
        self.token = token.map(str::to_owned);
        Ok(self)
    }

    /// The token this client presents (the daemon's own token, which it
    /// also presents to other daemons).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// The endpoint this client was made for.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Publishes every state `infos` yields, in one stream, until it ends
    /// (then returns `Ok`) or the broker ends the call: `InvalidArgument`
    /// for a malformed message, `ResourceExhausted` when the broker serves
    /// too many streams, `Unavailable` when it shuts down.
    pub async fn publish<S>(&self, infos: S) -> Result<(), BrokerError>
    where
        S: Stream<Item = SafekeeperTimelineInfo> + Send + 'static,
    {
        let mut client = self.inner.clone();
        client
            .publish_safekeeper_info(self.request(infos.map(proto::SafekeeperTimelineInfo::from)))
            .await?;
        Ok(())
    }

    /// Every state published from now on, of every timeline. When this
    /// returns, the broker has registered the subscription.
    pub async fn subscribe_all(&self) -> Result<InfoStream, BrokerError> {
        self.subscribe_key(SubscriptionKey::All(proto::Empty {}))
            .await
    }

    /// Every state of one timeline published from now on. When this
    /// returns, the broker has registered the subscription.
    pub async fn subscribe(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> Result<InfoStream, BrokerError> {
        let id = proto::TenantTimelineId::new(tenant_id, timeline_id);
        self.subscribe_key(SubscriptionKey::TenantTimelineId(id))
            .await
    }

    async fn subscribe_key(&self, key: SubscriptionKey) -> Result<InfoStream, BrokerError> {
        let mut client = self.inner.clone();
        let request = SubscribeSafekeeperInfoRequest {
            subscription_key: Some(key),
        };
        let messages = client
            .subscribe_safekeeper_info(self.request(request))
            .await?
            .into_inner();
        Ok(messages
            .map(|message| Ok(SafekeeperTimelineInfo::try_from(message?)?))
            .boxed())
    }
}

/// Where and how to connect. Only cleartext HTTP/2 is supported.
fn endpoint_config(endpoint: &str, connect_timeout: Duration) -> Result<Endpoint, BrokerError> {
    let invalid = |reason: String| BrokerError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let uri = match endpoint.split_once("://") {
        None => format!("http://{endpoint}"),
        Some(("http", _)) => endpoint.to_owned(),
        Some((scheme, _)) => {
            return Err(invalid(format!(
                "scheme {scheme:?} is not supported, only http"
            )))
        }
    };
    let config = Endpoint::from_shared(uri).map_err(|err| invalid(chain(&err)))?;
    Ok(config
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(endpoint_config("127.0.0.1:50051", DEFAULT_CONNECT_TIMEOUT).is_ok());
        assert!(endpoint_config("http://localhost:50051", DEFAULT_CONNECT_TIMEOUT).is_ok());
        let err = endpoint_config("https://localhost:50051", DEFAULT_CONNECT_TIMEOUT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid storage broker endpoint \"https://localhost:50051\": \
             scheme \"https\" is not supported, only http"
        );
        let err = endpoint_config("not an address", DEFAULT_CONNECT_TIMEOUT).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid storage broker endpoint \"not an address\": "),
            "{err}"
        );
    }
}
