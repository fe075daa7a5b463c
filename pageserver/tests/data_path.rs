//! The pageserver's data path against real PostgreSQL 15: import a data
//! directory, ingest WAL, and start stock PostgreSQL from base backups.

mod common;

use std::path::Path;

use anyhow::Context;
use common::{configure, extract_tar, give_to_postgres, initdb, run, PgServer};
use pageserver::basebackup::{send_basebackup, RelationData};
use pageserver::import_datadir::{end_of_wal, import_datadir};
use pageserver::tenant::timeline::{RecordLsn, Timeline};
use pageserver::walingest::WalIngest;
use postgres_format::wal::read_wal_directory;
use postgres_format::PgMajorVersion;
use utils::{Lsn, TenantId, TimelineId};

/// Import a stopped data directory into a new root timeline at its end of WAL.
fn import(pgdata: &Path) -> anyhow::Result<(Timeline, RecordLsn)> {
    let (start, end) = end_of_wal(pgdata)?;
    let at = RecordLsn {
        last: end.checked_align_up(8).unwrap(),
        prev: start,
    };
    let timeline = Timeline::new_root(
        TenantId::generate(),
        TimelineId::generate(),
        PgMajorVersion::V15,
        at,
    );
    import_datadir(&timeline, pgdata, at.last, at.prev)?;
    Ok((timeline, at))
}

/// Start stock PostgreSQL on a base backup of `timeline` at `at`, and check
/// that it started without recovery.
fn start_from_basebackup(
    timeline: &Timeline,
    at: RecordLsn,
    dir: &Path,
    name: &str,
) -> anyhow::Result<PgServer> {
    let mut tar = Vec::new();
    let info = send_basebackup(timeline, at, RelationData::Full, &mut tar)
        .with_context(|| format!("base backup at {}", at.last))?;
    let pgdata = dir.join(name);
    extract_tar(&tar, &pgdata)?;
    configure(
        &pgdata,
        &[("max_prepared_transactions", "5"), ("fsync", "off")],
    )?;
    let server = PgServer::start(&pgdata, &dir.join(format!("{name}.log")))?;
    let log = server.log_text();
    assert!(
        log.contains("database system was shut down at"),
        "no clean start from the base backup at {}:\n{log}",
        at.last
    );
    assert!(
        !log.contains("redo starts") && !log.contains("not properly shut down"),
        "the base backup at {} started with recovery:\n{log}",
        at.last
    );
    assert_eq!(server.query("postgres", "select pg_is_in_recovery()")?, "f");
    // New WAL follows the fabricated checkpoint.
    let insert: Lsn = server
        .query("postgres", "select pg_current_wal_insert_lsn()")?
        .parse()?;
    assert!(insert >= info.end_lsn, "{insert} < {}", info.end_lsn);
    Ok(server)
}

#[test]
fn import_basebackup_starts_without_recovery() -> anyhow::Result<()> {
    let dir = common::pg_tempdir()?;
    let pgdata = dir.path().join("initdb");
    initdb(&pgdata)?;
    let (timeline, at) = import(&pgdata)?;
    assert_eq!(timeline.last_record(), at);

    let copy = start_from_basebackup(&timeline, at, dir.path(), "copy")?;
    let catalog_sql =
        "select md5(string_agg(relname || ':' || relfilenode, ',' order by relname)) from pg_class";
    let n: u32 = copy
        .query("postgres", "select count(*) from pg_class")?
        .parse()?;
    assert!(n > 300, "pg_class has {n} rows");
    let dbs = copy.query(
        "postgres",
        "select string_agg(datname, ',' order by datname) from pg_database",
    )?;
    assert_eq!(dbs, "postgres,template0,template1");
    copy.query("postgres", "create table t(id int primary key, v text)")?;
    copy.query(
        "postgres",
        "insert into t select g, 'row ' || g from generate_series(1, 1000) g",
    )?;
    assert_eq!(
        copy.query("postgres", "select count(*), sum(id) from t")?,
        "1000|500500"
    );
    assert_eq!(
        copy.query("template1", "select count(*) > 300 from pg_class")?,
        "t"
    );
    let copy_catalog = copy.query("template1", catalog_sql)?;
    copy.stop()?;

    // The same catalog as the original cluster.
    let original = PgServer::start(&pgdata, &dir.path().join("original.log"))?;
    assert_eq!(original.query("template1", catalog_sql)?, copy_catalog);
    original.stop()?;
    Ok(())
}

