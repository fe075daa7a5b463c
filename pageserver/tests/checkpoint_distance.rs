//! The disk-consistent LSN follows ingest within the checkpoint distance,
//! however few values the WAL carries, so a restart ingests at most that
//! much WAL again.

use bytes::Bytes;
use pageserver::key::Key;
use pageserver::tenant::timeline::{RecordLsn, TimelineConf};
use pageserver::tenant::Tenant;
use pageserver::value::{Value, BLCKSZ};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::PgMajorVersion;
use utils::{Lsn, TenantId, TimelineId};

const DISTANCE: u64 = 1024 * 1024;
/// WAL between two records: large records carrying few values (think of
/// records whose pages are elsewhere, or big commit records).
const STEP: u64 = 100 * 1024;

#[test]
fn disk_consistent_lsn_trails_by_at_most_the_checkpoint_distance() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = TimelineConf {
        // Never full by size: only the WAL distance can trigger a flush.
        open_layer_max_bytes: usize::MAX,
        checkpoint_distance: DISTANCE,
        ..TimelineConf::default()
    };
    let tenant = Tenant::create(tmp.path(), TenantId::generate(), conf.clone()).unwrap();
    let start = RecordLsn {
        last: Lsn(0x100_0000),
        prev: Lsn(0xFF_FFD0),
    };
    let timeline = tenant
        .create_root_timeline(TimelineId::generate(), PgMajorVersion::V15, start)
        .unwrap();
    let key = Key::rel_block(
        RelTag {
            node: RelFileNode {
                spc_oid: 1663,
                db_oid: 5,
                rel_node: 16384,
            },
            fork: ForkNumber::Main,
        },
        0,
    );
    let mut record = start;
    let mut flushes = 0;
    for i in 0..200u64 {
        let next = RecordLsn {
            last: Lsn(record.last.0 + STEP),
            prev: record.last,
        };
        let page = Bytes::from(vec![(i % 251) as u8; BLCKSZ]);
        timeline
            .put_batch(next.last, vec![(key, Value::Image(page))])
            .unwrap();
        let before = timeline.disk_consistent_lsn();
        timeline.advance_last_record(next);
        if timeline.disk_consistent_lsn() != before {
            flushes += 1;
        }
        record = next;
        let lag = record.last.0 - timeline.disk_consistent_lsn().0;
        assert!(
            lag < DISTANCE + STEP,
            "record {i}: the disk-consistent LSN trails the last record by {lag} bytes"
        );
    }
    // 20 MB of WAL in 1 MiB distances: about 19 flushes, none by size.
    assert!(flushes >= 15, "only {flushes} flushes");
    assert!(timeline.open_layer_size() < 16 * BLCKSZ * 2);

    // A reload resumes at the disk-consistent LSN, close to the end.
    let last = timeline.last_record_lsn();
    let tenant_id = tenant.tenant_id;
    drop(timeline);
    drop(tenant);
    let tenant = Tenant::load(tmp.path(), tenant_id, conf);
    let reloaded = &tenant.timelines()[0];
    assert!(last.0 - reloaded.last_record_lsn().0 < DISTANCE + STEP);
}
