//! The broker's bound on message size, which bounds its rings in bytes: a
//! publisher that sends a message over `max_message_bytes` is refused with
//! RESOURCE_EXHAUSTED before the message is buffered or published, and
//! what it published before still reaches subscribers.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use storage_broker::proto::broker_service_client::BrokerServiceClient;
use storage_broker::proto::subscribe_safekeeper_info_request::SubscriptionKey;
use storage_broker::proto::{self, SubscribeSafekeeperInfoRequest};
use storage_broker::BrokerConf;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utils::{TenantId, TimelineId};

const DEADLINE: Duration = Duration::from_secs(20);

fn message(connstr_len: usize, commit_lsn: u64) -> proto::SafekeeperTimelineInfo {
    proto::SafekeeperTimelineInfo {
        safekeeper_id: 1,
        tenant_timeline_id: Some(proto::TenantTimelineId::new(
            TenantId::generate(),
            TimelineId::generate(),
        )),
        commit_lsn,
        safekeeper_connstr: "x".repeat(connstr_len),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_message_over_the_size_limit_ends_its_publish_stream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let conf = BrokerConf {
        max_message_bytes: 1024,
        ..BrokerConf::default()
    };
    let task = tokio::spawn(storage_broker::serve(conf, listener, cancel.clone()));
    let mut client = BrokerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut subscription = client
        .subscribe_safekeeper_info(SubscribeSafekeeperInfoRequest {
            subscription_key: Some(SubscriptionKey::All(proto::Empty {})),
        })
        .await
        .unwrap()
        .into_inner();

    // One message just under the limit, one far over it (its header claims
    // 1 MiB), one that would come after.
    let messages = [message(900, 1), message(1 << 20, 2), message(10, 3)];
    let status = tokio::time::timeout(
        DEADLINE,
        client.publish_safekeeper_info(stream::iter(messages)),
    )
    .await
    .expect("the publish call ended")
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("at most 1024 bytes"),
        "{}",
        status.message()
    );

    let first = tokio::time::timeout(DEADLINE, subscription.next())
        .await
        .expect("the first message")
        .expect("the subscription goes on")
        .unwrap();
    assert_eq!(first.commit_lsn, 1);
    // Nothing after the refused message was published.
    let more = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(more.is_err(), "published after the refusal: {more:?}");

    cancel.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the broker stopped")
        .unwrap()
        .unwrap();
}
