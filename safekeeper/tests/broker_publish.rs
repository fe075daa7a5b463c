//! A safekeeper publishing its active timelines to a storage broker, both
//! run in-process on loopback ports.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use daemon_utils::CancellationToken;
use futures_util::StreamExt;
use safekeeper::SafeKeeperConf;
use storage_broker::{BrokerClient, BrokerConf, InfoStream, SafekeeperTimelineInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use utils::{Lsn, NodeId, TenantId, TimelineId};

/// Every wait in these tests has this deadline.
const DEADLINE: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Everything logged in this test binary (tests run in parallel: filter by
/// something unique to the test, like an address).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info,safekeeper::broker=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The logged lines containing every one of `words`.
fn log_lines(words: &[&str]) -> Vec<String> {
    let logs = logs();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| words.iter().all(|w| line.contains(w)))
        .map(str::to_owned)
        .collect()
}

struct TestBroker {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestBroker {
    async fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(storage_broker::serve(
            BrokerConf::default(),
            listener,
            cancel.clone(),
        ));
        Self { addr, cancel, task }
    }

    async fn client(&self) -> BrokerClient {
        BrokerClient::connect(&self.addr.to_string()).await.unwrap()
    }

    async fn shutdown(self) {
        self.cancel.cancel();
        within("the broker to stop", self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

struct TestSafekeeper {
    pg_addr: String,
    http_addr: String,
    datadir: PathBuf,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestSafekeeper {
    async fn start(id: u64, broker_endpoint: &str) -> Self {
        let datadir = std::env::temp_dir().join(format!(
            "safekeeper-broker-publish-{}-{}",
            std::process::id(),
            TimelineId::generate()
        ));
        let conf = SafeKeeperConf {
            id: NodeId(id),
            datadir: datadir.clone(),
            listen_pg_addr: format!("127.0.0.1:{}", free_port()),
            listen_http_addr: format!("127.0.0.1:{}", free_port()),
            broker_endpoint: Some(broker_endpoint.to_owned()),
            ..SafeKeeperConf::default()
        };
        let (pg_addr, http_addr) = (conf.listen_pg_addr.clone(), conf.listen_http_addr.clone());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(safekeeper::run(conf, cancel.clone()));
        within("the safekeeper's HTTP API", async {
            while TcpStream::connect(&http_addr).await.is_err() {
                assert!(!task.is_finished(), "the safekeeper stopped");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        Self {
            pg_addr,
            http_addr,
            datadir,
            cancel,
            task,
        }
    }

    /// (status code, body) of an HTTP POST with a JSON body.
    async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.http_addr).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        within("an HTTP response", stream.read_to_string(&mut response))
            .await
            .unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_owned())
    }

    async fn create_timeline(&self, start_lsn: Lsn) -> (TenantId, TimelineId) {
        let (tenant_id, timeline_id) = (TenantId::generate(), TimelineId::generate());
        let (code, body) = self
            .post(
                &format!("/v1/tenant/{tenant_id}/timeline"),
                &format!(
                    r#"{{"timeline_id": "{timeline_id}", "pg_version": 150000, "start_lsn": "{start_lsn}"}}"#
                ),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        (tenant_id, timeline_id)
    }

    /// A walproposer connection (`START_WAL_PUSH`) that makes the timeline
    /// active while it is open.
    async fn wal_push(&self, (tenant_id, timeline_id): (TenantId, TimelineId)) -> pq_proto::Client {
        let options = format!("-c tenant_id={tenant_id} -c timeline_id={timeline_id}");
        within(
            "a WAL service connection",
            pq_proto::connect(&self.pg_addr, &[("user", "t"), ("options", &options)], None),
        )
        .await
        .unwrap()
    }

    /// Stops the safekeeper; it must return Ok within `limit`.
    async fn shutdown(self, limit: Duration) {
        self.cancel.cancel();
        let started = Instant::now();
        tokio::time::timeout(limit, self.task)
            .await
            .unwrap_or_else(|_| panic!("the safekeeper did not stop within {limit:?}"))
            .unwrap()
            .unwrap();
        eprintln!("safekeeper stopped in {:?}", started.elapsed());
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}

async fn next(what: &str, stream: &mut InfoStream) -> SafekeeperTimelineInfo {
    within(what, stream.next())
        .await
        .expect("the subscription ended")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_timelines_are_published_idle_ones_are_not() {
    logs();
    let broker = TestBroker::start("127.0.0.1:0").await;
    let sk = TestSafekeeper::start(7, &broker.addr.to_string()).await;
    let start_lsn = Lsn(0x0100_0028);
    let active = sk.create_timeline(start_lsn).await;
    let idle = sk.create_timeline(start_lsn).await;

    let client = broker.client().await;
    let mut all = client.subscribe_all().await.unwrap();
    let mut mine = client.subscribe(active.0, active.1).await.unwrap();

    let mut pg = sk.wal_push(active).await;
    let _push = within("START_WAL_PUSH", pg.copy_both("START_WAL_PUSH"))
        .await
        .unwrap();

    let info = next("the active timeline's state", &mut mine).await;
    assert_eq!(info.safekeeper_id, NodeId(7));
    assert_eq!((info.tenant_id, info.timeline_id), active);
    assert_eq!(info.safekeeper_connstr, sk.pg_addr);
    assert_eq!(info.http_connstr, sk.http_addr);
    // Nothing was written: the WAL starts where the timeline does.
    assert_eq!(info.local_start_lsn, start_lsn);
    assert_eq!(info.term, 0);

    // About 2.5 seconds of everything published: the active timeline is
    // republished about once a second, the idle one never.
    let window = Instant::now() + Duration::from_millis(2500);
    let mut seen_active = 0;
    while let Ok(item) = tokio::time::timeout_at(window, all.next()).await {
        let info = item.expect("the subscription ended").unwrap();
        assert_ne!(
            (info.tenant_id, info.timeline_id),
            idle,
            "an idle timeline was published: {info:?}"
        );
        if (info.tenant_id, info.timeline_id) == active {
            assert_eq!(info.safekeeper_id, NodeId(7));
            seen_active += 1;
        }
    }
    assert!(
        seen_active >= 2,
        "the active timeline was published {seen_active} times in 2.5 s"
    );

    sk.shutdown(Duration::from_secs(3)).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuts_down_promptly_while_the_broker_is_unreachable() {
    logs();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let sk = TestSafekeeper::start(8, &endpoint).await;
    let timeline = sk.create_timeline(Lsn(0x0100_0028)).await;
    // The WAL service works meanwhile, and there is something to publish.
    let mut pg = sk.wal_push(timeline).await;
    let _push = within("START_WAL_PUSH", pg.copy_both("START_WAL_PUSH"))
        .await
        .unwrap();

    // It keeps retrying, with one warning for the whole outage.
    within("two retries", async {
        while log_lines(&[&endpoint, "failed again"]).len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let warnings = log_lines(&[&endpoint, "WARN"]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");

    sk.shutdown(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_resumes_when_the_broker_comes_up() {
    logs();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let sk = TestSafekeeper::start(9, &endpoint).await;
    let timeline = sk.create_timeline(Lsn(0x0100_0028)).await;
    let mut pg = sk.wal_push(timeline).await;
    let _push = within("START_WAL_PUSH", pg.copy_both("START_WAL_PUSH"))
        .await
        .unwrap();
    within("the outage to be reported", async {
        while log_lines(&[&endpoint, "WARN"]).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let broker = TestBroker::start(&endpoint).await;
    let client = broker.client().await;
    let mut mine = client.subscribe(timeline.0, timeline.1).await.unwrap();
    let info = next("the state once the broker is up", &mut mine).await;
    assert_eq!(info.safekeeper_id, NodeId(9));
    assert_eq!((info.tenant_id, info.timeline_id), timeline);
    within("the recovery to be logged", async {
        while log_lines(&[&endpoint, "again"])
            .iter()
            .all(|l| !l.contains("INFO"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(log_lines(&[&endpoint, "WARN"]).len(), 1);

    sk.shutdown(Duration::from_secs(3)).await;
    broker.shutdown().await;
}

#[test]
fn broker_config_keys() {
    let conf: SafeKeeperConf = serde_json::from_str(
        r#"{"broker_endpoint": "127.0.0.1:50051", "advertise_pg_addr": "sk1:5454",
            "advertise_http_addr": "sk1:7676"}"#,
    )
    .unwrap();
    assert_eq!(conf.broker_endpoint.as_deref(), Some("127.0.0.1:50051"));
    assert_eq!(conf.advertise_pg_addr.as_deref(), Some("sk1:5454"));
    assert_eq!(conf.advertise_http_addr.as_deref(), Some("sk1:7676"));
    let default: SafeKeeperConf = serde_json::from_str("{}").unwrap();
    assert_eq!(default.broker_endpoint, None);
    assert_eq!(default.advertise_pg_addr, None);
    let err = serde_json::from_str::<SafeKeeperConf>(r#"{"broker": "x"}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}
