//! Unit tests: round trips through both sides' codecs (ours and
//! `postgres-protocol`'s), malformed input, and a seeded random-bytes test.

use bytes::{BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utils::Lsn;

use crate::client::{error_fields, parse_backend};
use crate::frontend::{parse_message, parse_startup, StartupPacket};
use crate::replication::*;
use crate::*;

const MAX: usize = DEFAULT_MAX_MESSAGE_LEN;

fn fe_one(bytes: &[u8]) -> Result<Option<FeMessage>, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let msg = parse_message(&mut buf, MAX)?;
    assert!(msg.is_none() || buf.is_empty(), "left {} bytes", buf.len());
    Ok(msg)
}

fn startup_one(bytes: &[u8]) -> Result<Option<StartupPacket>, ProtocolError> {
    parse_startup(&mut BytesMut::from(bytes))
}

fn be_one(msg: BeMessage<'_>) -> (u8, Message) {
    let mut buf = BytesMut::new();
    msg.write(&mut buf).expect("encode");
    let parsed = parse_backend(&mut buf, MAX)
        .expect("parse")
        .expect("complete");
    assert!(buf.is_empty());
    parsed
}

fn startup_packet(code: i32, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn frontend_messages_round_trip() {
    let mut buf = BytesMut::new();
    frontend::query("select 'é'", &mut buf).unwrap();
    frontend::CopyData::new(&b"\x00\x01wal"[..])
        .unwrap()
        .write(&mut buf);
    frontend::copy_done(&mut buf);
    frontend::copy_fail("oops", &mut buf).unwrap();
    frontend::password_message(b"secret", &mut buf).unwrap();
    frontend::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", &mut buf).unwrap();
    frontend::parse("", "select $1", [23], &mut buf).unwrap();
    frontend::bind(
        "",
        "",
        [0],
        [1],
        |v: i32, buf| Ok((buf.put_i32(v), IsNull::No).1),
        [0],
        &mut buf,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::describe(b'S', "", &mut buf).unwrap();
    frontend::execute("", 0, &mut buf).unwrap();
    frontend::close(b'P', "", &mut buf).unwrap();
    frontend::flush(&mut buf);
    frontend::sync(&mut buf);
    frontend::terminate(&mut buf);

    // Fed one byte at a time, each message appears exactly when complete.
    let mut got = Vec::new();
    let mut input = BytesMut::new();
    for &b in buf.iter() {
        input.put_u8(b);
        if let Some(msg) = parse_message(&mut input, MAX).unwrap() {
            assert!(input.is_empty());
            got.push(msg);
        }
    }
    let mut scram = BytesMut::from(&b"SCRAM-SHA-256\0"[..]);
    scram.put_i32(11);
    scram.put_slice(b"n,,n=,r=abc");
    use ExtendedMessage::*;
    assert_eq!(
        got,
        vec![
            FeMessage::Query("select 'é'".into()),
            FeMessage::CopyData(Bytes::from_static(b"\x00\x01wal")),
            FeMessage::CopyDone,
            FeMessage::CopyFail("oops".into()),
            FeMessage::PasswordMessage(Bytes::from_static(b"secret\0")),
            FeMessage::PasswordMessage(scram.freeze()),
            FeMessage::Extended(Parse),
            FeMessage::Extended(Bind),
            FeMessage::Extended(Describe),
            FeMessage::Extended(Execute),
            FeMessage::Extended(Close),
            FeMessage::Extended(Flush),
            FeMessage::Extended(Sync),
            FeMessage::Terminate,
        ]
    );
}

#[test]
fn startup_packets_round_trip() {
    let mut buf = BytesMut::new();
    let params = [
        ("user", "alice"),
        ("database", "db"),
        ("application_name", "app"),
        ("options", "-c x=1"),
        ("replication", "true"),
    ];
    frontend::startup_message(params, &mut buf).unwrap();
    let Some(StartupPacket::Startup {
        minor: 0,
        params: got,
    }) = startup_one(&buf).unwrap()
    else {
        panic!()
    };
    assert_eq!(got.iter().collect::<Vec<_>>(), params);
    assert_eq!(
        (got.user(), got.database(), got.get("options")),
        ("alice", "db", Some("-c x=1"))
    );
    assert_eq!(got.replication(), ReplicationMode::Physical);

    buf.clear();
    frontend::startup_message([("user", "bob"), ("replication", "database")], &mut buf).unwrap();
    let Some(StartupPacket::Startup { params, .. }) = startup_one(&buf).unwrap() else {
        panic!()
    };
    assert_eq!(
        (params.database(), params.replication()),
        ("bob", ReplicationMode::Logical)
    );

    buf.clear();
    frontend::ssl_request(&mut buf);
    assert_eq!(startup_one(&buf).unwrap(), Some(StartupPacket::SslRequest));
    assert_eq!(
        startup_one(&startup_packet(80877104, b"")).unwrap(),
        Some(StartupPacket::GssEncRequest)
    );
    buf.clear();
    frontend::cancel_request(42, -7, &mut buf);
    let key = CancelKey {
        process_id: 42,
        secret_key: -7,
    };
    assert_eq!(startup_one(&buf).unwrap(), Some(StartupPacket::Cancel(key)));
    // Incomplete packets wait for more bytes.
    assert_eq!(startup_one(&buf[..buf.len() - 1]).unwrap(), None);
    assert_eq!(startup_one(&buf[..3]).unwrap(), None);
}

#[test]
fn backend_messages_round_trip() {
    assert!(matches!(
        be_one(BeMessage::AuthenticationOk),
        (b'R', Message::AuthenticationOk)
    ));
    assert!(matches!(
        be_one(BeMessage::AuthenticationCleartextPassword).1,
        Message::AuthenticationCleartextPassword
    ));
    let Message::AuthenticationMd5Password(b) =
        be_one(BeMessage::AuthenticationMd5Password([1, 2, 3, 4])).1
    else {
        panic!()
    };
    assert_eq!(b.salt(), [1, 2, 3, 4]);
    let Message::AuthenticationSasl(b) =
        be_one(BeMessage::AuthenticationSasl(&["SCRAM-SHA-256", "X"])).1
    else {
        panic!()
    };
    assert_eq!(
        b.mechanisms().collect::<Vec<_>>().unwrap(),
        ["SCRAM-SHA-256", "X"]
    );
    let Message::AuthenticationSaslContinue(b) =
        be_one(BeMessage::AuthenticationSaslContinue(b"r=1")).1
    else {
        panic!()
    };
    assert_eq!(b.data(), b"r=1");
    let Message::AuthenticationSaslFinal(b) = be_one(BeMessage::AuthenticationSaslFinal(b"v=2")).1
    else {
        panic!()
    };
    assert_eq!(b.data(), b"v=2");
    let Message::ParameterStatus(b) = be_one(BeMessage::ParameterStatus {
        name: "server_version",
        value: "15.0",
    })
    .1
    else {
        panic!()
    };
    assert_eq!(
        (b.name().unwrap(), b.value().unwrap()),
        ("server_version", "15.0")
    );
    let Message::BackendKeyData(b) = be_one(BeMessage::BackendKeyData(CancelKey {
        process_id: 9,
        secret_key: -1,
    }))
    .1
    else {
        panic!()
    };
    assert_eq!((b.process_id(), b.secret_key()), (9, -1));
    for (status, byte) in [
        (TransactionStatus::Idle, b'I'),
        (TransactionStatus::InTransaction, b'T'),
        (TransactionStatus::Failed, b'E'),
    ] {
        let Message::ReadyForQuery(b) = be_one(BeMessage::ReadyForQuery(status)).1 else {
            panic!()
        };
        assert_eq!(b.status(), byte);
    }
    let columns = [
        ColumnDesc::text("a"),
        ColumnDesc {
            format: Format::Binary,
            ..ColumnDesc::new("b", oid::INT8, 8)
        },
    ];
    let Message::RowDescription(b) = be_one(BeMessage::RowDescription(&columns)).1 else {
        panic!()
    };
    let fields: Vec<_> = b
        .fields()
        .map(|f| Ok((f.name().to_owned(), f.type_oid(), f.type_size(), f.format())))
        .collect()
        .unwrap();
    assert_eq!(
        fields,
        [
            ("a".to_owned(), oid::TEXT, -1, 0),
            ("b".to_owned(), oid::INT8, 8, 1)
        ]
    );
    let Message::DataRow(b) = be_one(BeMessage::DataRow(&[Some(b"x"), None, Some(&[0, 255])])).1
    else {
        panic!()
    };
    let values: Vec<_> = b
        .ranges()
        .map(|r| Ok(r.map(|r| b.buffer()[r].to_vec())))
        .collect()
        .unwrap();
    assert_eq!(values, [Some(b"x".to_vec()), None, Some(vec![0, 255])]);
    let Message::CommandComplete(b) = be_one(BeMessage::CommandComplete("SELECT 2")).1 else {
        panic!()
    };
    assert_eq!(b.tag().unwrap(), "SELECT 2");
    assert!(matches!(
        be_one(BeMessage::EmptyQueryResponse).1,
        Message::EmptyQueryResponse
    ));
    let mut fields = ErrorFields::error("42601", "bad");
    fields.detail = Some("d".into());
    fields.hint = Some("h".into());
    fields.other = vec![(b'P', "7".into()), (b'n', "t_pkey".into())];
    let Message::ErrorResponse(b) = be_one(BeMessage::ErrorResponse(&fields)).1 else {
        panic!()
    };
    assert_eq!(error_fields(b.fields()).unwrap(), fields);
    let notice = ErrorFields {
        severity: "NOTICE".into(),
        ..ErrorFields::error("00000", "hi")
    };
    let Message::NoticeResponse(b) = be_one(BeMessage::NoticeResponse(&notice)).1 else {
        panic!()
    };
    assert_eq!(error_fields(b.fields()).unwrap(), notice);
    let Message::CopyInResponse(b) = be_one(BeMessage::CopyInResponse(Format::Text)).1 else {
        panic!()
    };
    assert_eq!((b.format(), b.column_formats().count().unwrap()), (0, 0));
    let Message::CopyOutResponse(b) = be_one(BeMessage::CopyOutResponse(Format::Binary)).1 else {
        panic!()
    };
    assert_eq!(b.format(), 1);
    let (tag, Message::CopyOutResponse(b)) = be_one(BeMessage::CopyBothResponse(Format::Binary))
    else {
        panic!()
    };
    assert_eq!((tag, b.format()), (b'W', 1));
    let Message::CopyData(b) = be_one(BeMessage::CopyData(b"payload")).1 else {
        panic!()
    };
    assert_eq!(b.data(), b"payload");
    assert!(matches!(be_one(BeMessage::CopyDone).1, Message::CopyDone));

    // postgres-protocol has no NegotiateProtocolVersion: check the bytes.
    let mut buf = BytesMut::new();
    let unrecognized = ["_pq_.x".to_owned()];
    BeMessage::NegotiateProtocolVersion {
        newest_minor: 0,
        unrecognized: &unrecognized,
    }
    .write(&mut buf)
    .unwrap();
    assert_eq!(&buf[..], b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0");
}

#[test]
fn encoding_refuses_what_the_protocol_cannot_carry() {
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = BeMessage::CommandComplete("a\0b")
        .write(&mut buf)
        .unwrap_err();
    assert!(matches!(err, ProtocolError::Encode(_)));
    assert_eq!(&buf[..], b"keep");
    let columns: Vec<ColumnDesc> = (0..40000).map(|_| ColumnDesc::text("c")).collect();
    assert!(BeMessage::RowDescription(&columns).write(&mut buf).is_err());
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn replication_messages_round_trip() {
    let ts = PgTimestamp::now();
    let primary = [
        PrimaryMessage::XLogData(XLogData {
            wal_start: Lsn(0x1_0000_0028),
            wal_end: Lsn(0x1_0000_1000),
            timestamp: ts,
            data: Bytes::from_static(b"records"),
        }),
        PrimaryMessage::Keepalive(PrimaryKeepalive {
            wal_end: Lsn(5),
            timestamp: ts,
            reply_requested: true,
        }),
    ];
    for msg in primary {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        assert_eq!(PrimaryMessage::decode(buf.freeze()).unwrap(), msg);
    }
    let standby = [
        StandbyMessage::StatusUpdate(StandbyStatusUpdate {
            write_lsn: Lsn(3),
            flush_lsn: Lsn(2),
            apply_lsn: Lsn(1),
            timestamp: ts,
            reply_requested: false,
        }),
        StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
            timestamp: ts,
            xmin: 700,
            xmin_epoch: 1,
            catalog_xmin: 650,
            catalog_xmin_epoch: 1,
        }),
    ];
    for msg in standby {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        assert_eq!(StandbyMessage::decode(buf.freeze()).unwrap(), msg);
    }
    // Field layout as PostgreSQL documents it.
    let mut buf = BytesMut::new();
    PrimaryMessage::Keepalive(PrimaryKeepalive {
        wal_end: Lsn(0x0102),
        timestamp: PgTimestamp(3),
        reply_requested: true,
    })
    .encode(&mut buf);
    assert_eq!(&buf[..], b"k\0\0\0\0\0\0\x01\x02\0\0\0\0\0\0\0\x03\x01");
}

#[test]
fn pg_timestamps() {
    use std::time::{Duration, UNIX_EPOCH};
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);
    assert_eq!(PgTimestamp::from_system_time(pg_epoch), PgTimestamp(0));
    assert_eq!(
        PgTimestamp::from_system_time(pg_epoch + Duration::from_micros(1_500_000)),
        PgTimestamp(1_500_000)
    );
    assert_eq!(
        PgTimestamp::from_system_time(UNIX_EPOCH),
        PgTimestamp(-946_684_800_000_000)
    );
    let now = PgTimestamp::now();
    assert_eq!(
        PgTimestamp::from_system_time(now.to_system_time().unwrap()),
        now
    );
    assert_eq!(
        PgTimestamp(-1).to_system_time(),
        Some(pg_epoch - Duration::from_micros(1))
    );
}

#[test]
fn malformed_frontend_messages_are_errors() {
    use ProtocolError as E;
    // Unknown type byte: refused at once, before any body.
    assert!(matches!(fe_one(b"Z"), Err(E::UnknownTag(b'Z'))));
    assert!(matches!(fe_one(b"\0\0\0\0\x08"), Err(E::UnknownTag(0))));
    // Lengths: negative, too small for the length itself, over the maximum.
    assert!(matches!(
        fe_one(b"Q\xff\xff\xff\xfe"),
        Err(E::InvalidLength { len: -2, .. })
    ));
    assert!(matches!(
        fe_one(b"Q\0\0\0\x03"),
        Err(E::InvalidLength { len: 3, .. })
    ));
    assert!(matches!(
        fe_one(b"d\x7f\xff\xff\xff"),
        Err(E::MessageTooLong { .. })
    ));
    let mut small = BytesMut::from(&b"d\0\0\0\x0e0123456789"[..]);
    assert!(matches!(
        parse_message(&mut small, 9),
        Err(E::MessageTooLong { len: 10, max: 9 })
    ));
    // Truncated: wait for more, not an error yet.
    assert!(matches!(fe_one(b"Q\0\0\0\x10sel"), Ok(None)));
    // Bodies.
    assert!(matches!(
        fe_one(b"Q\0\0\0\x07abc"),
        Err(E::MissingTerminator("Query"))
    ));
    assert!(matches!(
        fe_one(b"Q\0\0\0\x07\xff\xfe\0"),
        Err(E::InvalidUtf8("Query"))
    ));
    assert!(matches!(
        fe_one(b"Q\0\0\0\x07a\0b"),
        Err(E::TrailingBytes("Query"))
    ));
    assert!(matches!(
        fe_one(b"c\0\0\0\x05x"),
        Err(E::TrailingBytes("CopyDone"))
    ));
    assert!(matches!(
        fe_one(b"X\0\0\0\x05x"),
        Err(E::TrailingBytes("Terminate"))
    ));
    assert!(matches!(
        fe_one(b"f\0\0\0\x04"),
        Err(E::MissingTerminator("CopyFail"))
    ));
    // Every error maps to an SQLSTATE a server can report.
    assert_eq!(
        fe_one(b"Z").unwrap_err().sqlstate(),
        sqlstate::PROTOCOL_VIOLATION
    );
}

#[test]
fn malformed_startup_packets_are_errors() {
    use ProtocolError as E;
    let too_short = startup_one(b"\0\0\0\x04");
    assert!(matches!(too_short, Err(E::InvalidLength { len: 4, .. })));
    assert!(matches!(
        startup_one(b"\xff\xff\xff\xf0"),
        Err(E::InvalidLength { len: -16, .. })
    ));
    assert!(matches!(
        startup_one(b"\0\x01\0\0"),
        Err(E::InvalidLength { len: 65536, .. })
    ));
    // An HTTP request is garbage with a huge length.
    assert!(matches!(
        startup_one(b"GET / HTTP/1.1\r\n\r\n"),
        Err(E::InvalidLength { .. })
    ));
    let v2 = startup_one(&startup_packet(2 << 16, b"user\0a\0\0"));
    assert!(matches!(
        v2,
        Err(E::UnsupportedProtocolVersion { major: 2, minor: 0 })
    ));
    assert_eq!(v2.unwrap_err().sqlstate(), sqlstate::FEATURE_NOT_SUPPORTED);
    let unknown_code = startup_one(&startup_packet((1234 << 16) | 5681, b""));
    assert!(matches!(
        unknown_code,
        Err(E::UnsupportedProtocolVersion {
            major: 1234,
            minor: 5681
        })
    ));
    let v3 = 3 << 16;
    assert!(matches!(
        startup_one(&startup_packet(v3, b"user\0a\0")),
        Err(E::MissingTerminator(_))
    ));
    assert!(matches!(
        startup_one(&startup_packet(v3, b"user\0a")),
        Err(E::MissingTerminator(_))
    ));
    assert!(matches!(
        startup_one(&startup_packet(v3, b"user\0a\0\0x")),
        Err(E::TrailingBytes(_))
    ));
    assert!(matches!(
        startup_one(&startup_packet(v3, b"user\0\xc3\0\0")),
        Err(E::InvalidUtf8(_))
    ));
    assert!(matches!(
        startup_one(&startup_packet(v3, b"database\0d\0\0")),
        Err(E::InvalidStartupPacket(_))
    ));
    assert!(matches!(
        startup_one(&startup_packet(v3, b"user\0a\0user\0b\0\0")),
        Err(E::InvalidStartupPacket(_))
    ));
    let bad_replication = startup_packet(v3, b"user\0a\0replication\0maybe\0\0");
    assert!(matches!(
        startup_one(&bad_replication),
        Err(E::InvalidStartupPacket(_))
    ));
    assert!(matches!(
        startup_one(&startup_packet(80877103, b"xxxx")),
        Err(E::TrailingBytes(_))
    ));
    assert!(matches!(
        startup_one(&startup_packet(80877102, b"xxxx")),
        Err(E::Truncated(_))
    ));
}

#[test]
fn malformed_backend_and_replication_messages_are_errors() {
    use ProtocolError as E;
    let parse = |bytes: &[u8], max| {
        parse_backend(&mut BytesMut::from(bytes), max).map(|m| m.map(|(tag, _)| tag))
    };
    assert!(matches!(
        parse(b"Z\xff\xff\xff\xff", MAX),
        Err(E::InvalidLength { len: -1, .. })
    ));
    assert!(matches!(
        parse(b"D\x7f\0\0\0", MAX),
        Err(E::MessageTooLong { .. })
    ));
    assert!(matches!(parse(b"Z\0\0\0\x05", MAX), Ok(None)));
    assert!(matches!(
        parse(b"?\0\0\0\x04", MAX),
        Err(E::InvalidBackendMessage(_))
    ));
    assert!(matches!(
        parse(b"Z\0\0\0\x06II", MAX),
        Err(E::InvalidBackendMessage(_))
    ));

    assert!(matches!(
        PrimaryMessage::decode(Bytes::new()),
        Err(E::Truncated(_))
    ));
    assert!(matches!(
        PrimaryMessage::decode(Bytes::from_static(b"w\0\0")),
        Err(E::Truncated(_))
    ));
    assert!(matches!(
        PrimaryMessage::decode(Bytes::from_static(b"r")),
        Err(E::UnknownTag(b'r'))
    ));
    let mut keepalive = BytesMut::new();
    PrimaryMessage::Keepalive(PrimaryKeepalive {
        wal_end: Lsn(1),
        timestamp: PgTimestamp(0),
        reply_requested: false,
    })
    .encode(&mut keepalive);
    keepalive.put_u8(0);
    assert!(matches!(
        PrimaryMessage::decode(keepalive.freeze()),
        Err(E::TrailingBytes(_))
    ));
    assert!(matches!(
        StandbyMessage::decode(Bytes::from_static(b"h\0")),
        Err(E::Truncated(_))
    ));
    assert!(matches!(
        StandbyMessage::decode(Bytes::from_static(b"w")),
        Err(E::UnknownTag(b'w'))
    ));
}

/// Feeds random and mutated bytes to every parser: errors are fine, panics
/// and runaway allocations are not.
#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut valid = BytesMut::new();
    frontend::query("select 1", &mut valid).unwrap();
    frontend::startup_message([("user", "u"), ("replication", "on")], &mut valid).unwrap();
    BeMessage::ErrorResponse(&ErrorFields::error("XX000", "boom"))
        .write(&mut valid)
        .unwrap();
    BeMessage::DataRow(&[Some(b"1"), None])
        .write(&mut valid)
        .unwrap();
    BeMessage::RowDescription(&[ColumnDesc::text("a")])
        .write(&mut valid)
        .unwrap();
    BeMessage::AuthenticationSasl(&["SCRAM-SHA-256"])
        .write(&mut valid)
        .unwrap();
    let tags = b"QdcfXpPBEDCSHRSKZTDCIENGHWdcv wkrh";
    for i in 0..20_000 {
        let mut input: Vec<u8> = if i % 2 == 0 {
            let start = rng.random_range(0..valid.len());
            let mut v = valid[start..].to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..v.len());
                v[at] = rng.random();
            }
            v
        } else {
            let mut v = vec![0u8; rng.random_range(0..40)];
            rng.fill(&mut v[..]);
            v
        };
        if i % 3 == 0 && input.len() >= 5 {
            // Plausible header: a known tag and a small length.
            input[0] = tags[rng.random_range(0..tags.len())];
            input[1..5].copy_from_slice(&(rng.random_range(0..48i32)).to_be_bytes());
        }
        let _ = parse_message(&mut BytesMut::from(&input[..]), 64);
        let _ = parse_startup(&mut BytesMut::from(&input[..]));
        if let Ok(Some((_, msg))) = parse_backend(&mut BytesMut::from(&input[..]), 64) {
            exercise(msg);
        }
        let _ = PrimaryMessage::decode(Bytes::from(input.clone()));
        let _ = StandbyMessage::decode(Bytes::from(input));
    }
}