#[test]
fn bad_input_is_refused() -> anyhow::Result<()> {
    use postgres_format::control_file::{ControlFile, DbState};
    let dir = common::pg_tempdir()?;
    let pgdata = dir.path().join("initdb");
    initdb(&pgdata)?;

    // A directory that was not shut down cleanly.
    let crashed = dir.path().join("crashed");
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&pgdata)
        .arg(&crashed))?;
    let control_path = crashed.join("global/pg_control");
    let mut control = ControlFile::decode(&std::fs::read(&control_path)?, PgMajorVersion::V15)?;
    control.state = DbState::InProduction;
    std::fs::write(&control_path, control.encode())?;
    let err = import(&crashed)
        .err()
        .context("importing a crashed cluster")?;
    assert!(
        format!("{err:#}").contains("not shut down cleanly"),
        "{err:#}"
    );

    // Data checksums (the stored pages' pd_lsn would not match them).
    let checksums = dir.path().join("checksums");
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&pgdata)
        .arg(&checksums))?;
    let control_path = checksums.join("global/pg_control");
    let mut control = ControlFile::decode(&std::fs::read(&control_path)?, PgMajorVersion::V15)?;
    control.data_checksum_version = 1;
    std::fs::write(&control_path, control.encode())?;
    let err = import(&checksums)
        .err()
        .context("importing a cluster with data checksums")?;
    assert!(format!("{err:#}").contains("data checksums"), "{err:#}");

    // A tablespace.
    let spc = dir.path().join("with-tablespace");
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&pgdata)
        .arg(&spc))?;
    std::os::unix::fs::symlink(dir.path(), spc.join("pg_tblspc/16500"))?;
    let err = import(&spc)
        .err()
        .context("importing a cluster with a tablespace")?;
    assert!(format!("{err:#}").contains("tablespaces"), "{err:#}");

    // Importing twice, and base backups where the timeline has no WAL.
    let (timeline, at) = import(&pgdata)?;
    assert!(import_datadir(&timeline, &pgdata, at.last, at.prev).is_err());
    let beyond = RecordLsn {
        last: at.last + 0x1000,
        prev: at.last,
    };
    let err = send_basebackup(&timeline, beyond, RelationData::Full, Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains("ingested up to"), "{err:#}");
    let before = RecordLsn {
        last: Lsn(at.last.0 - 8),
        prev: at.prev,
    };
    assert!(send_basebackup(&timeline, before, RelationData::Full, Vec::new()).is_err());

    // Garbage records are errors, and change nothing.
    let mut ingest = WalIngest::new(&timeline)?;
    for bytes in [vec![], vec![0u8; 10], vec![0xFFu8; 100]] {
        let record = postgres_format::wal::RawRecord {
            start_lsn: at.last,
            end_lsn: at.last + bytes.len() as u64,
            bytes: bytes.into(),
        };
        assert!(ingest.ingest_record(&timeline, &record).is_err());
    }
    assert_eq!(timeline.last_record(), at);
    Ok(())
}

