//! The gRPC service: an in-memory fan-out of published timeline states.
//!
//! Each message goes to one broadcast channel for the subscribers to all
//! timelines and, if the timeline has subscribers of its own, to that
//! timeline's channel. Channels are bounded rings: a publisher never waits,
//! and a subscriber that falls a whole ring behind loses the oldest messages
//! (counted and logged; safekeepers republish every second, so the next
//! message supersedes the lost ones). A timeline's channel exists only while
//! it has subscribers. Messages are at most `max_message_bytes` (checked by
//! the gRPC decoder on the message's header, before its body is buffered),
//! so a ring holds at most its length times that many bytes, however far
//! its subscribers lag.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use auth::{Access, JwtVerifier, Scope};
use futures_util::stream::{self, BoxStream, StreamExt};
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};
use utils::{TenantId, TimelineId};

use crate::info::InvalidMessage;
use crate::proto::broker_service_server::BrokerService;
use crate::proto::subscribe_safekeeper_info_request::SubscriptionKey;
use crate::proto::{self, SubscribeSafekeeperInfoRequest};
use crate::BrokerConf;

type Message = Arc<proto::SafekeeperTimelineInfo>;
type TimelineKey = (TenantId, TimelineId);

/// The broker's own metrics, registered in the management API's registry.
struct Metrics {
    active_publishers: IntGauge,
    active_subscribers: IntGauge,
    published: IntCounter,
    dropped: IntCounter,
    rejected_streams: IntCounter,
}

impl Metrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        let gauge = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
            let gauge = IntGauge::new(format!("storage_broker_{name}"), help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let counter = |name: &str, help: &str| -> anyhow::Result<IntCounter> {
            let counter = IntCounter::new(format!("storage_broker_{name}"), help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        Ok(Self {
            active_publishers: gauge("active_publishers", "Publish streams open now")?,
            active_subscribers: gauge("active_subscribers", "Subscribe streams open now")?,
            published: counter(
                "published_messages_total",
                "Timeline states accepted from publishers",
            )?,
            dropped: counter(
                "dropped_messages_total",
                "Messages a subscriber lost because it read too slowly",
            )?,
            rejected_streams: counter(
                "rejected_streams_total",
                "Streams refused because the broker served too many already",
            )?,
        })
    }
}

/// Counts one open stream in a gauge while it lives.
struct Active(IntGauge);

impl Active {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Shared {
    all: broadcast::Sender<Message>,
    timelines: RwLock<HashMap<TimelineKey, broadcast::Sender<Message>>>,
    timeline_buffer: usize,
    streams: Arc<Semaphore>,
    max_streams: usize,
    max_message_bytes: usize,
    metrics: Metrics,
    auth: Option<Arc<JwtVerifier>>,
    cancel: CancellationToken,
}

/// The gRPC service. Its streams end when `cancel` fires.
#[derive(Clone)]
pub(crate) struct Broker(Arc<Shared>);

impl Broker {
    pub(crate) fn new(
        conf: &BrokerConf,
        registry: &Registry,
        auth: Option<Arc<JwtVerifier>>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        conf.validate()?;
        Ok(Self(Arc::new(Shared {
            all: broadcast::channel(conf.all_timelines_buffer).0,
            timelines: RwLock::new(HashMap::new()),
            timeline_buffer: conf.timeline_buffer,
            streams: Arc::new(Semaphore::new(conf.max_concurrent_streams)),
            max_streams: conf.max_concurrent_streams,
            max_message_bytes: conf.max_message_bytes,
            metrics: Metrics::register(registry)?,
            auth,
            cancel,
        })))
    }

    /// Refuses a call whose `authorization: Bearer` token does not open
    /// `access` (when the broker authenticates): `UNAUTHENTICATED` without a
    /// valid token, `PERMISSION_DENIED` with one of another scope.
    fn authorize<T>(&self, request: &Request<T>, access: &Access) -> Result<(), Status> {
        let Some(verifier) = &self.0.auth else {
            return Ok(());
        };
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        let checked = verifier.authorize_bearer(header, access).map(drop);
        checked.map_err(|err| {
            info!("refused a call: {err}");
            if err.is_forbidden() {
                Status::permission_denied(err.to_string())
            } else {
                Status::unauthenticated(err.to_string())
            }
        })
    }

    fn acquire_stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.0.streams.clone().try_acquire_owned().map_err(|_| {
            self.0.metrics.rejected_streams.inc();
            Status::resource_exhausted(format!(
                "too many concurrent streams: the storage broker serves at most {}",
                self.0.max_streams
            ))
        })
    }

    fn publish(&self, key: TimelineKey, message: proto::SafekeeperTimelineInfo) {
        let message = Arc::new(message);
        self.0.metrics.published.inc();
        let timelines = self
            .0
            .timelines
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = timelines.get(&key) {
            // Fails only without receivers, which is no error.
            let _ = sender.send(Arc::clone(&message));
        }
        drop(timelines);
        let _ = self.0.all.send(message);
    }
}

/// The gRPC decoder's refusal of a message over the size limit
/// (`OUT_OF_RANGE`), told as what it is; other errors as they are.
fn publish_error(status: Status, max_message_bytes: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(format!(
            "message too large: the storage broker accepts messages of at most {max_message_bytes} bytes ({})",
            status.message()
        ))
    } else {
        status
    }
}