/// Walks the lazily parsed parts of a backend message, as the client does.
fn exercise(msg: Message) {
    match msg {
        Message::ErrorResponse(b) => drop(error_fields(b.fields())),
        Message::NoticeResponse(b) => drop(error_fields(b.fields())),
        Message::DataRow(b) => drop(
            b.ranges()
                .map(|r| Ok(r.and_then(|r| b.buffer().get(r)).map(<[u8]>::len)))
                .count(),
        ),
        Message::RowDescription(b) => drop(b.fields().map(|f| Ok(f.name().len())).count()),
        Message::AuthenticationSasl(b) => drop(b.mechanisms().count()),
        Message::ParameterStatus(b) => drop((b.name().map(str::len), b.value().map(str::len))),
        Message::CommandComplete(b) => drop(b.tag().map(str::len)),
        _ => {}
    }
}

/// The server side's startup over an in-memory stream: `SSLRequest` and
/// `GSSENCRequest` are refused with `N`, then the startup message is read.
#[tokio::test]
async fn server_startup_refuses_encryption_then_reads_startup() {
    let (mut client, server) = tokio::io::duplex(4096);
    let mut pgb = PostgresBackend::new(server);
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    client.write_all(&buf).await.unwrap();
    let task = tokio::spawn(async move {
        let req = pgb.read_startup().await;
        (pgb, req)
    });
    let mut answer = [0u8; 1];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    client
        .write_all(&startup_packet(80877104, b""))
        .await
        .unwrap();
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    buf.clear();
    frontend::startup_message([("user", "u")], &mut buf).unwrap();
    frontend::query("select 1", &mut buf).unwrap();
    client.write_all(&buf).await.unwrap();
    let (mut pgb, req) = task.await.unwrap();
    let StartupRequest::Startup(params) = req.unwrap() else {
        panic!()
    };
    assert_eq!(params.user(), "u");
    assert_eq!(
        pgb.read_message().await.unwrap(),
        Some(FeMessage::Query("select 1".into()))
    );
    drop(client);
    assert_eq!(pgb.read_message().await.unwrap(), None, "clean EOF");
}

