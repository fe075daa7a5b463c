//! The client against a real stock PostgreSQL 15: authentication methods,
//! simple queries and errors, COPY OUT, and physical replication.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use pq_proto::replication::{
    HotStandbyFeedback, PgTimestamp, PrimaryMessage, StandbyMessage, StandbyStatusUpdate,
};
use pq_proto::{connect, Client, ClientError};
use tokio::time::{timeout, Instant};
use utils::Lsn;

use common::PgServer;

const LIMIT: Duration = Duration::from_secs(60);

fn start() -> PgServer {
    PgServer::start(
        &[
            "wal_level = replica",
            "max_wal_senders = 4",
            "wal_sender_timeout = 0",
        ],
        &[
            "host all scram_user 127.0.0.1/32 scram-sha-256",
            "host all md5_user 127.0.0.1/32 md5",
            "host all cleartext_user 127.0.0.1/32 password",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ],
    )
}

async fn superuser(pg: &PgServer) -> Client {
    connect(
        pg.addr(),
        &[("user", "postgres"), ("database", "postgres")],
        None,
    )
    .await
    .expect("connect as postgres")
}

fn values(rows: &[pq_proto::Row]) -> Vec<Vec<Option<String>>> {
    rows.iter().map(|r| r.values().to_vec()).collect()
}

