//! The query server over real sockets, with a small handler: startup and
//! parameters, errors and the session after them, FATAL, refused startup
//! parameters, cancellation of a running query and of a stream, the
//! connection limit, shutdown.

use std::sync::Arc;
use std::time::Duration;

use pq_proto::client::send_cancel_request;
use pq_proto::{
    connect, BeMessage, Client, ClientError, ColumnDesc, PostgresBackend, QueryError, QueryHandler,
    QueryOutcome, ServerConfig, StartupParams,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// `echo <word>` answers one row; `wait` runs until cancelled; `fail` and
/// `fatal` fail; `stream` takes the connection over in COPY BOTH, echoing
/// CopyData until cancelled. User `nobody` is refused.
struct TestHandler;

impl QueryHandler<TcpStream> for TestHandler {
    type Session = String;

    fn startup(&self, params: &StartupParams) -> Result<String, QueryError> {
        match params.get("user") {
            Some("nobody") | None => Err(QueryError::fatal("28000", "who are you?")),
            Some(user) => Ok(user.to_owned()),
        }
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
            ["wait"] => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            ["fail"] => Err(anyhow::anyhow!("it failed").context("running fail").into()),
            ["fatal"] => Err(QueryError::fatal("XX000", "fatal by request")),
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
                        Some(pq_proto::FeMessage::CopyData(data)) => {
                            pgb.write_message(&BeMessage::CopyData(&data)).await?;
                            pgb.flush().await?;
                        }
                        _ => return Ok(()),
                    }
                }
            })),
            _ => Err(QueryError::error(
                "42601",
                format!("unknown query {query:?}"),
            )),
        }
    }
}

struct Server {
    address: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(max_connections: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    let config = ServerConfig::new("test server", max_connections);
    let task = tokio::spawn(pq_proto::query_server::serve(
        listener,
        Arc::new(TestHandler),
        config,
        cancel.clone(),
    ));
    Server {
        address,
        cancel,
        task,
    }
}

async fn client(server: &Server) -> Result<Client, ClientError> {
    connect(&server.address, &[("user", "alice")], None).await
}

fn server_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> pq_proto::ErrorFields {
    match result {
        Err(ClientError::Server(fields)) => *fields,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn queries_errors_and_fatal() {
    let server = start(8).await;
    let mut c = client(&server).await.unwrap();
    assert_eq!(c.parameter("server_version"), Some("15.0"));
    assert!(c.cancel_key().is_some(), "BackendKeyData was sent");
    let rows = c.simple_query("echo hi").await.unwrap();
    assert_eq!(rows[0].values(), &[Some("alice:hi".to_owned())]);

    // An error fails the query; the session goes on.
    let e = server_error(c.simple_query("fail").await);
    assert_eq!((e.severity.as_str(), e.code.as_str()), ("ERROR", "XX000"));
    assert_eq!(e.message, "running fail: it failed");
    let e = server_error(c.simple_query("nonsense").await);
    assert_eq!(e.code, "42601");
    assert_eq!(c.simple_query("echo again").await.unwrap().len(), 1);

    // FATAL ends the connection.
    let e = server_error(c.simple_query("fatal").await);
    assert_eq!(e.severity, "FATAL");
    assert!(c.simple_query("echo x").await.is_err());

    // Refused startup parameters: FATAL before AuthenticationOk.
    let e = server_error(connect(&server.address, &[("user", "nobody")], None).await);
    assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "28000"));
    server.cancel.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancel_request_cancels_the_running_query_only() {
    let server = start(8).await;
    let mut c = client(&server).await.unwrap();
    let mut other = client(&server).await.unwrap();
    let key = c.cancel_key().unwrap();

    // A cancel request with a wrong secret does nothing.
    let wrong = pq_proto::CancelKey {
        process_id: key.process_id,
        secret_key: key.secret_key.wrapping_add(1),
    };
    send_cancel_request(&server.address, wrong).await.unwrap();

    let address = server.address.clone();
    let canceller = tokio::spawn(async move {
        // The query may not have started yet: cancel until it is.
        loop {
            send_cancel_request(&address, key).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let e = server_error(
        tokio::time::timeout(DEADLINE, c.simple_query("wait"))
            .await
            .expect("the cancel request ended the query"),
    );
    canceller.abort();
    assert_eq!((e.severity.as_str(), e.code.as_str()), ("ERROR", "57014"));
    // The session goes on, and the other connection was not touched.
    assert_eq!(c.simple_query("echo after").await.unwrap().len(), 1);
    assert_eq!(other.simple_query("echo other").await.unwrap().len(), 1);

    // A stream ends when cancelled.
    let mut s = client(&server).await.unwrap();
    let key = s.cancel_key().unwrap();
    let mut stream = s.copy_both("stream").await.unwrap();
    stream.send(b"ping").await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(&stream.recv().await.unwrap().unwrap()[..], b"ping");
    send_cancel_request(&server.address, key).await.unwrap();
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(_)) = stream.recv().await {}
    })
    .await;
    assert!(ended.is_ok(), "the cancelled stream ended");
    server.cancel.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn connection_limit_and_shutdown() {
    let server = start(2).await;
    let mut first = client(&server).await.unwrap();
    let second = client(&server).await.unwrap();
    let e = server_error(client(&server).await);
    assert_eq!((e.severity.as_str(), e.code.as_str()), ("FATAL", "53300"));
    assert_eq!(e.message, "too many connections to this test server");

    // A freed slot is reused.
    drop(second);
    let started = tokio::time::Instant::now();
    let mut third = loop {
        match client(&server).await {
            Ok(c) => break c,
            Err(ClientError::Server(e)) if e.code == "53300" => {
                assert!(started.elapsed() < DEADLINE, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    assert_eq!(third.simple_query("echo 3").await.unwrap().len(), 1);

    // Shutdown ends the server and its connections, even a running query.
    let waiting = tokio::spawn(async move { first.simple_query("wait").await });
    server.cancel.cancel();
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
    let result = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiting query ended")
        .unwrap();
    assert!(result.is_err());
    assert!(third.simple_query("echo 3").await.is_err());
}