fn invalid_argument(err: InvalidMessage) -> Status {
    Status::invalid_argument(err.to_string())
}

#[tonic::async_trait]
impl BrokerService for Broker {
    async fn publish_safekeeper_info(
        &self,
        request: Request<Streaming<proto::SafekeeperTimelineInfo>>,
    ) -> Result<Response<proto::Empty>, Status> {
        self.authorize(&request, &Access::Scopes(&[Scope::Safekeeper]))?;
        let _permit = self.acquire_stream()?;
        let _active = Active::new(&self.0.metrics.active_publishers);
        let mut messages = request.into_inner();
        let mut safekeeper_id = None;
        let mut count = 0u64;
        let result = loop {
            let message = tokio::select! {
                biased;
                () = self.0.cancel.cancelled() => {
                    break Err(Status::unavailable("the storage broker is shutting down"));
                }
                message = messages.message() => message,
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => break Ok(Response::new(proto::Empty {})),
                Err(status) => {
                    let status = publish_error(status, self.0.max_message_bytes);
                    if status.code() == tonic::Code::ResourceExhausted {
                        warn!("refusing a publish stream: {}", status.message());
                    }
                    break Err(status);
                }
            };
            if safekeeper_id.is_none() {
                info!("safekeeper {} started publishing", message.safekeeper_id);
            }
            safekeeper_id = Some(message.safekeeper_id);
            let key = message
                .tenant_timeline_id
                .as_ref()
                .ok_or(InvalidMessage::MissingTenantTimelineId)
                .and_then(proto::TenantTimelineId::ids);
            match key {
                Ok(key) => self.publish(key, message),
                Err(err) => {
                    warn!(
                        "refusing a message from safekeeper {}: {err}",
                        message.safekeeper_id
                    );
                    break Err(invalid_argument(err));
                }
            }
            count += 1;
        };
        if let Some(id) = safekeeper_id {
            match &result {
                Ok(_) => info!("safekeeper {id} stopped publishing after {count} messages"),
                Err(status) => info!(
                    "publish stream of safekeeper {id} ended after {count} messages: {}",
                    status.message()
                ),
            }
        }
        result
    }

    type SubscribeSafekeeperInfoStream =
        BoxStream<'static, Result<proto::SafekeeperTimelineInfo, Status>>;

    async fn subscribe_safekeeper_info(
        &self,
        request: Request<SubscribeSafekeeperInfoRequest>,
    ) -> Result<Response<Self::SubscribeSafekeeperInfoStream>, Status> {
        self.authorize(&request, &Access::Scopes(&[Scope::Pageserver]))?;
        let key = match request.into_inner().subscription_key {
            None => return Err(invalid_argument(InvalidMessage::MissingSubscriptionKey)),
            Some(SubscriptionKey::All(_)) => None,
            Some(SubscriptionKey::TenantTimelineId(id)) => {
                Some(id.ids().map_err(invalid_argument)?)
            }
        };
        let permit = self.acquire_stream()?;
        let subscription = Subscription::new(Arc::clone(&self.0), key, permit);
        let messages = stream::unfold(subscription, |mut subscription| async move {
            let message = subscription.next().await?;
            Some((Ok(message.as_ref().clone()), subscription))
        });
        Ok(Response::new(messages.boxed()))
    }
}

