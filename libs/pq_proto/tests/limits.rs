//! The query server's defences against clients that hold resources without
//! using them: sockets that never start up (they cannot keep a real client
//! out, and are closed at the startup deadline), a startup packet without
//! the authentication that should follow it, sessions idle between queries
//! (closed), and streams (never closed for being quiet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pq_proto::{
    connect, BeMessage, ColumnDesc, FeMessage, PostgresBackend, QueryError, QueryHandler,
    QueryOutcome, ServerConfig, StartupParams,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// `echo <word>` answers a row; `stream` echoes CopyData in COPY BOTH.
/// User `slow` is asked for a password (which it never sends, in these
/// tests).
struct Handler;

impl QueryHandler<TcpStream> for Handler {
    type Session = String;

    fn startup(&self, params: &StartupParams) -> Result<String, QueryError> {
        Ok(params.get("user").unwrap_or("").to_owned())
    }

    async fn authenticate(
        &self,
        user: &mut String,
        pgb: &mut PostgresBackend<TcpStream>,
    ) -> Result<(), QueryError> {
        if user == "slow" {
            pgb.write_message(&BeMessage::AuthenticationCleartextPassword)
                .await?;
            pgb.flush().await?;
            pgb.read_message().await?;
        }
        Ok(())
    }

    async fn query(
        &self,
        user: &mut String,
        pgb: &mut PostgresBackend<TcpStream>,
        query: &str,
    ) -> Result<QueryOutcome<TcpStream>, QueryError> {
        match query.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["echo", word] => {
                let row = vec![Some(format!("{user}:{word}"))];
                pgb.send_query_result(&[ColumnDesc::text("echo")], &[row])
                    .await?;
                Ok(QueryOutcome::Done)
            }
            ["stream"] => Ok(QueryOutcome::take_over(|mut pgb, cancel| async move {
                pgb.write_message(&BeMessage::CopyBothResponse(pq_proto::Format::Binary))
                    .await?;
                pgb.flush().await?;
                loop {
                    let message = tokio::select! {
                        _ = cancel.cancelled() => anyhow::bail!("stream cancelled"),
                        m = pgb.read_message() => m?,
                    };
                    match message {
                        Some(FeMessage::CopyData(data)) => {
                            pgb.write_message(&BeMessage::CopyData(&data)).await?;
                            pgb.flush().await?;
                        }
                        _ => return Ok(()),
                    }
                }
            })),
            _ => Err(QueryError::error("42601", "unknown query")),
        }
    }
}

struct Server {
    address: String,
    cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(config: ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    tokio::spawn(pq_proto::query_server::serve(
        listener,
        Arc::new(Handler),
        config,
        cancel.clone(),
    ));
    Server { address, cancel }
}

fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for s in ["user", user, ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut packet = (body.len() as i32 + 4).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// Everything the server sends until it closes the connection.
async fn read_until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server did not close the connection");
    received
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_neither_keeps_clients_out_nor_stays() {
    const PENDING: usize = 4;
    const FLOOD: usize = 12;
    let startup_timeout = Duration::from_secs(2);
    let server = start(ServerConfig {
        max_pending_connections: PENDING,
        startup_timeout,
        ..ServerConfig::new("test server", 3)
    })
    .await;
    // More silent sockets than the pending budget and the session budget.
    let opened = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(&server.address).await.unwrap());
    }
    // A real client still gets in, and its session works.
    let mut client = connect(&server.address, &[("user", "alice")], None)
        .await
        .expect("a client connects despite the flood");
    let rows = client.simple_query("echo hi").await.unwrap();
    assert_eq!(rows[0].values(), &[Some("alice:hi".to_owned())]);
    // Every silent socket is closed: the oldest ones evicted at once, the
    // rest at the startup deadline.
    for socket in &mut flood {
        assert!(read_until_closed(socket).await.is_empty());
    }
    let elapsed = opened.elapsed();
    assert!(
        elapsed < startup_timeout + Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    // The session outlives them.
    assert_eq!(client.simple_query("echo again").await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_startup_timeout_covers_authentication() {
    let startup_timeout = Duration::from_secs(1);
    let server = start(ServerConfig {
        startup_timeout,
        ..ServerConfig::new("test server", 8)
    })
    .await;
    let mut socket = TcpStream::connect(&server.address).await.unwrap();
    let started = Instant::now();
    socket.write_all(&startup_packet("slow")).await.unwrap();
    // Asked for a password, which never comes: closed at the deadline.
    let received = read_until_closed(&mut socket).await;
    assert_eq!(received.first(), Some(&b'R'), "{received:?}");
    assert!(started.elapsed() >= startup_timeout);
}

#[tokio::test]
async fn an_idle_session_is_closed_but_a_quiet_stream_is_not() {
    let idle_timeout = Duration::from_secs(1);
    let server = start(ServerConfig {
        idle_timeout: Some(idle_timeout),
        ..ServerConfig::new("test server", 8)
    })
    .await;

    let mut socket = TcpStream::connect(&server.address).await.unwrap();
    socket.write_all(&startup_packet("alice")).await.unwrap();
    let started = Instant::now();
    let received = read_until_closed(&mut socket).await;
    assert!(started.elapsed() >= idle_timeout);
    assert!(contains(&received, b"C57P05\0"), "{received:?}");
    assert!(contains(&received, b"idle-session timeout"), "{received:?}");

    // A stream is quiet for longer than the idle timeout and goes on.
    let mut client = connect(&server.address, &[("user", "bob")], None)
        .await
        .unwrap();
    let mut stream = client.copy_both("stream").await.unwrap();
    tokio::time::sleep(idle_timeout * 3).await;
    stream.send(b"ping").await.unwrap();
    stream.flush().await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, stream.recv())
        .await
        .expect("an answer")
        .unwrap()
        .unwrap();
    assert_eq!(&echoed[..], b"ping");
}
