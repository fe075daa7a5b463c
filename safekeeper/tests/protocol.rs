//! The safekeeper refuses bad input clearly and changes nothing: malformed
//! and out-of-order proposer messages, wrong ids, terms going backwards, a
//! deposed proposer, bad HTTP requests, bad WAL reader commands and too many
//! connections. Each test runs a real safekeeper in-process on free ports
//! with its own data directory, and checks the error text the client gets
//! as well as the control file and the files of the timeline directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pq_proto::{Client, ClientError, CopyBoth};
use reqwest::StatusCode;
use safekeeper::SafeKeeperConf;
use safekeeper_api::messages::{
    AcceptorMessage, AppendRequest, ProposerElected, ProposerGreeting, ProposerMessage,
    VoteResponse, PROTOCOL_VERSION,
};
use safekeeper_api::models::TimelineStatus;
use safekeeper_api::{Term, TermHistory, TermLsn};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utils::{Lsn, NodeId, TenantId, TimelineId};

/// How long any single wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(5);
/// WAL segment size of the timelines created here: small, so that a
/// `ProposerElected` (which creates and zeroes a segment) is cheap.
const SEG: u32 = 1 << 20;
const PG_VERSION: u32 = 150000;
/// Where proposers in these tests start their term.
const X: Lsn = Lsn(0x1000028);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A directory under the system temp directory, removed on drop (also when
/// the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sk-protocol-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A safekeeper running in this process.
struct Safekeeper {
    datadir: PathBuf,
    pg_addr: String,
    http_base: String,
    http: reqwest::Client,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: TempDir,
}

impl Safekeeper {
    async fn start(name: &str, max_connections: usize) -> Safekeeper {
        let dir = TempDir::new(name);
        let datadir = dir.0.join("data");
        let (pg_addr, http_addr) = (free_addr(), free_addr());
        let conf = SafeKeeperConf {
            id: NodeId(7),
            datadir: datadir.clone(),
            listen_pg_addr: pg_addr.clone(),
            listen_http_addr: http_addr.clone(),
            max_connections,
            ..SafeKeeperConf::default()
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(safekeeper::run(conf, cancel.clone()));
        // No idle pooled connections: shutdown need not wait for them.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(DEADLINE)
            .build()
            .unwrap();
        let sk = Safekeeper {
            datadir,
            pg_addr,
            http_base: format!("http://{http_addr}"),
            http,
            cancel,
            task,
            _dir: dir,
        };
        let started = tokio::time::Instant::now();
        loop {
            assert!(
                !sk.task.is_finished(),
                "the safekeeper exited while starting"
            );
            if let Ok(resp) = sk.http.get(sk.url("/v1/status")).send().await {
                if resp.status() == StatusCode::OK {
                    let doc: Value = resp.json().await.unwrap();
                    assert_eq!(doc["node_id"], 7);
                    break;
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the safekeeper did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sk
    }

    /// Cancel, and check that the safekeeper stops cleanly.
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the safekeeper did not stop")
            .expect("the safekeeper task panicked")
            .expect("the safekeeper failed");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http_base)
    }

    async fn create_timeline(&self, tenant: TenantId, timeline: TimelineId) {
        let resp = self
            .http
            .post(self.url(&format!("/v1/tenant/{tenant}/timeline")))
            .json(&json!({
                "timeline_id": timeline.to_string(),
                "pg_version": PG_VERSION,
                "wal_seg_size": SEG,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    async fn new_timeline(&self) -> (TenantId, TimelineId) {
        let ids = (TenantId::generate(), TimelineId::generate());
        self.create_timeline(ids.0, ids.1).await;
        ids
    }

    async fn status(&self, tenant: TenantId, timeline: TimelineId) -> TimelineStatus {
        let resp = self
            .http
            .get(self.url(&format!("/v1/tenant/{tenant}/timeline/{timeline}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// Wait until no walproposer or WAL reader is connected to the
    /// timeline: their connections have ended, with whatever they persist
    /// on the way out.
    async fn settle(&self, tenant: TenantId, timeline: TimelineId) {
        let started = tokio::time::Instant::now();
        loop {
            let s = self.status(tenant, timeline).await;
            if s.walproposers == 0 && s.walsenders == 0 {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "connections to the timeline did not end: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn timeline_dir(&self, tenant: TenantId, timeline: TimelineId) -> PathBuf {
        self.datadir
            .join(tenant.to_string())
            .join(timeline.to_string())
    }

    /// The control file's bytes and the names of the files beside it.
    fn snapshot(&self, tenant: TenantId, timeline: TimelineId) -> Snapshot {
        let dir = self.timeline_dir(tenant, timeline);
        Snapshot {
            control: std::fs::read(dir.join("safekeeper.control")).unwrap(),
            files: list(&dir),
        }
    }

    fn control_state(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
    ) -> safekeeper::acceptor::PersistentState {
        let bytes = std::fs::read(
            self.timeline_dir(tenant, timeline)
                .join("safekeeper.control"),
        )
        .unwrap();
        safekeeper::state_file::decode(&bytes).unwrap()
    }

    async fn connect(&self, tenant: TenantId, timeline: TimelineId) -> Client {
        let options = format!("-c tenant_id={tenant} -c timeline_id={timeline}");
        self.connect_with(&[("user", "t"), ("options", &options)])
            .await
            .unwrap()
    }

    async fn connect_with(&self, params: &[(&str, &str)]) -> Result<Client, ClientError> {
        tokio::time::timeout(DEADLINE, pq_proto::connect(&self.pg_addr, params, None))
            .await
            .expect("connecting timed out")
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    control: Vec<u8>,
    files: Vec<String>,
}

/// Sorted names in a directory (empty if it does not exist).
fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn greeting(tenant: TenantId, timeline: TimelineId, proposer: u8) -> ProposerMessage {
    ProposerMessage::Greeting(ProposerGreeting {
        protocol_version: PROTOCOL_VERSION,
        pg_version: PG_VERSION,
        proposer_id: [proposer; 16],
        system_id: 0,
        tenant_id: tenant,
        timeline_id: timeline,
        wal_seg_size: SEG,
    })
}

fn history(entries: &[(Term, Lsn)]) -> TermHistory {
    TermHistory(
        entries
            .iter()
            .map(|&(term, lsn)| TermLsn { term, lsn })
            .collect(),
    )
}

fn elected(term: Term, entries: &[(Term, Lsn)]) -> ProposerMessage {
    ProposerMessage::Elected(ProposerElected {
        term,
        start_streaming_at: X,
        term_history: history(entries),
        timeline_start_lsn: X,
    })
}

/// An append with no WAL at `at`: `begin == end`.
fn empty_append(term: Term, at: Lsn) -> ProposerMessage {
    ProposerMessage::Append(AppendRequest {
        term,
        begin_lsn: at,
        end_lsn: at,
        commit_lsn: Lsn(0),
        truncate_lsn: Lsn(0),
        wal_data: bytes::Bytes::new(),
    })
}

async fn send_raw(copy: &mut CopyBoth<'_>, bytes: &[u8]) {
    copy.send(bytes).await.unwrap();
    copy.flush().await.unwrap();
}

async fn send(copy: &mut CopyBoth<'_>, message: &ProposerMessage) {
    send_raw(copy, &message.encode()).await;
}

async fn recv(copy: &mut CopyBoth<'_>) -> AcceptorMessage {
    let data = tokio::time::timeout(DEADLINE, copy.recv())
        .await
        .expect("no reply from the safekeeper")
        .expect("the safekeeper refused")
        .expect("the safekeeper ended the stream");
    AcceptorMessage::decode(&data).unwrap()
}

/// Send, and get the reply.
async fn ask(copy: &mut CopyBoth<'_>, message: &ProposerMessage) -> AcceptorMessage {
    send(copy, message).await;
    recv(copy).await
}

async fn vote(copy: &mut CopyBoth<'_>, term: Term) -> VoteResponse {
    match ask(copy, &ProposerMessage::VoteRequest { term }).await {
        AcceptorMessage::Vote(v) => v,
        other => panic!("expected a vote response, got {other:?}"),
    }
}

/// The next thing on the stream must be an ErrorResponse containing
/// `expected`; returns the whole message.
async fn expect_refusal(copy: &mut CopyBoth<'_>, expected: &str) -> String {
    let result = tokio::time::timeout(DEADLINE, copy.recv())
        .await
        .expect("no answer from the safekeeper");
    match result {
        Err(ClientError::Server(fields)) => {
            assert!(
                fields.message.contains(expected),
                "error {:?} does not mention {expected:?}",
                fields.message
            );
            // The WAL push connection closes after a refusal: FATAL, as PostgreSQL says it.
            assert_eq!(fields.severity, "FATAL");
            fields.message
        }
        other => panic!("expected an error mentioning {expected:?}, got {other:?}"),
    }
}

fn server_error(result: Result<impl std::fmt::Debug, ClientError>, expected: &str) -> String {
    match result {
        Err(ClientError::Server(fields)) => {
            assert!(
                fields.message.contains(expected),
                "error {:?} does not mention {expected:?}",
                fields.message
            );
            fields.message
        }
        other => panic!("expected an error mentioning {expected:?}, got {other:?}"),
    }
}

/// Greet (as `proposer`) on a fresh WAL push connection and send
/// `messages`; the last one must be refused with an error mentioning
/// `expected`, and the control file and the timeline's files must be as
/// they were once the greeting was answered. (The acceptor writes before
/// it answers, so the error means it is done.)
async fn refused_after_greeting(
    sk: &Safekeeper,
    tenant: TenantId,
    timeline: TimelineId,
    proposer: u8,
    messages: &[ProposerMessage],
    expected: &str,
) {
    let mut client = sk.connect(tenant, timeline).await;
    let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
    assert!(matches!(
        ask(&mut copy, &greeting(tenant, timeline, proposer)).await,
        AcceptorMessage::Greeting { .. }
    ));
    let before = sk.snapshot(tenant, timeline);
    for m in messages {
        send(&mut copy, m).await;
    }
    expect_refusal(&mut copy, expected).await;
    assert_eq!(sk.snapshot(tenant, timeline), before, "after {expected:?}");
}

/// A well-formed proposer is still served: greeting answered with `term`.
async fn greeting_works(sk: &Safekeeper, tenant: TenantId, timeline: TimelineId, term: Term) {
    let mut client = sk.connect(tenant, timeline).await;
    let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
    match ask(&mut copy, &greeting(tenant, timeline, 1)).await {
        AcceptorMessage::Greeting { term: t, node_id } => {
            assert_eq!((t, node_id), (term, NodeId(7)));
        }
        other => panic!("expected a greeting, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Malformed proposer messages
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_proposer_messages_are_refused() {
    let sk = Safekeeper::start("malformed", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;

    let greeting_bytes = greeting(tenant, timeline, 1).encode();
    let mut vote_with_trailer = ProposerMessage::VoteRequest { term: 1 }.encode().to_vec();
    vote_with_trailer.push(0);
    // An append claiming 10 bytes of WAL but carrying 5.
    let short_append = ProposerMessage::Append(AppendRequest {
        term: 1,
        begin_lsn: X,
        end_lsn: X + 10,
        commit_lsn: Lsn(0),
        truncate_lsn: Lsn(0),
        wal_data: bytes::Bytes::from_static(b"abcde"),
    })
    .encode()
    .to_vec();
    // And one whose end is before its begin.
    let backwards_append = ProposerMessage::Append(AppendRequest {
        term: 1,
        begin_lsn: X,
        end_lsn: Lsn(X.0 - 1),
        commit_lsn: Lsn(0),
        truncate_lsn: Lsn(0),
        wal_data: bytes::Bytes::new(),
    })
    .encode()
    .to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"\xde\xad\xbe\xef not a message".to_vec(),
            "unknown message tag 0xde",
        ),
        (
            "unknown tag",
            b"x\x01\x00\x00\x00".to_vec(),
            "unknown message tag 0x78",
        ),
        ("empty", Vec::new(), "empty message"),
        (
            "truncated greeting",
            greeting_bytes[..30].to_vec(),
            "is truncated",
        ),
        (
            "trailing bytes",
            vote_with_trailer,
            "unexpected trailing bytes",
        ),
        (
            "append length mismatch",
            short_append,
            "append request carries 5 bytes of WAL for 0/1000028..0/1000032",
        ),
        (
            "append ending before it begins",
            backwards_append,
            "carries 0 bytes of WAL",
        ),
    ];

    let before = sk.snapshot(tenant, timeline);
    for (name, bytes, expected) in &cases {
        // As the first message.
        let mut client = sk.connect(tenant, timeline).await;
        let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
        send_raw(&mut copy, bytes).await;
        let message = expect_refusal(&mut copy, expected).await;
        assert!(
            message.contains("decoding a proposer message"),
            "{name}: {message}"
        );
        drop(client);
        sk.settle(tenant, timeline).await;
        assert_eq!(sk.snapshot(tenant, timeline), before, "{name}");
    }

    // After a greeting and an election, a malformed message still changes
    // nothing (compared with the state once the election was processed).
    {
        let mut client = sk.connect(tenant, timeline).await;
        let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
        ask(&mut copy, &greeting(tenant, timeline, 1)).await;
        assert!(vote(&mut copy, 1).await.vote_given);
        send(&mut copy, &elected(1, &[(1, X)])).await;
        // The empty append's reply shows the election was processed.
        match ask(&mut copy, &empty_append(1, X)).await {
            AcceptorMessage::Append(a) => assert_eq!((a.term, a.flush_lsn), (1, X)),
            other => panic!("expected an append response, got {other:?}"),
        }
        let elected_state = sk.snapshot(tenant, timeline);
        assert_ne!(elected_state, before);
        for (name, bytes, expected) in &cases {
            if *name == "empty" {
                continue;
            }
            let mut client = sk.connect(tenant, timeline).await;
            let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
            ask(&mut copy, &greeting(tenant, timeline, 1)).await;
            send_raw(&mut copy, bytes).await;
            expect_refusal(&mut copy, expected).await;
        }
        drop(client);
        sk.settle(tenant, timeline).await;
        assert_eq!(sk.snapshot(tenant, timeline), elected_state);
    }

    // A greeting in another protocol version.
    let mut old = greeting(tenant, timeline, 1);
    if let ProposerMessage::Greeting(g) = &mut old {
        g.protocol_version = PROTOCOL_VERSION + 1;
    }
    let before = sk.snapshot(tenant, timeline);
    {
        let mut client = sk.connect(tenant, timeline).await;
        let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
        send(&mut copy, &old).await;
        expect_refusal(&mut copy, "unsupported protocol version 2").await;
    }
    sk.settle(tenant, timeline).await;
    assert_eq!(sk.snapshot(tenant, timeline), before);

    // The safekeeper keeps serving.
    greeting_works(&sk, tenant, timeline, 1).await;
    sk.stop().await;
}

// ---------------------------------------------------------------------------
// 2. The first message must be a greeting
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_message_must_be_a_greeting() {
    let sk = Safekeeper::start("greeting-first", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;
    let before = sk.snapshot(tenant, timeline);
    for first in [
        ProposerMessage::VoteRequest { term: 1 },
        elected(1, &[(1, X)]),
        empty_append(1, X),
    ] {
        let mut client = sk.connect(tenant, timeline).await;
        let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
        send(&mut copy, &first).await;
        let message = expect_refusal(&mut copy, "before a greeting").await;
        assert!(message.contains("the first message"), "{message}");
    }
    sk.settle(tenant, timeline).await;
    assert_eq!(sk.snapshot(tenant, timeline), before);
    assert_eq!(sk.status(tenant, timeline).await.term, 0);
    greeting_works(&sk, tenant, timeline, 0).await;
    sk.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Wrong ids
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ids_are_refused() {
    let sk = Safekeeper::start("wrong-ids", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;
    let before = sk.snapshot(tenant, timeline);
    let datadir_before = list(&sk.datadir);

    // A greeting for another timeline (or tenant) on this timeline's connection.
    let other_timeline = TimelineId::generate();
    let other_tenant = TenantId::generate();
    for (t, tl) in [
        (tenant, other_timeline),
        (other_tenant, timeline),
        (other_tenant, other_timeline),
    ] {
        let mut client = sk.connect(tenant, timeline).await;
        let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
        send(&mut copy, &greeting(t, tl, 1)).await;
        let message = expect_refusal(
            &mut copy,
            &format!("greeting for {t}/{tl} reached timeline {tenant}/{timeline}"),
        )
        .await;
        assert!(!message.is_empty());
    }
    sk.settle(tenant, timeline).await;
    assert_eq!(sk.snapshot(tenant, timeline), before);

    // An unknown timeline in the startup options: refused, nothing created,
    // and the connection stays usable.
    {
        let mut client = sk.connect(tenant, other_timeline).await;
        let message = server_error(
            client.copy_both("START_WAL_PUSH").await.map(|_| ()),
            "not found",
        );
        assert!(
            message.contains(&format!("{tenant}/{other_timeline}")),
            "{message}"
        );
        let message = server_error(client.simple_query("IDENTIFY_SYSTEM").await, "not found");
        assert!(message.contains(&other_timeline.to_string()), "{message}");
        let mut client = sk.connect(other_tenant, other_timeline).await;
        server_error(
            client.copy_both("START_WAL_PUSH").await.map(|_| ()),
            "not found",
        );
        server_error(
            client.copy_both("START_REPLICATION 0/0").await.map(|_| ()),
            "not found",
        );
    }
    assert_eq!(list(&sk.datadir), datadir_before);
    assert_eq!(list(&sk.timeline_dir(tenant, timeline)), before.files);
    assert!(!sk.datadir.join(other_tenant.to_string()).exists());
    assert!(!sk.timeline_dir(tenant, other_timeline).exists());

    // No tenant or timeline: the error says how to pass them.
    let tenant_only = format!("-c tenant_id={tenant}");
    let timeline_only = format!("timeline_id={timeline}");
    for params in [
        vec![("user", "t")],
        vec![("user", "t"), ("options", tenant_only.as_str())],
        vec![("user", "t"), ("options", timeline_only.as_str())],
    ] {
        let mut client = sk.connect_with(&params).await.unwrap();
        let message = server_error(
            client.copy_both("START_WAL_PUSH").await.map(|_| ()),
            "needs tenant_id and timeline_id in the startup packet",
        );
        assert!(
            message.contains("options='-c tenant_id=<hex> -c timeline_id=<hex>'"),
            "{message}"
        );
    }

    // Invalid hex: refused at startup.
    let bad_tenant = format!("-c tenant_id=xyz -c timeline_id={timeline}");
    let bad_timeline = format!(
        "-c tenant_id={tenant} -c timeline_id={}",
        &timeline.to_string()[..31]
    );
    for (options, expected) in [
        (bad_tenant.as_str(), "invalid tenant id \"xyz\""),
        (bad_timeline.as_str(), "invalid timeline id"),
    ] {
        let result = sk
            .connect_with(&[("user", "t"), ("options", options)])
            .await;
        let message = server_error(result, expected);
        assert!(message.contains("32 hexadecimal digits"), "{message}");
        assert!(message.contains("startup packet"), "{message}");
    }

    sk.settle(tenant, timeline).await;
    assert_eq!(list(&sk.datadir), datadir_before);
    assert_eq!(sk.snapshot(tenant, timeline), before);
    greeting_works(&sk, tenant, timeline, 0).await;
    sk.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Terms never go backwards
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_never_go_backwards() {
    let sk = Safekeeper::start("terms", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;

    let mut client = sk.connect(tenant, timeline).await;
    let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
    ask(&mut copy, &greeting(tenant, timeline, 1)).await;
    let v = vote(&mut copy, 5).await;
    assert!(v.vote_given);
    assert_eq!(v.term, 5);
    // Persisted before the answer.
    assert_eq!(sk.control_state(tenant, timeline).term, 5);
    assert_eq!(sk.status(tenant, timeline).await.term, 5);
    let voted = sk.snapshot(tenant, timeline);

    // A lower term, and the same term again: no vote, nothing written.
    for term in [3, 5] {
        let v = vote(&mut copy, term).await;
        assert!(!v.vote_given, "vote given again in term {term}");
        assert_eq!(v.term, 5);
        assert_eq!(sk.snapshot(tenant, timeline), voted);
    }

    // A proposer of term 3 elected: refused.
    send(&mut copy, &elected(3, &[(3, X)])).await;
    expect_refusal(&mut copy, "term 3 is lower than this safekeeper's term 5").await;
    drop(client);

    // An append of term 3, and one of term 5 before any proposer of term 5
    // was elected on this safekeeper.
    refused_after_greeting(
        &sk,
        tenant,
        timeline,
        1,
        &[empty_append(3, Lsn(0))],
        "term 3 is lower than this safekeeper's term 5",
    )
    .await;
    refused_after_greeting(
        &sk,
        tenant,
        timeline,
        1,
        &[empty_append(5, Lsn(0))],
        "append in term 5 before this safekeeper accepted a proposer of that term",
    )
    .await;
    // And an append of a term this safekeeper never heard of.
    refused_after_greeting(
        &sk,
        tenant,
        timeline,
        1,
        &[empty_append(9, Lsn(0))],
        "append in term 9 before",
    )
    .await;
    // An election whose history does not end in the proposer's term, or
    // goes backwards.
    refused_after_greeting(
        &sk,
        tenant,
        timeline,
        1,
        &[elected(5, &[(4, X)])],
        "invalid term history from proposer: it ends in term 4, not the proposer's term 5",
    )
    .await;
    refused_after_greeting(
        &sk,
        tenant,
        timeline,
        1,
        &[elected(5, &[(5, X), (4, X)])],
        "terms must increase",
    )
    .await;

    sk.settle(tenant, timeline).await;
    assert_eq!(sk.snapshot(tenant, timeline), voted);
    let status = sk.status(tenant, timeline).await;
    assert_eq!(status.term, 5);
    assert!(status.term_history.0.is_empty());
    assert_eq!(status.flush_lsn, Lsn(0));
    greeting_works(&sk, tenant, timeline, 5).await;
    sk.stop().await;
}

/// LSNs near the top of the LSN space are refused before anything is
/// written: accepted, they would be persisted, and every later append's
/// arithmetic on them would overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsns_past_the_greatest_are_refused() {
    let sk = Safekeeper::start("lsn-range", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;
    let top = Lsn(u64::MAX - 3);
    let cases: Vec<(ProposerMessage, &str)> = vec![
        (
            ProposerMessage::Elected(ProposerElected {
                term: 5,
                start_streaming_at: top,
                term_history: history(&[(5, top)]),
                timeline_start_lsn: X,
            }),
            "start_streaming_at FFFFFFFF/FFFFFFFC is beyond the greatest LSN",
        ),
        (
            ProposerMessage::Elected(ProposerElected {
                term: 5,
                start_streaming_at: X,
                term_history: history(&[(5, X)]),
                timeline_start_lsn: top,
            }),
            "timeline_start_lsn FFFFFFFF/FFFFFFFC is beyond",
        ),
    ];
    for (message, expected) in cases {
        refused_after_greeting(&sk, tenant, timeline, 1, &[message], expected).await;
    }
    // Elected properly, an append whose commit LSN is past the top is
    // refused too, and the timeline goes on.
    let mut client = sk.connect(tenant, timeline).await;
    let mut copy = client.copy_both("START_WAL_PUSH").await.unwrap();
    ask(&mut copy, &greeting(tenant, timeline, 1)).await;
    assert!(vote(&mut copy, 5).await.vote_given);
    send(&mut copy, &elected(5, &[(5, X)])).await;
    send(
        &mut copy,
        &ProposerMessage::Append(AppendRequest {
            term: 5,
            begin_lsn: X,
            end_lsn: X,
            commit_lsn: top,
            truncate_lsn: Lsn(0),
            wal_data: bytes::Bytes::new(),
        }),
    )
    .await;
    expect_refusal(&mut copy, "commit_lsn FFFFFFFF/FFFFFFFC is beyond").await;
    drop(client);
    sk.settle(tenant, timeline).await;
    let status = sk.status(tenant, timeline).await;
    assert_eq!(status.term, 5);
    assert_eq!(status.commit_lsn, Lsn(0));
    greeting_works(&sk, tenant, timeline, 5).await;
    sk.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Two proposers: the deposed one is refused
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_proposer_is_refused() {
    let sk = Safekeeper::start("two-proposers", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;

    let mut client_a = sk.connect(tenant, timeline).await;
    let mut a = client_a.copy_both("START_WAL_PUSH").await.unwrap();
    ask(&mut a, &greeting(tenant, timeline, 0xa)).await;
    assert!(vote(&mut a, 1).await.vote_given);
    send(&mut a, &elected(1, &[(1, X)])).await;
    match ask(&mut a, &empty_append(1, X)).await {
        AcceptorMessage::Append(r) => assert_eq!((r.term, r.flush_lsn), (1, X)),
        other => panic!("expected an append response, got {other:?}"),
    }

    let mut client_b = sk.connect(tenant, timeline).await;
    let mut b = client_b.copy_both("START_WAL_PUSH").await.unwrap();
    match ask(&mut b, &greeting(tenant, timeline, 0xb)).await {
        AcceptorMessage::Greeting { term, .. } => assert_eq!(term, 1),
        other => panic!("expected a greeting, got {other:?}"),
    }
    let v = vote(&mut b, 2).await;
    assert!(v.vote_given);
    assert_eq!(v.term, 2);
    assert_eq!(v.flush_lsn, X);
    assert_eq!(v.term_history, history(&[(1, X)]));
    assert_eq!(v.timeline_start_lsn, X);
    assert_eq!(sk.control_state(tenant, timeline).term, 2);
    let after_b_vote = sk.snapshot(tenant, timeline);

    // A, still thinking it leads term 1.
    send(&mut a, &empty_append(1, X)).await;
    expect_refusal(&mut a, "term 1 is lower than this safekeeper's term 2").await;
    drop(client_a);
    assert_eq!(sk.snapshot(tenant, timeline), after_b_vote);
    // A, on a new connection, announcing itself elected in term 1 again.
    refused_after_greeting(
        &sk,
        tenant,
        timeline,
        0xa,
        &[elected(1, &[(1, X)])],
        "term 1 is lower than this safekeeper's term 2",
    )
    .await;
    // A's greeting recorded it as the last proposer; nothing else changed.
    let mut state = sk.control_state(tenant, timeline);
    assert_eq!(state.proposer_id, [0xa; 16]);
    state.proposer_id = [0xb; 16];
    assert_eq!(
        state,
        safekeeper::state_file::decode(&after_b_vote.control).unwrap()
    );
    assert_eq!(sk.snapshot(tenant, timeline).files, after_b_vote.files);

    // B goes on.
    send(&mut b, &elected(2, &[(1, X), (2, X)])).await;
    match ask(&mut b, &empty_append(2, X)).await {
        AcceptorMessage::Append(r) => assert_eq!((r.term, r.flush_lsn), (2, X)),
        other => panic!("expected an append response, got {other:?}"),
    }
    let status = sk.status(tenant, timeline).await;
    assert_eq!(status.term, 2);
    assert_eq!(status.term_history, history(&[(1, X), (2, X)]));
    assert_eq!(status.walproposers, 1);
    sk.stop().await;
}

// ---------------------------------------------------------------------------
// 6. HTTP API
// ---------------------------------------------------------------------------

async fn json_error(resp: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status);
    let doc: Value = resp.json().await.unwrap();
    doc["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {doc}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_refuses_bad_requests() {
    let sk = Safekeeper::start("http", 100).await;
    let tenant = TenantId::generate();
    let (t1, t2) = (TimelineId::generate(), TimelineId::generate());
    let create_url = sk.url(&format!("/v1/tenant/{tenant}/timeline"));
    let create = |timeline: String, pg_version: u32| {
        sk.http
            .post(&create_url)
            .json(&json!({ "timeline_id": timeline, "pg_version": pg_version }))
            .send()
    };

    // Created with the defaults, then again: 409.
    let resp = create(t1.to_string(), PG_VERSION).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: TimelineStatus = resp.json().await.unwrap();
    assert_eq!((created.tenant_id, created.timeline_id), (tenant, t1));
    assert_eq!(created.wal_seg_size, 16 << 20);
    let before = sk.snapshot(tenant, t1);
    let message = json_error(
        create(t1.to_string(), PG_VERSION).await.unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert!(message.contains("already exists"), "{message}");
    assert!(message.contains(&t1.to_string()), "{message}");
    assert_eq!(sk.snapshot(tenant, t1), before);
    let datadir_before = list(&sk.datadir);
    let tenant_dir_before = list(&sk.datadir.join(tenant.to_string()));

    // A bad tenant id in the path.
    let resp = sk
        .http
        .post(sk.url("/v1/tenant/not-a-tenant/timeline"))
        .json(&json!({ "timeline_id": t2.to_string(), "pg_version": PG_VERSION }))
        .send()
        .await
        .unwrap();
    let message = json_error(resp, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("invalid tenant id"), "{message}");

    // A bad timeline id, an unsupported PostgreSQL version, a bad segment size.
    let message = json_error(
        create("1234".into(), PG_VERSION).await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("timeline"), "{message}");
    let message = json_error(
        create(t2.to_string(), 90600).await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("invalid timeline request"), "{message}");
    let resp = sk
        .http
        .post(&create_url)
        .json(&json!({ "timeline_id": t2.to_string(), "pg_version": PG_VERSION, "wal_seg_size": 12345 }))
        .send()
        .await
        .unwrap();
    let message = json_error(resp, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("WAL segment size 12345"), "{message}");
    // A start LSN no later arithmetic could add to.
    let resp = sk
        .http
        .post(&create_url)
        .json(&json!({ "timeline_id": t2.to_string(), "pg_version": PG_VERSION, "wal_seg_size": SEG, "start_lsn": "FFFFFFFF/FFFFFFFF" }))
        .send()
        .await
        .unwrap();
    let message = json_error(resp, StatusCode::BAD_REQUEST).await;
    assert!(message.contains("beyond the greatest LSN"), "{message}");
    // Not JSON at all.
    let resp = sk
        .http
        .post(&create_url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    json_error(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(list(&sk.datadir), datadir_before);
    assert_eq!(
        list(&sk.datadir.join(tenant.to_string())),
        tenant_dir_before
    );
    assert!(!sk.timeline_dir(tenant, t2).exists());

    // Unknown timeline: 404; bad ids in the path: 400.
    let message = json_error(
        sk.http
            .get(sk.url(&format!("/v1/tenant/{tenant}/timeline/{t2}")))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(message.contains("not found"), "{message}");
    let message = json_error(
        sk.http
            .get(sk.url(&format!("/v1/tenant/{tenant}/timeline/xyz")))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("invalid timeline id"), "{message}");

    // The list holds what was created.
    sk.create_timeline(tenant, t2).await;
    let other = sk.new_timeline().await;
    let listed: Vec<TimelineStatus> = sk
        .http
        .get(sk.url("/v1/timeline"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<(TenantId, TimelineId)> = listed
        .iter()
        .map(|s| (s.tenant_id, s.timeline_id))
        .collect();
    ids.sort();
    let mut expected = vec![(tenant, t1), (tenant, t2), other];
    expected.sort();
    assert_eq!(ids, expected);

    // DELETE removes the directory; then the timeline is gone.
    let timeline_url = sk.url(&format!("/v1/tenant/{tenant}/timeline/{t1}"));
    let resp = sk.http.delete(&timeline_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!sk.timeline_dir(tenant, t1).exists());
    assert!(sk.timeline_dir(tenant, t2).exists());
    json_error(
        sk.http.get(&timeline_url).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    json_error(
        sk.http.delete(&timeline_url).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    let listed: Vec<TimelineStatus> = sk
        .http
        .get(sk.url("/v1/timeline"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    // And the WAL service no longer knows it.
    let mut client = sk.connect(tenant, t1).await;
    server_error(
        client.copy_both("START_WAL_PUSH").await.map(|_| ()),
        "not found",
    );
    sk.stop().await;
}

// ---------------------------------------------------------------------------
// 7. WAL readers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_reader_errors() {
    let sk = Safekeeper::start("readers", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;

    // Without timeline options: an error, and the connection stays usable.
    let mut client = sk.connect_with(&[("user", "t")]).await.unwrap();
    server_error(
        client.simple_query("IDENTIFY_SYSTEM").await,
        "this command needs tenant_id and timeline_id",
    );
    server_error(
        client.simple_query("IDENTIFY_SYSTEM").await,
        "this command needs tenant_id and timeline_id",
    );
    server_error(
        client.simple_query("SELECT 1").await,
        "unsupported command \"SELECT 1\"",
    );

    // Unknown and malformed commands, then a good one on the same connection.
    let mut client = sk.connect(tenant, timeline).await;
    for (query, expected) in [
        ("SELECT 1", "unsupported command"),
        ("START_REPLICATION x/y", "parsing the start LSN"),
        ("START_REPLICATION", "invalid START_REPLICATION command"),
    ] {
        let message = server_error(client.simple_query(query).await, expected);
        assert!(
            !query.starts_with("SELECT") || message.contains("START_WAL_PUSH"),
            "{message}"
        );
    }
    let rows = client.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get_by_name("xlogpos"), Some("0/0"));
    assert_eq!(rows[0].get_by_name("timeline"), Some("1"));

    // Elect a proposer at X, then ask for WAL below the local start.
    let mut push_client = sk.connect(tenant, timeline).await;
    let mut push = push_client.copy_both("START_WAL_PUSH").await.unwrap();
    ask(&mut push, &greeting(tenant, timeline, 1)).await;
    assert!(vote(&mut push, 1).await.vote_given);
    send(&mut push, &elected(1, &[(1, X)])).await;
    ask(&mut push, &empty_append(1, X)).await;
    drop(push_client);
    sk.settle(tenant, timeline).await;
    let before = sk.snapshot(tenant, timeline);

    // The refusal is checked on the wire: the safekeeper closes the
    // connection right after its ErrorResponse, without ReadyForQuery, and
    // pq_proto's client then reports only the unexpected end of the stream
    // (see `start_replication_refusal_reaches_the_client`).
    let options = format!("-c tenant_id={tenant} -c timeline_id={timeline}");
    let answer = raw_query(
        &sk.pg_addr,
        &[("user", "t"), ("options", &options)],
        "START_REPLICATION PHYSICAL 0/0",
    )
    .await;
    let error = answer
        .iter()
        .find_map(|(tag, body)| (*tag == b'E').then(|| error_message(body)))
        .unwrap_or_else(|| panic!("no ErrorResponse in {answer:?}"));
    assert_eq!(
        error,
        "requested WAL at 0/0 is not on this safekeeper, its WAL begins at 0/1000028"
    );
    assert!(
        !answer.iter().any(|(tag, _)| *tag == b'W'),
        "streaming started: {answer:?}"
    );
    // At or above the local start, streaming begins.
    let mut reader = sk.connect(tenant, timeline).await;
    reader
        .copy_both(&format!("START_REPLICATION PHYSICAL {X}"))
        .await
        .unwrap();
    assert_eq!(sk.status(tenant, timeline).await.walsenders, 1);
    drop(reader);
    sk.settle(tenant, timeline).await;
    assert_eq!(sk.snapshot(tenant, timeline), before);
    assert_eq!(sk.status(tenant, timeline).await.walsenders, 0);
    sk.stop().await;
}

/// Sends a startup packet with `params` and, once the server is ready,
/// `query`; returns the backend messages (tag, body) that answer the query,
/// up to ReadyForQuery or the end of the stream.
async fn raw_query(addr: &str, params: &[(&str, &str)], query: &str) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_message(stream: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        match stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading from the safekeeper: {e}"),
        }
        let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
        assert!((4..1 << 20).contains(&len), "bad message length {len}");
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.unwrap();
        Some((header[0], body))
    }

    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut body = 196608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            for s in [k, v] {
                body.extend_from_slice(s.as_bytes());
                body.push(0);
            }
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        stream.write_all(&packet).await.unwrap();
        loop {
            let (tag, body) = read_message(&mut stream)
                .await
                .expect("connection closed during startup");
            assert_ne!(tag, b'E', "startup refused: {}", error_message(&body));
            if tag == b'Z' {
                break;
            }
        }
        let mut packet = vec![b'Q'];
        packet.extend_from_slice(&((query.len() + 5) as u32).to_be_bytes());
        packet.extend_from_slice(query.as_bytes());
        packet.push(0);
        stream.write_all(&packet).await.unwrap();
        let mut answer = Vec::new();
        while let Some((tag, body)) = read_message(&mut stream).await {
            answer.push((tag, body));
            if tag == b'Z' {
                break;
            }
        }
        answer
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("no answer from the safekeeper")
}

/// The `M` field of an ErrorResponse body.
fn error_message(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"M"))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

/// A refused `START_REPLICATION` should reach a client as a server error
/// with its text. Today the safekeeper sends an ERROR-severity
/// ErrorResponse and closes the connection without ReadyForQuery
/// (`send_wal::handle`), so `pq_proto`'s client reports only
/// "connection closed unexpectedly".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_replication_refusal_reaches_the_client() {
    let sk = Safekeeper::start("replication-refusal", 100).await;
    let (tenant, timeline) = sk.new_timeline().await;
    let mut push_client = sk.connect(tenant, timeline).await;
    let mut push = push_client.copy_both("START_WAL_PUSH").await.unwrap();
    ask(&mut push, &greeting(tenant, timeline, 1)).await;
    assert!(vote(&mut push, 1).await.vote_given);
    send(&mut push, &elected(1, &[(1, X)])).await;
    ask(&mut push, &empty_append(1, X)).await;
    drop(push_client);

    let mut reader = sk.connect(tenant, timeline).await;
    let result = tokio::time::timeout(DEADLINE, reader.copy_both("START_REPLICATION PHYSICAL 0/0"))
        .await
        .expect("no answer to START_REPLICATION");
    server_error(
        result.map(|_| ()),
        "requested WAL at 0/0 is not on this safekeeper",
    );
    sk.stop().await;
}

// ---------------------------------------------------------------------------
// 8. Too many connections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_are_refused() {
    let sk = Safekeeper::start("max-connections", 2).await;
    let (tenant, timeline) = sk.new_timeline().await;
    let first = sk.connect(tenant, timeline).await;
    let mut second = sk.connect(tenant, timeline).await;
    let third = sk.connect_with(&[("user", "t")]).await;
    let err = third
        .as_ref()
        .err()
        .and_then(ClientError::code)
        .map(str::to_owned);
    server_error(third, "too many connections");
    assert_eq!(err.as_deref(), Some("53300"));

    // The held connections still work.
    second.simple_query("IDENTIFY_SYSTEM").await.unwrap();

    // Once one closes, a new connection is accepted again.
    first.close().await.unwrap();
    let started = tokio::time::Instant::now();
    let mut again = loop {
        match sk.connect_with(&[("user", "t")]).await {
            Ok(client) => break client,
            Err(ClientError::Server(f)) if f.message.contains("too many connections") => {
                assert!(started.elapsed() < DEADLINE, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    server_error(again.simple_query("SELECT 1").await, "unsupported command");
    drop(second);
    drop(again);
    sk.stop().await;
}