#[tokio::test]
async fn trust_connect_and_simple_query() {
    let pg = start();
    timeout(LIMIT, async {
        let params = [
            ("user", "postgres"),
            ("database", "postgres"),
            ("application_name", "pq_proto_test"),
        ];
        let mut client = connect(pg.addr(), &params, None).await.unwrap();
        assert!(client
            .parameter("server_version")
            .unwrap()
            .starts_with("15"));
        assert_eq!(client.parameter("client_encoding"), Some("UTF8"));
        assert!(client.cancel_key().is_some());

        let rows = client
            .simple_query("select 1 as one, null::text as nothing, 'é' as s; select 2 as two")
            .await
            .unwrap();
        assert_eq!(rows[0].columns(), ["one", "nothing", "s"]);
        assert_eq!(
            (rows[0].get(0), rows[0].get(1), rows[0].get_by_name("s")),
            (Some("1"), None, Some("é"))
        );
        assert_eq!(rows[1].columns(), ["two"]);
        assert_eq!(rows[1].get(0), Some("2"));

        let rows = client
            .simple_query(
                "select application_name from pg_stat_activity where pid = pg_backend_pid()",
            )
            .await
            .unwrap();
        assert_eq!(rows[0].get(0), Some("pq_proto_test"));
        assert!(client.simple_query("").await.unwrap().is_empty());
        assert!(client
            .simple_query("create table t(x int)")
            .await
            .unwrap()
            .is_empty());
        client.close().await.unwrap();

        // A FATAL error after authentication is reported, not lost to the close.
        let err = connect(
            pg.addr(),
            &[("user", "postgres"), ("database", "nope")],
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Some("3D000"), "{err}");
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn password_authentication() {
    let pg = start();
    timeout(LIMIT, async {
        let mut admin = superuser(&pg).await;
        admin
            .simple_query(
                "create role scram_user login password 'scram pw';
                 create role cleartext_user login password 'clear pw';
                 set password_encryption = 'md5';
                 create role md5_user login password 'md5 pw';",
            )
            .await
            .unwrap();
        for (user, password) in [
            ("scram_user", "scram pw"),
            ("md5_user", "md5 pw"),
            ("cleartext_user", "clear pw"),
        ] {
            let params = [("user", user), ("database", "postgres")];
            let mut client = connect(pg.addr(), &params, Some(password))
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
            let rows = client.simple_query("select current_user").await.unwrap();
            assert_eq!(rows[0].get(0), Some(user));

            let err = connect(pg.addr(), &params, Some("wrong"))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
            let ClientError::Server(fields) = err else {
                unreachable!()
            };
            assert_eq!(fields.severity, "FATAL");
            assert!(
                fields.message.contains("authentication failed"),
                "{}",
                fields.message
            );

            let err = connect(pg.addr(), &params, None).await.unwrap_err();
            assert!(matches!(err, ClientError::Auth(_)), "{user}: {err}");
        }
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn errors_keep_the_connection_usable() {
    let pg = start();
    timeout(LIMIT, async {
        let mut client = superuser(&pg).await;
        let err = client.simple_query("select 1/0").await.unwrap_err();
        let ClientError::Server(fields) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            (fields.severity.as_str(), fields.code.as_str()),
            ("ERROR", "22012")
        );
        assert_eq!(fields.message, "division by zero");
        assert_eq!(
            client.simple_query("select 2").await.unwrap()[0].get(0),
            Some("2")
        );

        let err = client
            .simple_query("select 1; selec 2; select 3")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("42601"));
        let err = client.simple_query("begin; select 1/0").await.unwrap_err();
        assert_eq!(err.code(), Some("22012"));
        let err = client.simple_query("select 1").await.unwrap_err();
        assert_eq!(err.code(), Some("25P02"), "in a failed transaction");
        client.simple_query("rollback").await.unwrap();

        // COPY FROM STDIN is refused by simple_query without losing the connection.
        client.simple_query("create table t(x int)").await.unwrap();
        let err = client.simple_query("copy t from stdin").await.unwrap_err();
        assert_eq!(err.code(), Some("57014"));
        // A COPY BOTH that the server refuses.
        let err = client.copy_both("select 1/0").await.unwrap_err();
        assert_eq!(err.code(), Some("22012"));
        assert_eq!(
            values(&client.simple_query("select count(*) from t").await.unwrap()),
            [[Some("0".into())]]
        );
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn copy_out() {
    let pg = start();
    timeout(LIMIT, async {
        let mut client = superuser(&pg).await;
        let mut copy = client
            .copy_out("copy (select g, 'v' || g from generate_series(1, 3) g) to stdout")
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = copy.recv().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
        copy.finish().await.unwrap();
        assert_eq!(got, b"1\tv1\n2\tv2\n3\tv3\n");
        // Abandoning a COPY midway leaves the connection unusable, visibly.
        client.copy_out("copy (select 1) to stdout").await.unwrap();
        let err = client.simple_query("select 1").await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidState(_)), "{err}");
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn physical_replication() {
    let pg = start();
    timeout(LIMIT, async {
        let mut sql = superuser(&pg).await;
        let params = [
            ("user", "postgres"),
            ("replication", "true"),
            ("application_name", "pq_proto_standby"),
        ];
        let mut repl = connect(pg.addr(), &params, None).await.unwrap();

        let rows = repl.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(
            rows[0].columns(),
            ["systemid", "timeline", "xlogpos", "dbname"]
        );
        let system_id = rows[0].get_by_name("systemid").unwrap().to_owned();
        let expected = sql
            .simple_query("select system_identifier from pg_control_system()")
            .await
            .unwrap();
        assert_eq!(Some(system_id.as_str()), expected[0].get(0));
        assert!(system_id.parse::<u64>().unwrap() > 0);
        assert_eq!(rows[0].get_by_name("timeline"), Some("1"));
        let start: Lsn = rows[0].get_by_name("xlogpos").unwrap().parse().unwrap();
        assert!(start.is_valid());

        let mut copy = repl
            .copy_both(&format!("START_REPLICATION PHYSICAL {start}"))
            .await
            .unwrap();
        sql.simple_query("create table t(x int); insert into t select generate_series(1, 1000)")
            .await
            .unwrap();
        let rows = sql
            .simple_query("select pg_current_wal_flush_lsn()")
            .await
            .unwrap();
        let target: Lsn = rows[0].get(0).unwrap().parse().unwrap();
        assert!(target > start);

        // WAL arrives contiguously from the requested start up to the inserts.
        let mut received = start;
        let mut messages = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received < target {
            assert!(
                Instant::now() < deadline,
                "WAL stopped at {received}, wanted {target}"
            );
            let payload = copy.recv().await.unwrap().expect("stream open");
            match PrimaryMessage::decode(payload).unwrap() {
                PrimaryMessage::XLogData(x) => {
                    assert_eq!(x.wal_start, received, "contiguous WAL");
                    assert!(!x.data.is_empty() && x.wal_end >= x.wal_start);
                    assert!(x.timestamp > PgTimestamp(0));
                    received = x.wal_start + x.data.len() as u64;
                    messages += 1;
                }
                PrimaryMessage::Keepalive(k) => assert!(k.wal_end >= received),
            }
        }
        assert!(messages > 0);

        // The primary takes our reported positions.
        let status = StandbyStatusUpdate {
            write_lsn: received,
            flush_lsn: received,
            apply_lsn: received,
            timestamp: PgTimestamp::now(),
            reply_requested: false,
        };
        let feedback = HotStandbyFeedback {
            timestamp: PgTimestamp::now(),
            xmin: 0,
            xmin_epoch: 0,
            catalog_xmin: 0,
            catalog_xmin_epoch: 0,
        };
        for msg in [
            StandbyMessage::StatusUpdate(status),
            StandbyMessage::HotStandbyFeedback(feedback),
        ] {
            let mut buf = BytesMut::new();
            msg.encode(&mut buf);
            copy.send(&buf).await.unwrap();
        }
        copy.flush().await.unwrap();
        let query =
            "select flush_lsn from pg_stat_replication where application_name = 'pq_proto_standby'";
        loop {
            let rows = sql.simple_query(query).await.unwrap();
            if rows[0].get(0).and_then(|s| s.parse::<Lsn>().ok()) == Some(received) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "flush_lsn not reported: {:?}",
                rows[0].get(0)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Ending the stream returns the connection to command mode.
        copy.finish().await.unwrap();
        let rows = repl.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(rows[0].get(0), Some(system_id.as_str()));
    })
    .await
    .expect("timed out");
}
