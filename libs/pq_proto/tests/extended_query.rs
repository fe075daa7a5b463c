//! The client's text queries over the extended protocol, its connection
//! checks and its login hand-over, against a real stock PostgreSQL 15.

mod common;

use std::time::Duration;

use postgres_protocol::message::backend::Message;
use pq_proto::client::{authenticate_stream, connect_stream, parse_backend, TextQuery};
use pq_proto::{connect, Client, ClientError};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use common::PgServer;

const LIMIT: Duration = Duration::from_secs(60);

fn start() -> PgServer {
    PgServer::start(
        &[],
        &[
            "host all scram_user 127.0.0.1/32 scram-sha-256",
            "host all all 127.0.0.1/32 trust",
        ],
    )
}

async fn superuser(pg: &PgServer, options: Option<&str>) -> Client {
    let mut params = vec![("user", "postgres"), ("database", "postgres")];
    if let Some(options) = options {
        params.push(("options", options));
    }
    connect(pg.addr(), &params, None)
        .await
        .expect("connect as postgres")
}

fn text_query<'a>(sql: &'a str, params: &'a [Option<String>]) -> TextQuery<'a> {
    TextQuery {
        sql,
        params,
        max_result_bytes: 1 << 20,
        reset_session: false,
    }
}

#[tokio::test]
async fn text_queries_with_parameters() {
    let pg = start();
    timeout(LIMIT, async {
        let mut client = superuser(&pg, None).await;
        let params = [Some("41".to_owned()), None, Some("é".to_owned())];
        let result = client
            .query_text(text_query(
                "SELECT $1::int + 1 AS n, $2::text IS NULL AS null_param, $3 AS s, NULL::int8 AS nothing",
                &params,
            ))
            .await
            .unwrap();
        let names: Vec<_> = result.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["n", "null_param", "s", "nothing"]);
        let types: Vec<_> = result.fields.iter().map(|f| f.type_oid).collect();
        assert_eq!(types, [23, 16, 25, 20]);
        assert_eq!(
            result.rows,
            [[Some("42".to_owned()), Some("t".to_owned()), Some("é".to_owned()), None]]
        );
        assert_eq!(result.command_tag, "SELECT 1");
        assert!(client.is_idle());

        // No rows: no fields; a table's column names its table.
        let created = client
            .query_text(text_query("CREATE TABLE t(x varchar(10))", &[]))
            .await
            .unwrap();
        assert_eq!((created.fields.len(), created.command_tag.as_str()), (0, "CREATE TABLE"));
        let inserted = client
            .query_text(text_query("INSERT INTO t VALUES ($1), ($2)", &[Some("a".into()), None]))
            .await
            .unwrap();
        assert_eq!(inserted.command_tag, "INSERT 0 2");
        let selected = client
            .query_text(text_query("SELECT x FROM t ORDER BY x NULLS LAST", &[]))
            .await
            .unwrap();
        assert!(selected.fields[0].table_oid > 0);
        assert_eq!(selected.fields[0].column_id, 1);
        assert_eq!(selected.fields[0].type_modifier, 14);
        assert_eq!(selected.rows, [[Some("a".to_owned())], [None]]);

        // A server error keeps every field and the connection.
        let err = client
            .query_text(text_query("SELECT 1 FROM nowhere", &[]))
            .await
            .unwrap_err();
        let ClientError::Server(fields) = err else {
            panic!("{err}")
        };
        assert_eq!(fields.code, "42P01");
        assert_eq!(fields.other_field(b'P'), Some("15"));
        assert!(client.is_idle());

        // Transaction status follows BEGIN and COMMIT.
        client.query_text(text_query("BEGIN", &[])).await.unwrap();
        assert_eq!(client.transaction_status(), b'T');
        assert!(client.is_ready() && !client.is_idle());
        client.query_text(text_query("COMMIT", &[])).await.unwrap();
        assert!(client.is_idle());
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_reset_forgets_settings_but_not_the_startup_options() {
    let pg = start();
    timeout(LIMIT, async {
        let mut client = superuser(&pg, Some("-c statement_timeout=1234")).await;
        client
            .simple_query("SET statement_timeout = 5; SET search_path = nowhere; CREATE TEMP TABLE tmp(x int)")
            .await
            .unwrap();
        let show = "SELECT current_setting('statement_timeout'), current_setting('search_path'), to_regclass('pg_temp.tmp') IS NULL";
        let kept = client.query_text(text_query(show, &[])).await.unwrap();
        assert_eq!(
            kept.rows,
            [[Some("5ms".to_owned()), Some("nowhere".to_owned()), Some("f".to_owned())]]
        );
        let reset = client
            .query_text(TextQuery {
                reset_session: true,
                ..text_query(show, &[])
            })
            .await
            .unwrap();
        assert_eq!(
            reset.rows,
            [[
                Some("1234ms".to_owned()),
                Some("\"$user\", public".to_owned()),
                Some("t".to_owned())
            ]]
        );
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_result_over_the_limit_fails_and_leaves_the_connection_unusable() {
    let pg = start();
    timeout(LIMIT, async {
        let mut client = superuser(&pg, None).await;
        let err = client
            .query_text(TextQuery {
                max_result_bytes: 10_000,
                ..text_query("SELECT repeat('x', 1000) FROM generate_series(1, 100)", &[])
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::ResultTooLarge(10_000)), "{err}");
        assert!(!client.is_ready());
        let again = client
            .query_text(text_query("SELECT 1", &[]))
            .await
            .unwrap_err();
        assert!(matches!(again, ClientError::InvalidState(_)), "{again}");
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_connection_the_server_closed_is_seen_without_reading() {
    let pg = start();
    timeout(LIMIT, async {
        let mut victim = superuser(&pg, None).await;
        let pid = victim
            .simple_query("SELECT pg_backend_pid()")
            .await
            .unwrap()[0]
            .get(0)
            .unwrap()
            .to_owned();
        assert!(!victim.is_closed(), "an idle open connection");
        let mut admin = superuser(&pg, None).await;
        admin
            .simple_query(&format!("SELECT pg_terminate_backend({pid})"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !victim.is_closed() {
            assert!(
                Instant::now() < deadline,
                "the closed connection was never seen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_login_is_handed_over_with_what_follows_it() {
    let pg = start();
    timeout(LIMIT, async {
        let mut admin = superuser(&pg, None).await;
        admin
            .simple_query("CREATE ROLE scram_user LOGIN PASSWORD 'pw'")
            .await
            .unwrap();
        let params = [("user", "scram_user"), ("database", "postgres")];
        let tcp = TcpStream::connect(pg.addr()).await.unwrap();
        let wrong = authenticate_stream(tcp, &params, Some("wrong"))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), Some("28P01"), "{wrong}");

        let tcp = TcpStream::connect(pg.addr()).await.unwrap();
        let (mut stream, mut buf) = authenticate_stream(tcp, &params, Some("pw")).await.unwrap();
        // The rest of the startup is the caller's: up to ReadyForQuery.
        let mut seen = Vec::new();
        loop {
            match parse_backend(&mut buf, 1 << 20).unwrap() {
                Some((tag, message)) => {
                    seen.push(tag);
                    if matches!(message, Message::ReadyForQuery(_)) {
                        break;
                    }
                }
                None => {
                    let n = stream.read_buf(&mut buf).await.unwrap();
                    assert!(n > 0, "the server closed the connection");
                }
            }
        }
        assert!(!seen.contains(&b'R'), "authentication is over: {seen:?}");
        assert!(seen.contains(&b'S') && seen.contains(&b'K'), "{seen:?}");

        // connect_stream does the same and reads on to ReadyForQuery.
        let tcp = TcpStream::connect(pg.addr()).await.unwrap();
        let mut client = connect_stream(tcp, &params, Some("pw")).await.unwrap();
        assert!(client.is_idle());
        let rows = client.simple_query("SELECT current_user").await.unwrap();
        assert_eq!(rows[0].get(0), Some("scram_user"));
    })
    .await
    .expect("timed out");
}
