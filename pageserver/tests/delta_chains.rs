//! The bound on a key's chain of deltas: however many deltas a page gets,
//! in memory, in layer files, after a restart and on a branch, a read
//! applies at most `max_delta_chain` of them, and every version reads the
//! same as applying every delta from the first image.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use pageserver::key::{Key, SlruKind};
use pageserver::tenant::timeline::{RecordLsn, Timeline, TimelineConf};
use pageserver::tenant::Tenant;
use pageserver::value::{ClogStatus, RustRecord, Value, BLCKSZ};
use postgres_format::PgMajorVersion;
use utils::{Lsn, TenantId, TimelineId};

const MAX_CHAIN: usize = 10;
const START: RecordLsn = RecordLsn {
    last: Lsn(0x1000),
    prev: Lsn(0x0FD0),
};

fn conf() -> TimelineConf {
    TimelineConf {
        max_delta_chain: MAX_CHAIN,
        ..TimelineConf::default()
    }
}

fn clog_key(block: u32) -> Key {
    Key::slru_page(SlruKind::Clog, 0, block)
}

/// Ingests one delta per record into a key and remembers every version.
struct Writer {
    key: Key,
    last: RecordLsn,
    next_xid: u32,
    expected: BTreeMap<Lsn, Bytes>,
}

impl Writer {
    fn new(timeline: &Timeline, key: Key) -> Writer {
        let image = Bytes::from(vec![0u8; BLCKSZ]);
        let mut w = Writer {
            key,
            last: timeline.last_record(),
            next_xid: 1,
            expected: BTreeMap::new(),
        };
        w.record(timeline, Value::Image(image.clone()));
        w.expected.insert(w.last.last, image);
        w
    }

    fn record(&mut self, timeline: &Timeline, value: Value) {
        let lsn = Lsn(self.last.last.0 + 0x100);
        timeline.put_batch(lsn, vec![(self.key, value)]).unwrap();
        self.last = RecordLsn {
            last: lsn,
            prev: self.last.last,
        };
        timeline.advance_last_record(self.last);
    }

    /// One delta: a transaction of the page committed.
    fn delta(&mut self, timeline: &Timeline) {
        let xid = self.next_xid;
        self.next_xid += 1;
        let record = RustRecord::ClogSetStatus {
            xids: vec![xid],
            status: ClogStatus::Committed,
        };
        let (_, before) = self.expected.last_key_value().unwrap();
        let mut page: [u8; BLCKSZ] = before.as_ref().try_into().unwrap();
        record.apply(&mut page).unwrap();
        self.record(timeline, Value::Delta(record));
        self.expected
            .insert(self.last.last, Bytes::copy_from_slice(&page));
    }

    /// Every version reads as expected through at most the bound of deltas.
    fn check(&self, timeline: &Timeline, from: Lsn) {
        for (lsn, page) in self.expected.range(from..) {
            let chain = timeline.delta_chain_len(self.key, *lsn).unwrap();
            assert!(chain <= MAX_CHAIN, "{} deltas to read at {lsn}", chain);
            let got = timeline.get(self.key, *lsn).unwrap().unwrap();
            assert!(got == *page, "the version at {lsn} differs");
        }
    }
}

#[test]
fn chains_stay_bounded_in_memory_on_disk_across_restarts_and_branches() {
    let tmp = tempfile::tempdir().unwrap();
    let tenant_id = TenantId::generate();
    let main_id = TimelineId::generate();
    let tenant = Tenant::create(tmp.path(), tenant_id, conf()).unwrap();
    let main = tenant
        .create_root_timeline(main_id, PgMajorVersion::V15, START)
        .unwrap();
    let key = clog_key(0);
    let mut w = Writer::new(&main, key);
    for _ in 0..(MAX_CHAIN * 3 + 4) {
        w.delta(&main);
    }
    // In memory, then in a layer file.
    w.check(&main, Lsn(0));
    main.flush().unwrap();
    w.check(&main, Lsn(0));
    // The chain the restart finds on disk is counted, not assumed empty.
    for _ in 0..(MAX_CHAIN / 2) {
        w.delta(&main);
    }
    main.flush().unwrap();
    drop((main, tenant));
    let tenant = Tenant::load(tmp.path(), tenant_id, conf());
    let main = tenant.get_timeline(main_id).unwrap();
    for _ in 0..(MAX_CHAIN * 2) {
        w.delta(&main);
    }
    w.check(&main, Lsn(0));

    // A branch continues its ancestor's chain.
    for _ in 0..(MAX_CHAIN - 2) {
        w.delta(&main);
    }
    let branch_point = w.last;
    let branch_id = TimelineId::generate();
    let branch: Arc<Timeline> = tenant
        .branch_timeline(main_id, branch_id, branch_point)
        .unwrap();
    let mut on_branch = Writer {
        key,
        last: branch_point,
        next_xid: w.next_xid,
        expected: w.expected.clone(),
    };
    for _ in 0..(MAX_CHAIN * 2) {
        on_branch.delta(&branch);
    }
    on_branch.check(&branch, branch_point.last);
    // The ancestor keeps its own history.
    w.check(&main, Lsn(0));
}
