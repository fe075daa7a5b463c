//! The broker served in-process on a loopback port, driven through the
//! client library and the raw generated gRPC client.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use daemon_utils::CancellationToken;
use futures_util::stream::{self, StreamExt};
use storage_broker::proto::broker_service_client::BrokerServiceClient;
use storage_broker::proto::subscribe_safekeeper_info_request::SubscriptionKey;
use storage_broker::proto::{self, SubscribeSafekeeperInfoRequest};
use storage_broker::{
    BrokerClient, BrokerConf, BrokerError, Code, InfoStream, SafekeeperTimelineInfo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use utils::{Lsn, NodeId, TenantId, TimelineId};

/// Every wait in these tests has this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

struct TestBroker {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestBroker {
    async fn start(conf: BrokerConf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(storage_broker::serve(conf, listener, cancel.clone()));
        Self { addr, cancel, task }
    }

    /// A client with a connection of its own.
    async fn client(&self) -> BrokerClient {
        BrokerClient::connect(&self.addr.to_string()).await.unwrap()
    }

    /// The generated client, on a connection of its own.
    async fn raw_client(&self) -> BrokerServiceClient<Channel> {
        BrokerServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// (status code, body) of an HTTP/1.0 GET on the gRPC port.
    async fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_owned())
    }

    async fn metric(&self, name: &str) -> u64 {
        let (code, metrics) = self.http_get("/metrics").await;
        assert_eq!(code, 200);
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("storage_broker_{name} ")))
            .unwrap_or_else(|| panic!("no metric {name} in {metrics}"))
            .parse()
            .unwrap()
    }

    /// Polls until the metric has the value.
    async fn wait_metric(&self, name: &str, value: u64) {
        within(&format!("{name} to be {value}"), async {
            while self.metric(name).await != value {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    async fn shutdown(self) {
        self.cancel.cancel();
        within("the broker to stop", self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn ids() -> (TenantId, TimelineId) {
    (TenantId::generate(), TimelineId::generate())
}

/// A message whose fields all differ and derive from `seq`.
fn info(
    (tenant_id, timeline_id): (TenantId, TimelineId),
    safekeeper: u64,
    seq: u64,
) -> SafekeeperTimelineInfo {
    SafekeeperTimelineInfo {
        safekeeper_id: NodeId(safekeeper),
        tenant_id,
        timeline_id,
        term: seq * 100 + 1,
        last_log_term: seq * 100 + 2,
        flush_lsn: Lsn(seq * 100 + 3),
        commit_lsn: Lsn(seq),
        backup_lsn: Lsn(seq * 100 + 4),
        remote_consistent_lsn: Lsn(seq * 100 + 5),
        peer_horizon_lsn: Lsn(seq * 100 + 6),
        local_start_lsn: Lsn(u64::MAX - seq),
        safekeeper_connstr: format!("sk-{safekeeper}.local:5454"),
        http_connstr: format!("sk-{safekeeper}.local:7676"),
    }
}

/// A publish call fed through a channel.
struct Publisher {
    tx: mpsc::Sender<SafekeeperTimelineInfo>,
    task: JoinHandle<Result<(), BrokerError>>,
}

impl Publisher {
    fn start(client: &BrokerClient) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let infos = stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|info| (info, rx))
        });
        let client = client.clone();
        let task = tokio::spawn(async move { client.publish(infos).await });
        Self { tx, task }
    }

    async fn send(&self, info: SafekeeperTimelineInfo) {
        within("a message to be queued", self.tx.send(info))
            .await
            .unwrap();
    }

    /// Ends the stream; the call's result.
    async fn finish(self) -> Result<(), BrokerError> {
        drop(self.tx);
        within("the publish call to end", self.task).await.unwrap()
    }
}

async fn next(stream: &mut InfoStream) -> SafekeeperTimelineInfo {
    within("a message", stream.next())
        .await
        .expect("the subscription ended")
        .unwrap()
}

#[tokio::test]
async fn subscribers_get_their_timelines_with_every_field() {
    let broker = TestBroker::start(BrokerConf::default()).await;
    let client = broker.client().await;
    let (a, b) = (ids(), ids());
    let mut only_a = client.subscribe(a.0, a.1).await.unwrap();
    let mut all = client.subscribe_all().await.unwrap();

    let publisher = Publisher::start(&client);
    let sent = [info(a, 1, 1), info(b, 1, 2), info(a, 1, 3), info(b, 2, 4)];
    for message in &sent {
        publisher.send(message.clone()).await;
    }
    for message in &sent {
        assert_eq!(&next(&mut all).await, message);
    }
    // Only A's messages, in order: B's would have come between them.
    assert_eq!(next(&mut only_a).await, sent[0]);
    assert_eq!(next(&mut only_a).await, sent[2]);
    publisher.send(info(a, 1, 5)).await;
    assert_eq!(next(&mut only_a).await.commit_lsn, Lsn(5));
    assert_eq!(next(&mut all).await.commit_lsn, Lsn(5));

    assert_eq!(broker.metric("published_messages_total").await, 5);
    assert_eq!(broker.metric("active_publishers").await, 1);
    assert_eq!(broker.metric("active_subscribers").await, 2);
    publisher.finish().await.unwrap();
    broker.wait_metric("active_publishers", 0).await;
    drop(only_a);
    broker.wait_metric("active_subscribers", 1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn many_publishers_and_subscribers() {
    const MESSAGES: u64 = 50;
    let broker = TestBroker::start(BrokerConf {
        timeline_buffer: 1024,
        ..BrokerConf::default()
    })
    .await;
    let timelines: Vec<_> = (0..4).map(|_| ids()).collect();
    let mut all_subscribers = Vec::new();
    for _ in 0..2 {
        all_subscribers.push(broker.client().await.subscribe_all().await.unwrap());
    }
    let mut timeline_subscribers = Vec::new();
    let subscribing = broker.client().await;
    for timeline in &timelines {
        timeline_subscribers.push(subscribing.subscribe(timeline.0, timeline.1).await.unwrap());
    }

    // Three safekeepers, each on its own connection, publish concurrently.
    let mut publishers = Vec::new();
    for safekeeper in 1..=3 {
        let client = broker.client().await;
        let timelines = timelines.clone();
        publishers.push(tokio::spawn(async move {
            let publisher = Publisher::start(&client);
            for seq in 1..=MESSAGES {
                for timeline in &timelines {
                    publisher.send(info(*timeline, safekeeper, seq)).await;
                }
            }
            publisher.finish().await
        }));
    }

    // Per safekeeper and timeline, messages arrive in order and complete.
    let check = |received: Vec<SafekeeperTimelineInfo>, timelines: &[(TenantId, TimelineId)]| {
        for timeline in timelines {
            for safekeeper in 1..=3 {
                let seqs: Vec<u64> = received
                    .iter()
                    .filter(|m| (m.tenant_id, m.timeline_id) == *timeline)
                    .filter(|m| m.safekeeper_id == NodeId(safekeeper))
                    .map(|m| m.commit_lsn.0)
                    .collect();
                assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>());
            }
        }
    };
    let per_timeline = 3 * MESSAGES as usize;
    let receive = |stream: InfoStream, count: usize| {
        within(
            "every message",
            stream.take(count).map(Result::unwrap).collect::<Vec<_>>(),
        )
    };
    let (all_received, timeline_received) = tokio::join!(
        futures_util::future::join_all(
            all_subscribers
                .into_iter()
                .map(|s| receive(s, per_timeline * timelines.len()))
        ),
        futures_util::future::join_all(
            timeline_subscribers
                .into_iter()
                .map(|s| receive(s, per_timeline))
        ),
    );
    for received in all_received {
        assert_eq!(received.len(), per_timeline * timelines.len());
        check(received, &timelines);
    }
    for (received, timeline) in timeline_received.into_iter().zip(&timelines) {
        assert_eq!(received.len(), per_timeline);
        check(received, std::slice::from_ref(timeline));
    }
    for publisher in publishers {
        within("a publisher", publisher).await.unwrap().unwrap();
    }
    assert_eq!(
        broker.metric("published_messages_total").await,
        3 * MESSAGES * timelines.len() as u64
    );
    assert_eq!(broker.metric("dropped_messages_total").await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn malformed_ids_are_invalid_arguments() {
    let broker = TestBroker::start(BrokerConf::default()).await;
    let mut all = broker.client().await.subscribe_all().await.unwrap();
    let mut raw = broker.raw_client().await;
    let good = proto::SafekeeperTimelineInfo::from(info(ids(), 1, 1));

    // A bad message ends the stream; the good one before it is published.
    let mut bad_tenant = good.clone();
    bad_tenant.tenant_timeline_id.as_mut().unwrap().tenant_id = vec![1, 2, 3];
    let status = raw
        .publish_safekeeper_info(stream::iter([good.clone(), bad_tenant, good.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "tenant_id must be 16 bytes, got 3");

    let mut bad_timeline = good.clone();
    bad_timeline
        .tenant_timeline_id
        .as_mut()
        .unwrap()
        .timeline_id = vec![0; 17];
    let status = raw
        .publish_safekeeper_info(stream::iter([bad_timeline]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "timeline_id must be 16 bytes, got 17");

    let mut no_ids = good.clone();
    no_ids.tenant_timeline_id = None;
    let status = raw
        .publish_safekeeper_info(stream::iter([no_ids]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "tenant_timeline_id is missing");

    // Only the good messages were published.
    let mut last = good.clone();
    last.commit_lsn = 2;
    raw.publish_safekeeper_info(stream::iter([last]))
        .await
        .unwrap();
    assert_eq!(next(&mut all).await.commit_lsn, Lsn(1));
    assert_eq!(next(&mut all).await.commit_lsn, Lsn(2));
    assert_eq!(broker.metric("published_messages_total").await, 2);

    // Subscriptions too.
    let subscribe = |key| SubscribeSafekeeperInfoRequest {
        subscription_key: key,
    };
    let bad_key = SubscriptionKey::TenantTimelineId(proto::TenantTimelineId {
        tenant_id: vec![0; 16],
        timeline_id: vec![],
    });
    let status = raw
        .subscribe_safekeeper_info(subscribe(Some(bad_key)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "timeline_id must be 16 bytes, got 0");
    let status = raw
        .subscribe_safekeeper_info(subscribe(None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("subscription_key is missing"));
    broker.wait_metric("active_subscribers", 1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn slow_subscriber_loses_messages_without_blocking_anyone() {
    const BATCH: u64 = 8;
    const TOTAL: u64 = 40 * BATCH;
    let broker = TestBroker::start(BrokerConf {
        all_timelines_buffer: 32,
        ..BrokerConf::default()
    })
    .await;

    // A subscriber that does not read, with small HTTP/2 windows so that the
    // broker's ring, not the network buffers, holds what it has not read.
    let channel = Endpoint::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .initial_stream_window_size(1024)
        .connect()
        .await
        .unwrap();
    let mut slow = BrokerServiceClient::new(channel)
        .subscribe_safekeeper_info(SubscribeSafekeeperInfoRequest {
            subscription_key: Some(SubscriptionKey::All(proto::Empty {})),
        })
        .await
        .unwrap()
        .into_inner();
    let mut fast = broker.client().await.subscribe_all().await.unwrap();

    // The publisher and the fast subscriber go on in lock step, never more
    // than a batch apart, while the slow one reads nothing.
    let timeline = ids();
    let publisher = Publisher::start(&broker.client().await);
    for batch in 0..TOTAL / BATCH {
        for seq in batch * BATCH + 1..=(batch + 1) * BATCH {
            publisher.send(info(timeline, 1, seq)).await;
        }
        for seq in batch * BATCH + 1..=(batch + 1) * BATCH {
            assert_eq!(next(&mut fast).await.commit_lsn, Lsn(seq));
        }
    }
    publisher.finish().await.unwrap();

    // The slow subscriber gets what its ring still held, in order, up to the
    // last message; the rest is counted as dropped.
    let mut received = Vec::new();
    while received.last() != Some(&TOTAL) {
        let message = within("the slow subscriber's next message", slow.next())
            .await
            .expect("the subscription ended")
            .unwrap();
        received.push(message.commit_lsn);
    }
    assert!(received.is_sorted(), "{received:?}");
    let received = received.len() as u64;
    assert!(received < TOTAL - 32, "received {received} of {TOTAL}");
    assert_eq!(
        broker.metric("dropped_messages_total").await,
        TOTAL - received
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let broker = TestBroker::start(BrokerConf {
        max_concurrent_streams: 2,
        ..BrokerConf::default()
    })
    .await;
    let client = broker.client().await;
    let first = client.subscribe_all().await.unwrap();
    let timeline = ids();
    let _second = client.subscribe(timeline.0, timeline.1).await.unwrap();

    let err = client.subscribe_all().await.err().unwrap();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("at most 2"), "{err}");
    let err = client
        .publish(stream::iter([info(timeline, 1, 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert_eq!(broker.metric("rejected_streams_total").await, 2);

    // A stream that ends frees its place.
    drop(first);
    broker.wait_metric("active_subscribers", 1).await;
    client
        .publish(stream::iter([info(timeline, 1, 1)]))
        .await
        .unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_every_stream() {
    let broker = TestBroker::start(BrokerConf::default()).await;
    let client = broker.client().await;
    let timeline = ids();
    let mut all = client.subscribe_all().await.unwrap();
    let mut one = client.subscribe(timeline.0, timeline.1).await.unwrap();
    let publisher = Publisher::start(&client);
    publisher.send(info(timeline, 1, 1)).await;
    assert_eq!(next(&mut all).await.commit_lsn, Lsn(1));
    assert_eq!(next(&mut one).await.commit_lsn, Lsn(1));

    broker.cancel.cancel();
    assert!(within("the subscription to end", all.next())
        .await
        .is_none());
    assert!(within("the subscription to end", one.next())
        .await
        .is_none());
    let err = within("the publish call to end", publisher.task)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.to_string().contains("shutting down"), "{err}");
    within("the broker to stop", broker.task)
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(broker.addr).await.is_err());
}

#[tokio::test]
async fn health_and_management_api_on_the_grpc_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let broker = TestBroker::start(BrokerConf::default()).await;
    let channel = Endpoint::from_shared(format!("http://{}", broker.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "storage_broker.BrokerService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }

    let (code, status) = broker.http_get("/v1/status").await;
    assert_eq!(code, 200);
    assert!(status.contains(r#""service":"storage_broker""#), "{status}");
    let (code, metrics) = broker.http_get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "active_publishers",
        "active_subscribers",
        "published_messages_total",
        "dropped_messages_total",
    ] {
        assert!(
            metrics.contains(&format!("\nstorage_broker_{name} 0\n")),
            "{metrics}"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn connection_errors() {
    // A port nobody listens on.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let err = BrokerClient::connect(&addr).await.unwrap_err();
    assert!(matches!(err, BrokerError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("connecting to the storage broker at {addr}: ")),
        "{err}"
    );

    // A lazy client connects on its first call, and again after a failure.
    let lazy = BrokerClient::connect_lazy(&addr).unwrap();
    let err = lazy.subscribe_all().await.err().unwrap();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    let listener = TcpListener::bind(&addr).await.unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(storage_broker::serve(
        BrokerConf::default(),
        listener,
        cancel.clone(),
    ));
    let mut all = within("a subscription", lazy.subscribe_all())
        .await
        .unwrap();
    let timeline = ids();
    lazy.publish(stream::iter([info(timeline, 7, 9)]))
        .await
        .unwrap();
    assert_eq!(next(&mut all).await, info(timeline, 7, 9));
    cancel.cancel();
    within("the broker to stop", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn tokens_decide_who_publishes_and_who_subscribes() {
    use auth::{Claims, Scope, SigningKey};
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = auth::generate_key_pair();
    std::fs::write(dir.path().join("public.pem"), public).unwrap();
    let signer = SigningKey::from_pem(&private).unwrap();
    let broker = TestBroker::start(BrokerConf {
        auth_public_key: Some(dir.path().join("public.pem")),
        ..BrokerConf::default()
    })
    .await;
    let with = |token: Option<String>| {
        let addr = broker.addr.to_string();
        async move {
            BrokerClient::connect(&addr)
                .await
                .unwrap()
                .with_token(token.as_deref())
                .unwrap()
        }
    };
    let token = |claims: Claims| Some(signer.issue(&claims));
    let mut expired = Claims::new(Scope::Safekeeper);
    expired.exp = Some(1);
    let timeline = ids();
    let tenant = token(Claims::tenant(timeline.0));
    let publish = |client: BrokerClient, seq: u64| async move {
        client.publish(stream::iter([info(timeline, 1, seq)])).await
    };
    // Subscribed first: it would see a refused publisher's message.
    let mut updates = with(token(Claims::new(Scope::Pageserver)))
        .await
        .subscribe(timeline.0, timeline.1)
        .await
        .unwrap();

    // Publishing: a safekeeper token (or admin), nothing else.
    for (who, token, code) in [
        ("no token", None, Code::Unauthenticated),
        ("an expired token", token(expired), Code::Unauthenticated),
        (
            "a garbage token",
            Some("x.y.z".to_owned()),
            Code::Unauthenticated,
        ),
        ("a tenant token", tenant.clone(), Code::PermissionDenied),
        (
            "a pageserver token",
            token(Claims::new(Scope::Pageserver)),
            Code::PermissionDenied,
        ),
    ] {
        let err = publish(with(token).await, 1).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "publishing with {who}: {err}");
    }
    // Subscribing: a pageserver token (or admin).
    for (who, token, code) in [
        ("no token", None, Code::Unauthenticated),
        ("a tenant token", tenant.clone(), Code::PermissionDenied),
        (
            "a safekeeper token",
            token(Claims::new(Scope::Safekeeper)),
            Code::PermissionDenied,
        ),
    ] {
        let err = with(token).await.subscribe_all().await.err().unwrap();
        assert_eq!(err.code(), Some(code), "subscribing with {who}: {err}");
    }
    assert_eq!(broker.http_get("/metrics").await.0, 401);
    assert_eq!(broker.http_get("/v1/status").await.0, 200);

    publish(with(token(Claims::new(Scope::Safekeeper))).await, 2)
        .await
        .unwrap();
    let got = within("the published message", updates.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, info(timeline, 1, 2));
    broker.shutdown().await;
}