#[tokio::test]
async fn server_startup_errors() {
    async fn startup(bytes: &[u8]) -> Result<StartupRequest, ProtocolError> {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(bytes).await.unwrap();
        drop(client.shutdown().await);
        let mut pgb = PostgresBackend::new(server);
        pgb.read_startup().await
    }
    let ssl = startup_packet(80877103, b"");
    assert!(matches!(
        startup(&[ssl.clone(), ssl.clone()].concat()).await,
        Err(ProtocolError::InvalidStartupPacket(_))
    ));
    assert!(matches!(
        startup(&[&ssl[..], b"x"].concat()).await,
        Err(ProtocolError::InvalidStartupPacket(_))
    ));
    assert!(matches!(
        startup(&ssl[..5]).await,
        Err(ProtocolError::UnexpectedEof)
    ));
    assert!(matches!(
        startup(b"").await,
        Err(ProtocolError::UnexpectedEof)
    ));
    let mut cancel = BytesMut::new();
    frontend::cancel_request(1, 2, &mut cancel);
    let key = CancelKey {
        process_id: 1,
        secret_key: 2,
    };
    assert_eq!(startup(&cancel).await.unwrap(), StartupRequest::Cancel(key));
}

#[tokio::test]
async fn server_negotiates_protocol_down_to_3_0() {
    let (mut client, server) = tokio::io::duplex(4096);
    client
        .write_all(&startup_packet((3 << 16) | 2, b"user\0u\0_pq_.opt\0v\0\0"))
        .await
        .unwrap();
    let mut pgb = PostgresBackend::new(server);
    assert!(matches!(
        pgb.read_startup().await.unwrap(),
        StartupRequest::Startup(_)
    ));
    pgb.flush().await.unwrap();
    let mut answer = [0u8; 22];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"v\0\0\0\x15\0\x03\0\0\0\0\0\x01_pq_.opt\0");
}

