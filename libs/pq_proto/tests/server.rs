//! A tiny server written with the server API, talked to by our client, by raw
//! bytes, and by the real `psql`.

use std::time::Duration;

use bytes::BytesMut;
use pq_proto::replication::{
    PgTimestamp, PrimaryKeepalive, PrimaryMessage, StandbyMessage, StandbyStatusUpdate,
};
use pq_proto::{
    connect, oid, sqlstate, BeMessage, ClientError, ColumnDesc, ErrorFields, ExtendedMessage,
    FeMessage, Format, PostgresBackend, ProtocolError, StartupRequest, TransactionStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use utils::Lsn;

const LIMIT: Duration = Duration::from_secs(30);

/// Starts the server on a free loopback port; returns its address.
async fn start_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pgb = PostgresBackend::new(socket);
                if let Err(e) = serve(&mut pgb).await {
                    // Report the error if the connection can still take it.
                    let fields = ErrorFields::fatal(e.sqlstate(), e.to_string());
                    let _ = pgb.write_message(&BeMessage::ErrorResponse(&fields)).await;
                    let _ = pgb.flush().await;
                }
            });
        }
    });
    addr
}

async fn serve(pgb: &mut PostgresBackend<TcpStream>) -> Result<(), ProtocolError> {
    let StartupRequest::Startup(params) = pgb.read_startup().await? else {
        return Ok(()); // a cancel request: nothing to cancel here
    };
    if params.user() == "alice" {
        pgb.write_message(&BeMessage::AuthenticationCleartextPassword)
            .await?;
        pgb.flush().await?;
        let Some(FeMessage::PasswordMessage(password)) = pgb.read_message().await? else {
            return Err(ProtocolError::UnexpectedEof);
        };
        if &password[..] != b"wonderland\0" {
            let fields =
                ErrorFields::fatal(sqlstate::INVALID_PASSWORD, "password authentication failed");
            pgb.write_message(&BeMessage::ErrorResponse(&fields))
                .await?;
            return pgb.flush().await;
        }
    }
    pgb.write_message(&BeMessage::AuthenticationOk).await?;
    for (name, value) in [
        ("server_version", "15.0"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
    ] {
        pgb.write_message(&BeMessage::ParameterStatus { name, value })
            .await?;
    }
    let key = pq_proto::CancelKey {
        process_id: 7,
        secret_key: 42,
    };
    pgb.write_message(&BeMessage::BackendKeyData(key)).await?;
    let mut skipping_to_sync = false;
    loop {
        if !skipping_to_sync {
            pgb.write_message(&BeMessage::ReadyForQuery(TransactionStatus::Idle))
                .await?;
        }
        pgb.flush().await?;
        let Some(msg) = pgb.read_message().await? else {
            return Ok(());
        };
        skipping_to_sync = match msg {
            FeMessage::Query(query) => {
                run_query(pgb, query.trim()).await?;
                false
            }
            FeMessage::Extended(ExtendedMessage::Sync) => false,
            FeMessage::Extended(_) if skipping_to_sync => true,
            FeMessage::Extended(_) => {
                pgb.send_error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "extended query protocol is not supported",
                )
                .await?;
                true
            }
            FeMessage::Terminate => return Ok(()),
            _ => {
                pgb.send_error(sqlstate::PROTOCOL_VIOLATION, "unexpected message")
                    .await?;
                false
            }
        };
    }
}