/// Query results that must be equal on the primary and on a base backup.
const CHECKS: &[(&str, &str)] = &[
    (
        "postgres",
        "select count(*), coalesce(md5(string_agg(t::text, ',' order by id)), '') from t",
    ),
    (
        "postgres",
        "select count(*), coalesce(md5(string_agg(s::text, ',' order by a)), '') from sub",
    ),
    ("postgres", "select count(*) from big"),
    ("postgres", "select coalesce(string_agg(relname, ',' order by relname), '') from pg_class where relname like 'tmp%'"),
    ("postgres", "select string_agg(datname, ',' order by datname) from pg_database"),
    ("postgres", "select coalesce(string_agg(gid, ',' order by gid), '') from pg_prepared_xacts"),
    // Index scans use the indexes as the WAL left them.
    ("postgres", "set enable_seqscan = off; select count(*), sum(id) from t where id between 10 and 900"),
];

const DB_CHECKS: &[&str] =
    &["select count(*), coalesce(md5(string_agg(x::text, ',' order by a)), '') from x"];

fn snapshot(server: &PgServer, dbs: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (db, sql) in CHECKS {
        out.push(format!("{db}: {sql} => {}", server.query(db, sql)?));
    }
    for db in dbs {
        for sql in DB_CHECKS {
            out.push(format!("{db}: {sql} => {}", server.query(db, sql)?));
        }
    }
    Ok(out)
}

struct Point {
    name: &'static str,
    lsn: Lsn,
    dbs: Vec<&'static str>,
    results: Vec<String>,
    seq: i64,
}

