//! The page service over a real socket: a base backup through the protocol
//! boots stock PostgreSQL, pagestream requests answer what the timeline
//! holds, and malformed requests get errors while the server keeps serving.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use common::{extract_tar, give_to_postgres, initdb, PgServer};
use pageserver::basebackup;
use pageserver::import_datadir::{end_of_wal, import_datadir};
use pageserver::page_service::{self, TimelineLookup};
use pageserver::tenant::timeline::{RecordLsn, Timeline};
use pageserver_api::pagestream::{RelSpec, Request, Response};
use postgres_format::PgMajorVersion;
use tokio_util::sync::CancellationToken;
use utils::{TenantId, TimelineId};

struct Lookup(HashMap<(TenantId, TimelineId), Arc<Timeline>>);

impl TimelineLookup for Lookup {
    fn get_timeline(
        &self,
        tenant_id: TenantId,
        timeline_id: TimelineId,
    ) -> anyhow::Result<Arc<Timeline>> {
        self.0
            .get(&(tenant_id, timeline_id))
            .cloned()
            .with_context(|| format!("timeline {tenant_id}/{timeline_id} not found"))
    }
}

async fn connect(addr: &str) -> pq_proto::Client {
    pq_proto::connect(addr, &[("user", "test")], None)
        .await
        .expect("connect to the page service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_service_serves_basebackups_and_pages() -> anyhow::Result<()> {
    let dir = common::pg_tempdir()?;
    let pgdata = dir.path().join("initdb");
    initdb(&pgdata)?;
    let (start, end) = end_of_wal(&pgdata)?;
    let (tenant_id, timeline_id) = (TenantId::generate(), TimelineId::generate());
    let timeline = Arc::new(Timeline::new_root(
        tenant_id,
        timeline_id,
        PgMajorVersion::V15,
        RecordLsn {
            last: end,
            prev: start,
        },
    ));
    import_datadir(&timeline, &pgdata, end, start)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let cancel = CancellationToken::new();
    let lookup: Arc<dyn TimelineLookup> = Arc::new(Lookup(HashMap::from([(
        (tenant_id, timeline_id),
        timeline.clone(),
    )])));
    let server = tokio::spawn(page_service::serve(
        listener,
        lookup,
        basebackup::basebackup_at,
        16,
        None,
        cancel.clone(),
    ));

    // A base backup through the protocol boots stock PostgreSQL.
    let mut client = connect(&addr).await;
    let mut tar = Vec::new();
    {
        let mut copy = client
            .copy_out(&format!("basebackup {tenant_id} {timeline_id}"))
            .await?;
        while let Some(chunk) = copy.recv().await? {
            tar.extend_from_slice(&chunk);
        }
        copy.finish().await?;
    }
    let compute_dir = dir.path().join("compute");
    extract_tar(&tar, &compute_dir)?;
    give_to_postgres(&compute_dir)?;
    let compute = PgServer::start(&compute_dir, &dir.path().join("compute.log"))?;
    assert_eq!(
        compute.query("postgres", "select count(*) > 300 from pg_class")?,
        "t"
    );
    let (db_oid, rel_node): (u32, u32) = {
        let row = compute.query("postgres", "select (select oid from pg_database where datname = 'postgres'), pg_relation_filenode('pg_class')")?;
        let (a, b) = row.split_once('|').context("two columns")?;
        (a.parse()?, b.parse()?)
    };
    compute.stop()?;

    // Pagestream answers what the timeline holds.
    let rel = RelSpec {
        spc_oid: 1663,
        db_oid,
        rel_node,
        fork: 0,
    };
    let tag = postgres_format::relfile::RelTag {
        node: postgres_format::relfile::RelFileNode {
            spc_oid: 1663,
            db_oid,
            rel_node,
        },
        fork: postgres_format::relfile::ForkNumber::Main,
    };
    let lsn = timeline.last_record_lsn();
    let mut client = connect(&addr).await;
    {
        let mut copy = client
            .copy_both(&format!("pagestream {tenant_id} {timeline_id}"))
            .await?;
        let requests = [
            Request::Exists { lsn, rel },
            Request::Nblocks { lsn, rel },
            Request::GetPage { lsn, rel, block: 0 },
            Request::DbSize { lsn, db_oid },
            Request::GetSlruSegment {
                lsn,
                kind: 0,
                segment: 0,
            },
            Request::GetPage {
                lsn,
                rel,
                block: 1_000_000,
            },
        ];
        let mut responses = Vec::new();
        for request in requests {
            copy.send(&request.encode()).await?;
            copy.flush().await?;
            let data = copy.recv().await?.context("a response")?;
            responses.push(Response::decode(&data)?);
        }
        let nblocks = timeline
            .get_rel_size(tag, lsn)?
            .context("pg_class exists")?;
        assert_eq!(responses[0], Response::Exists(true));
        assert_eq!(responses[1], Response::Nblocks(nblocks));
        assert_eq!(
            responses[2],
            Response::Page(timeline.get_rel_page(tag, 0, lsn)?)
        );
        assert!(matches!(responses[3], Response::DbSize(n) if n >= nblocks as u64 * 8192));
        assert!(
            matches!(&responses[4], Response::SlruSegment(s) if !s.is_empty() && s.len() % 8192 == 0)
        );
        assert!(
            matches!(&responses[5], Response::Error(e) if e.contains("beyond its end")),
            "{:?}",
            responses[5]
        );

        // A malformed request ends the stream with an error ...
        copy.send(b"\x02garbage").await?;
        copy.flush().await?;
        let err = copy
            .recv()
            .await
            .expect_err("a malformed request is refused");
        assert!(
            err.to_string().contains("malformed pagestream request"),
            "{err}"
        );
    }
    // ... and the server keeps serving other connections.
    let mut other = connect(&addr).await;
    let err = other
        .simple_query("basebackup nope nope")
        .await
        .expect_err("bad ids are refused");
    assert!(err.to_string().contains("tenant id"), "{err}");
    let err = other
        .simple_query(&format!(
            "basebackup {tenant_id} {}",
            TimelineId::generate()
        ))
        .await
        .expect_err("unknown timeline");
    assert!(err.to_string().contains("not found"), "{err}");
    let rows = other
        .simple_query("SELECT 1")
        .await
        .expect_err("not a pageserver command");
    assert!(rows.to_string().contains("pageserver"), "{rows}");

    cancel.cancel();
    server.await??;
    Ok(())
}

/// Pagestream reads below the GC horizon are refused, as base backups are:
/// GC may have removed the layers such a read needs, and an older image
/// would answer it with a stale page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagestream_refuses_reads_below_the_gc_horizon() -> anyhow::Result<()> {
    use pageserver::key::Key;
    use pageserver::tenant::timeline::TimelineConf;
    use pageserver::tenant::Tenant;
    use pageserver::value::{Value, BLCKSZ};
    use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
    use utils::Lsn;

    let dir = common::pg_tempdir()?;
    let pgdata = dir.path().join("initdb");
    initdb(&pgdata)?;
    let (start, end) = end_of_wal(&pgdata)?;
    let (tenant_id, timeline_id) = (TenantId::generate(), TimelineId::generate());
    let tenant = Tenant::create(&dir.path().join("ps"), tenant_id, TimelineConf::default())?;
    let timeline = tenant.create_root_timeline(
        timeline_id,
        PgMajorVersion::V15,
        RecordLsn {
            last: end,
            prev: start,
        },
    )?;
    import_datadir(&timeline, &pgdata, end, start)?;
    timeline.flush()?;
    // A new version of pg_class's block 0, then GC above the import.
    let tag = RelTag {
        node: RelFileNode {
            spc_oid: 1663,
            db_oid: 1,
            rel_node: 1259,
        },
        fork: ForkNumber::Main,
    };
    let old_page = timeline.get_rel_page(tag, 0, end)?;
    let new_page = bytes::Bytes::from(vec![7u8; BLCKSZ]);
    let later = Lsn(end.0 + 0x100);
    timeline.put_batch(
        later,
        vec![(Key::rel_block(tag, 0), Value::Image(new_page.clone()))],
    )?;
    timeline.advance_last_record(RecordLsn {
        last: later,
        prev: end,
    });
    timeline.flush()?;
    timeline.compact_images(later)?;
    tenant.gc_timeline(timeline_id, later)?;
    assert_eq!(timeline.gc_horizon(), later);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let cancel = CancellationToken::new();
    let lookup: Arc<dyn TimelineLookup> = Arc::new(Lookup(HashMap::from([(
        (tenant_id, timeline_id),
        timeline.clone(),
    )])));
    let server = tokio::spawn(page_service::serve(
        listener,
        lookup,
        basebackup::basebackup_at,
        16,
        None,
        cancel.clone(),
    ));
    let rel = RelSpec {
        spc_oid: 1663,
        db_oid: 1,
        rel_node: 1259,
        fork: 0,
    };
    let mut client = connect(&addr).await;
    {
        let mut copy = client
            .copy_both(&format!("pagestream {tenant_id} {timeline_id}"))
            .await?;
        let mut ask = async |request: Request| -> anyhow::Result<Response> {
            copy.send(&request.encode()).await?;
            copy.flush().await?;
            let data = copy.recv().await?.context("a response")?;
            Ok(Response::decode(&data)?)
        };
        for request in [
            Request::GetPage {
                lsn: end,
                rel,
                block: 0,
            },
            Request::Nblocks { lsn: end, rel },
            Request::Exists { lsn: end, rel },
        ] {
            let response = ask(request.clone()).await?;
            assert!(
                matches!(&response, Response::Error(e) if e.contains("below the GC horizon")),
                "{request:?} below the horizon answered {response:?} (the page there was {} bytes)",
                old_page.len()
            );
        }
        let response = ask(Request::GetPage {
            lsn: later,
            rel,
            block: 0,
        })
        .await?;
        assert_eq!(response, Response::Page(new_page.clone()));
        let response = ask(Request::GetLatestPage {
            not_modified_since: end,
            rel,
            block: 0,
        })
        .await?;
        assert_eq!(response, Response::Page(new_page));
    }
    cancel.cancel();
    server.await??;
    Ok(())
}