#[tokio::test]
async fn server_reports_eof_inside_a_message() {
    let (mut client, server) = tokio::io::duplex(4096);
    client.write_all(b"Q\0\0\0\x20select").await.unwrap();
    drop(client);
    let mut pgb = PostgresBackend::new(server);
    assert!(matches!(
        pgb.read_message().await,
        Err(ProtocolError::UnexpectedEof)
    ));
}

/// The halves of a split connection stream both ways at once through a
/// pipe far smaller than the data.
#[tokio::test]
async fn server_halves_stream_concurrently() {
    let (client, server) = tokio::io::duplex(256);
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut rd, mut wr) = PostgresBackend::new(server).split();
    const N: u8 = 200;
    let server_writes = async {
        for i in 0..N {
            wr.write_message(&BeMessage::CopyData(&[i; 50])).await?;
        }
        wr.flush().await
    };
    let server_reads = async {
        let mut count = 0;
        while let Some(msg) = rd.read_message().await? {
            assert_eq!(msg, FeMessage::CopyData(Bytes::from(vec![count; 50])));
            count += 1;
        }
        Ok::<_, ProtocolError>(count)
    };
    let client_writes = async {
        for i in 0..N {
            let mut buf = BytesMut::new();
            frontend::CopyData::new(&[i; 50][..])
                .unwrap()
                .write(&mut buf);
            client_wr.write_all(&buf).await?;
        }
        client_wr.shutdown().await
    };
    let client_reads = async {
        let mut got = vec![0; N as usize * 55];
        client_rd.read_exact(&mut got).await.map(|_| got)
    };
    let (sw, sr, cw, cr) = tokio::join!(server_writes, server_reads, client_writes, client_reads);
    sw.unwrap();
    cw.unwrap();
    assert_eq!(sr.unwrap(), N);
    let got = cr.unwrap();
    assert!(got
        .chunks(55)
        .enumerate()
        .all(|(i, m)| m[..5] == *b"d\0\0\0\x36" && m[5..] == [i as u8; 50]));
}