fn record_point(
    server: &PgServer,
    name: &'static str,
    dbs: &[&'static str],
) -> anyhow::Result<Point> {
    let results = snapshot(server, dbs)?;
    let seq = server
        .query("postgres", "select last_value from seq")?
        .parse()?;
    let lsn = server
        .query("postgres", "select pg_current_wal_insert_lsn()")?
        .parse()?;
    Ok(Point {
        name,
        lsn,
        dbs: dbs.to_vec(),
        results,
        seq,
    })
}

/// With every page in the WAL (`wal_consistency_checking = all`): pages are
/// stored as PostgreSQL's images.
#[test]
fn wal_ingest_matches_postgres_with_page_images() -> anyhow::Result<()> {
    wal_ingest_matches_postgres("'all'")
}

/// Stock PostgreSQL without `wal_consistency_checking` (heap, B-tree and
/// sequences only): every page comes from full-page images and Rust redo.
#[test]
fn wal_ingest_matches_postgres_by_rust_redo() -> anyhow::Result<()> {
    wal_ingest_matches_postgres("''")
}

fn wal_ingest_matches_postgres(consistency_checking: &str) -> anyhow::Result<()> {
    let dir = common::pg_tempdir()?;
    let primary_dir = dir.path().join("primary");
    let initdb_copy = dir.path().join("initdb-copy");
    initdb(&primary_dir)?;
    run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&primary_dir)
        .arg(&initdb_copy))?;
    give_to_postgres(&initdb_copy)?;
    configure(
        &primary_dir,
        &[
            ("wal_consistency_checking", consistency_checking),
            ("wal_compression", "lz4"),
            ("wal_keep_size", "'1GB'"),
            ("max_wal_size", "'1GB'"),
            ("max_prepared_transactions", "5"),
            ("fsync", "off"),
        ],
    )?;
    let primary = PgServer::start(&primary_dir, &dir.path().join("primary.log"))?;
    let q = |db: &str, sql: &str| primary.query(db, sql);
    let mut points = Vec::new();

    // 1: tables, an index, a sequence, an unlogged table.
    q(
        "postgres",
        "create table t(id int primary key, v text, n int);
         create index t_v on t(v);
         create sequence seq;
         create table sub(a int, s text);
         create table big(id int, pad text);
         create unlogged table ul(a int primary key, b text);
         insert into ul select g, 'u' || g from generate_series(1, 100) g;
         insert into t select g, md5(g::text), nextval('seq') from generate_series(1, 2000) g;
         insert into big select g, repeat('x', 500) from generate_series(1, 3000) g;",
    )?;
    points.push(record_point(&primary, "tables", &[])?);

    // 2: updates, deletes, VACUUM (with truncation), TRUNCATE,
    // subtransactions, two-phase commit, a multixact.
    q(
        "postgres",
        "vacuum (freeze) t;
         update t set v = 'updated ' || id where id % 7 = 0;
         delete from t where id % 11 = 0;
         delete from big where id > 1000;
         vacuum big;
         vacuum t;
         create table tmp_truncated(a int);
         insert into tmp_truncated select generate_series(1, 100);
         truncate tmp_truncated;
         insert into tmp_truncated values (1);
         create table tmp_dropped(a int);
         drop table tmp_dropped;",
    )?;
    q(
        "postgres",
        "begin;
         insert into sub values (1, 'top');
         savepoint a;
         insert into sub values (2, 'sub committed');
         savepoint b;
         insert into sub values (3, 'rolled back');
         rollback to savepoint b;
         insert into sub values (4, 'after rollback');
         release savepoint a;
         commit;",
    )?;
    q(
        "postgres",
        "begin; select * from t where id = 1 for share; savepoint s;
         update t set n = -1 where id = 1; commit;",
    )?;
    q(
        "postgres",
        "begin; insert into sub values (10, 'prepared, committed'); prepare transaction 'p_commit';",
    )?;
    q(
        "postgres",
        "begin; insert into sub values (11, 'prepared, rolled back'); prepare transaction 'p_rollback';",
    )?;
    q(
        "postgres",
        "begin; insert into sub values (12, 'prepared, pending'); prepare transaction 'p_pending';",
    )?;
    q("postgres", "commit prepared 'p_commit'")?;
    q("postgres", "rollback prepared 'p_rollback'")?;
    q(
        "postgres",
        "select nextval('seq') from generate_series(1, 50)",
    )?;
    points.push(record_point(&primary, "dml", &[])?);

    // 3: CREATE DATABASE with both strategies, a dropped database, a WAL switch.
    q("postgres", "commit prepared 'p_pending'")?;
    q("postgres", "create database db_wal strategy wal_log")?;
    q("postgres", "create database db_copy strategy file_copy")?;
    q("postgres", "create database db_dropped")?;
    q("postgres", "drop database db_dropped")?;
    for db in ["db_wal", "db_copy"] {
        q(
            db,
            "create table x(a int primary key, b text);
             insert into x select g, 'in ' || current_database() || g from generate_series(1, 500) g;
             update x set b = b || '!' where a % 3 = 0;",
        )?;
    }
    // Deletes on all-visible pages: index-only scans see the VM bits cleared.
    q(
        "postgres",
        "vacuum (freeze) t; delete from t where id % 13 = 0",
    )?;
    q("postgres", "select pg_switch_wal()")?;
    q(
        "postgres",
        "insert into t values (100000, 'after switch', 0)",
    )?;
    points.push(record_point(&primary, "databases", &["db_wal", "db_copy"])?);

    // 4: more after a checkpoint.
    q("postgres", "checkpoint")?;
    q("postgres", "update big set pad = 'y' where id <= 10; delete from t where id between 500 and 600; vacuum t")?;
    q(
        "db_copy",
        "drop table x; create table x(a int, b text); insert into x values (1, 'recreated')",
    )?;
    let final_point = record_point(&primary, "final", &["db_wal", "db_copy"])?;
    primary.stop()?;

    // Import the initdb state, then ingest the primary's WAL after it.
    let (timeline, start) = import(&initdb_copy)?;

    // The workload wrote the records the Rust side applies.
    // (pg_waldump exits 1 at the end of WAL: its output is what counts.)
    let stats = common::pg_command("pg_waldump")
        .arg("-p")
        .arg(primary_dir.join("pg_wal"))
        .arg("-s")
        .arg(start.last.to_string())
        .arg("--stats=record")
        .output()?;
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    for kind in [
        "MultiXact/CREATE_ID",
        "Storage/CREATE",
        "Storage/TRUNCATE",
        "Database/CREATE_FILE_COPY",
        "Database/CREATE_WAL_LOG",
        "Database/DROP",
        "Transaction/PREPARE",
        "Transaction/COMMIT_PREPARED",
        "Transaction/ABORT_PREPARED",
        "RelMap/UPDATE",
        "XLOG/NEXTOID",
        "XLOG/SWITCH",
        "Heap2/VISIBLE",
    ] {
        assert!(
            stats.contains(kind),
            "the workload wrote no {kind}:\n{stats}"
        );
    }
    let mut ingest = WalIngest::new(&timeline)?;
    let mut boundaries = vec![start];
    let wal_end = read_wal_directory(
        &primary_dir.join("pg_wal"),
        PgMajorVersion::V15,
        Some(start.last),
        None,
        1 << 20,
        |record| {
            ingest.ingest_record(&timeline, &record)?;
            boundaries.push(RecordLsn {
                last: record.end_lsn.checked_align_up(8).unwrap(),
                prev: record.start_lsn,
            });
            Ok(())
        },
    )?;
    if let Some(e) = &wal_end.error {
        assert!(e.is_end_of_wal(), "WAL ended with an error: {e}");
    }
    assert_eq!(
        ingest.unhandled_records, 0,
        "records without images or redo"
    );
    assert!(ingest.records > 1000, "only {} records", ingest.records);
    if consistency_checking == "''" {
        // Most changes came without an image and were redone in Rust.
        assert!(
            ingest.redo_blocks > ingest.records / 2,
            "only {} of {} records stored for redo",
            ingest.redo_blocks,
            ingest.records
        );
    }
    let last = *boundaries.last().expect("records");
    assert_eq!(timeline.last_record(), last);
    eprintln!(
        "ingested {} records from {} to {}",
        ingest.records, start.last, last.last
    );

    let mut all = points;
    all.push(final_point);
    for point in &all {
        // The state at the insert position: the last record ending at or before it.
        let at = *boundaries
            .iter()
            .rev()
            .find(|b| b.last <= point.lsn)
            .context("no record boundary before the point")?;
        let server = start_from_basebackup(&timeline, at, dir.path(), point.name)?;
        let results = snapshot(&server, &point.dbs)?;
        assert_eq!(
            results, point.results,
            "query results differ at point {} ({})",
            point.name, point.lsn
        );
        // Sequences are logged ahead: the copy never goes back.
        let next: i64 = server.query("postgres", "select nextval('seq')")?.parse()?;
        assert!(
            next > point.seq,
            "{}: nextval {next} <= {}",
            point.name,
            point.seq
        );
        // Unlogged tables come back empty, from their init fork.
        assert_eq!(server.query("postgres", "select count(*) from ul")?, "0");
        server.query("postgres", "insert into ul values (1, 'one')")?;
        // The copy is writable and consistent.
        server.query(
            "postgres",
            "insert into t values (200000, 'copy', 0); update t set n = n + 1 where id = 2",
        )?;
        if point.name == "final" {
            amcheck(&server, &["postgres", "db_wal", "db_copy"])?;
        }
        server.stop()?;
    }
    Ok(())
}

/// amcheck: heap and btree structure, every heap tuple indexed.
fn amcheck(server: &PgServer, dbs: &[&str]) -> anyhow::Result<()> {
    for db in dbs {
        server.query(db, "create extension if not exists amcheck")?;
        let heap = server.query(
            db,
            "select count(*) from pg_class c, verify_heapam(c.oid)
             where c.relkind in ('r', 'm', 't') and c.relpersistence <> 't'",
        )?;
        assert_eq!(heap, "0", "verify_heapam found corruption in {db}");
        server.query(
            db,
            "select count(bt_index_parent_check(c.oid, true)) from pg_index i
             join pg_class c on c.oid = i.indexrelid
             join pg_am am on am.oid = c.relam
             where am.amname = 'btree' and c.relpersistence <> 't' and i.indisvalid",
        )?;
    }
    Ok(())
}