async fn run_query(pgb: &mut PostgresBackend<TcpStream>, query: &str) -> Result<(), ProtocolError> {
    match query {
        "" => pgb.write_message(&BeMessage::EmptyQueryResponse).await,
        "select 1" => {
            pgb.send_query_result(
                &[ColumnDesc::new("?column?", oid::INT4, 4)],
                &[vec![Some("1".into())]],
            )
            .await
        }
        "rows" => {
            let columns = [
                ColumnDesc::new("id", oid::INT8, 8),
                ColumnDesc::text("name"),
            ];
            let rows = [
                vec![Some("1".into()), Some("one".into())],
                vec![Some("2".into()), None],
            ];
            pgb.send_query_result(&columns, &rows).await
        }
        "copy out" => {
            pgb.write_message(&BeMessage::CopyOutResponse(Format::Binary))
                .await?;
            for chunk in [&b"abc"[..], b"", b"\0\xff"] {
                pgb.write_message(&BeMessage::CopyData(chunk)).await?;
            }
            pgb.write_message(&BeMessage::CopyDone).await?;
            pgb.write_message(&BeMessage::CommandComplete("COPY 3"))
                .await
        }
        // Echoes CopyData, except that a standby status update is answered
        // with a keepalive at its flush position.
        "copy both" => {
            pgb.write_message(&BeMessage::CopyBothResponse(Format::Binary))
                .await?;
            pgb.flush().await?;
            loop {
                match pgb
                    .read_message()
                    .await?
                    .ok_or(ProtocolError::UnexpectedEof)?
                {
                    FeMessage::CopyData(data) => match StandbyMessage::decode(data.clone()) {
                        Ok(StandbyMessage::StatusUpdate(s)) => {
                            let keepalive = PrimaryKeepalive {
                                wal_end: s.flush_lsn,
                                timestamp: s.timestamp,
                                reply_requested: false,
                            };
                            let mut buf = BytesMut::new();
                            PrimaryMessage::Keepalive(keepalive).encode(&mut buf);
                            pgb.write_message(&BeMessage::CopyData(&buf)).await?;
                        }
                        _ => pgb.write_message(&BeMessage::CopyData(&data)).await?,
                    },
                    FeMessage::CopyDone => break,
                    _ => {
                        return pgb
                            .send_error(sqlstate::PROTOCOL_VIOLATION, "expected COPY data")
                            .await
                    }
                }
                pgb.flush().await?;
            }
            pgb.write_message(&BeMessage::CopyDone).await?;
            pgb.write_message(&BeMessage::CommandComplete("COPY")).await
        }
        _ => {
            let mut fields =
                ErrorFields::error(sqlstate::SYNTAX_ERROR, format!("unknown command {query:?}"));
            fields.hint = Some("try \"rows\"".into());
            pgb.write_message(&BeMessage::ErrorResponse(&fields)).await
        }
    }
}