/// One subscriber's receiver; leaving, it removes its timeline's channel if
/// it was the last subscriber of that timeline.
struct Subscription {
    shared: Arc<Shared>,
    key: Option<TimelineKey>,
    /// `None` only in `drop`, which must drop it before counting receivers.
    receiver: Option<broadcast::Receiver<Message>>,
    _active: Active,
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    fn new(shared: Arc<Shared>, key: Option<TimelineKey>, permit: OwnedSemaphorePermit) -> Self {
        let receiver = match key {
            None => {
                info!("new subscriber to all timelines");
                shared.all.subscribe()
            }
            Some(key) => {
                debug!("new subscriber to timeline {}/{}", key.0, key.1);
                let mut timelines = shared
                    .timelines
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                timelines
                    .entry(key)
                    .or_insert_with(|| broadcast::channel(shared.timeline_buffer).0)
                    .subscribe()
            }
        };
        Self {
            _active: Active::new(&shared.metrics.active_subscribers),
            shared,
            key,
            receiver: Some(receiver),
            _permit: permit,
        }
    }

    /// The next message, or `None` once the broker shuts down.
    async fn next(&mut self) -> Option<Message> {
        let receiver = self.receiver.as_mut()?;
        loop {
            tokio::select! {
                biased;
                () = self.shared.cancel.cancelled() => return None,
                received = receiver.recv() => match received {
                    Ok(message) => return Some(message),
                    Err(RecvError::Lagged(lost)) => {
                        match self.key {
                            None => warn!("a subscriber to all timelines is too slow: it lost {lost} messages"),
                            Some((tenant, timeline)) => warn!(
                                "a subscriber to timeline {tenant}/{timeline} is too slow: it lost {lost} messages"
                            ),
                        }
                        self.shared.metrics.dropped.inc_by(lost);
                    }
                    // The senders live as long as there are receivers.
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        match self.key {
            None => info!("a subscriber to all timelines left"),
            Some(key) => {
                debug!("a subscriber to timeline {}/{} left", key.0, key.1);
                let mut timelines = self
                    .shared
                    .timelines
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Entry::Occupied(entry) = timelines.entry(key) {
                    if entry.get().receiver_count() == 0 {
                        entry.remove();
                    }
                }
            }
        }
    }
}

/// The number of timelines that have subscribers of their own.
#[cfg(test)]
impl Broker {
    fn subscribed_timelines(&self) -> usize {
        self.0.timelines.read().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: TimelineKey, seq: u64) -> proto::SafekeeperTimelineInfo {
        proto::SafekeeperTimelineInfo {
            tenant_timeline_id: Some(proto::TenantTimelineId::new(key.0, key.1)),
            commit_lsn: seq,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn timeline_channels_live_as_long_as_their_subscribers() {
        let conf = BrokerConf {
            timeline_buffer: 2,
            ..BrokerConf::default()
        };
        let broker = Broker::new(&conf, &Registry::new(), None, CancellationToken::new()).unwrap();
        let key = (TenantId::generate(), TimelineId::generate());
        let permit = || broker.acquire_stream().unwrap();
        let mut first = Subscription::new(Arc::clone(&broker.0), Some(key), permit());
        let second = Subscription::new(Arc::clone(&broker.0), Some(key), permit());
        assert_eq!(broker.subscribed_timelines(), 1);

        // A lagging subscriber skips to the oldest message still buffered.
        for seq in 1..=3 {
            broker.publish(key, message(key, seq));
        }
        assert_eq!(first.next().await.unwrap().commit_lsn, 2);
        assert_eq!(broker.0.metrics.dropped.get(), 1);
        assert_eq!(broker.0.metrics.published.get(), 3);
        assert_eq!(broker.0.metrics.active_subscribers.get(), 2);

        drop(second);
        assert_eq!(broker.subscribed_timelines(), 1);
        drop(first);
        assert_eq!(broker.subscribed_timelines(), 0);
        assert_eq!(broker.0.metrics.active_subscribers.get(), 0);
        assert_eq!(
            broker.0.streams.available_permits(),
            conf.max_concurrent_streams
        );
    }

    #[tokio::test]
    async fn stream_limit() {
        let conf = BrokerConf {
            max_concurrent_streams: 1,
            ..BrokerConf::default()
        };
        let broker = Broker::new(&conf, &Registry::new(), None, CancellationToken::new()).unwrap();
        let permit = broker.acquire_stream().unwrap();
        let status = broker.acquire_stream().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(broker.0.metrics.rejected_streams.get(), 1);
        drop(permit);
        let _permit = broker.acquire_stream().unwrap();
    }
}