#[tokio::test]
async fn our_client_against_our_server() {
    let addr = start_server().await;
    timeout(LIMIT, async {
        let mut client = connect(&addr, &[("user", "bob"), ("database", "db")], None)
            .await
            .unwrap();
        assert_eq!(client.parameter("server_version"), Some("15.0"));
        assert_eq!(
            client.cancel_key(),
            Some(pq_proto::CancelKey {
                process_id: 7,
                secret_key: 42
            })
        );

        let rows = client.simple_query("rows").await.unwrap();
        assert_eq!(rows[0].columns(), ["id", "name"]);
        assert_eq!(
            (rows[0].get(0), rows[0].get_by_name("name")),
            (Some("1"), Some("one"))
        );
        assert_eq!((rows[1].get(0), rows[1].get(1)), (Some("2"), None));
        assert!(client.simple_query(" ").await.unwrap().is_empty());

        let err = client.simple_query("drop everything").await.unwrap_err();
        let ClientError::Server(fields) = err else {
            panic!("{err}")
        };
        assert_eq!(
            (fields.severity.as_str(), fields.code.as_str()),
            ("ERROR", "42601")
        );
        assert_eq!(fields.hint.as_deref(), Some("try \"rows\""));
        assert_eq!(
            client.simple_query("select 1").await.unwrap()[0].get(0),
            Some("1")
        );

        let mut copy = client.copy_out("copy out").await.unwrap();
        let mut chunks = Vec::new();
        while let Some(chunk) = copy.recv().await.unwrap() {
            chunks.push(chunk);
        }
        copy.finish().await.unwrap();
        assert_eq!(chunks, [&b"abc"[..], b"", b"\0\xff"]);

        // COPY BOTH, sending and receiving concurrently through the halves.
        let mut copy = client.copy_both("copy both").await.unwrap();
        let (mut rx, mut tx) = copy.split();
        let status = StandbyStatusUpdate {
            write_lsn: Lsn(30),
            flush_lsn: Lsn(20),
            apply_lsn: Lsn(10),
            timestamp: PgTimestamp::now(),
            reply_requested: true,
        };
        let mut status_bytes = BytesMut::new();
        StandbyMessage::StatusUpdate(status).encode(&mut status_bytes);
        let sending = async {
            for i in 0..100u32 {
                tx.send(&i.to_be_bytes()).await?;
            }
            tx.send(&status_bytes).await?;
            tx.send_done().await
        };
        let receiving = async {
            let mut got = Vec::new();
            while let Some(data) = rx.recv().await? {
                got.push(data);
            }
            Ok::<_, ClientError>(got)
        };
        let (sent, got) = tokio::join!(sending, receiving);
        sent.unwrap();
        let got = got.unwrap();
        assert_eq!(got.len(), 101);
        assert!((0..100u32).all(|i| got[i as usize][..] == i.to_be_bytes()));
        let PrimaryMessage::Keepalive(k) = PrimaryMessage::decode(got[100].clone()).unwrap() else {
            panic!()
        };
        assert_eq!((k.wal_end, k.timestamp), (Lsn(20), status.timestamp));
        copy.finish().await.unwrap();
        assert_eq!(client.simple_query("select 1").await.unwrap().len(), 1);
        client.close().await.unwrap();
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn cleartext_password() {
    let addr = start_server().await;
    timeout(LIMIT, async {
        let params = [("user", "alice")];
        let mut client = connect(&addr, &params, Some("wonderland")).await.unwrap();
        assert_eq!(client.simple_query("select 1").await.unwrap().len(), 1);
        let err = connect(&addr, &params, Some("looking glass"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(sqlstate::INVALID_PASSWORD));
        assert!(matches!(
            connect(&addr, &params, None).await,
            Err(ClientError::Auth(_))
        ));
    })
    .await
    .expect("timed out");
}

/// Reads until the connection closes or a `ReadyForQuery` ends the input.
async fn read_response(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(b"Z\0\0\0\x05I") && socket.read_buf(&mut got).await.unwrap() > 0 {}
    got
}

#[tokio::test]
async fn raw_bytes_extended_protocol_and_garbage() {
    let addr = start_server().await;
    timeout(LIMIT, async {
        use postgres_protocol::message::frontend;
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        let mut buf = BytesMut::new();
        frontend::startup_message([("user", "carol")], &mut buf).unwrap();
        socket.write_all(&buf).await.unwrap();
        assert!(read_response(&mut socket)
            .await
            .starts_with(b"R\0\0\0\x08\0\0\0\0"));
        // Parse/Bind/Execute/Sync: one error, then ready again at Sync.
        buf.clear();
        frontend::parse("", "select 1", [], &mut buf).unwrap();
        frontend::execute("", 0, &mut buf).unwrap();
        frontend::sync(&mut buf);
        socket.write_all(&buf).await.unwrap();
        let got = read_response(&mut socket).await;
        assert_eq!(got[0], b'E');
        let text = String::from_utf8_lossy(&got);
        assert_eq!(
            text.matches("extended query protocol is not supported")
                .count(),
            1,
            "{text}"
        );

        // An HTTP request instead of a startup packet: a FATAL error, then close.
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        socket.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with(b"E") && text.contains("FATAL") && text.contains("08P01"),
            "{text}"
        );
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn real_psql_talks_to_our_server() {
    let addr = start_server().await;
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let psql = |command: &'static str| {
        tokio::process::Command::new("/usr/bin/psql")
            .args([
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "dave",
                "-d",
                "db",
                "-c",
                command,
            ])
            .env("PGSSLMODE", "prefer")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
    };
    let out = timeout(LIMIT, psql("select 1"))
        .await
        .expect("timed out")
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

    let out = timeout(LIMIT, psql("rows"))
        .await
        .expect("timed out")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1|one\n2|\n");

    let out = timeout(LIMIT, psql("nonsense"))
        .await
        .expect("timed out")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR:  unknown command \"nonsense\""),
        "{stderr}"
    );
}
