//! Generations in remote storage and timeline deletion, with real tenant
//! managers (each its own working directory) over one local-directory
//! bucket:
//! - a pageserver whose generation is stale deletes nothing that the newer
//!   generation's index names and overwrites no index of it;
//! - a crash after any step of a timeline's remote deletion leaves the
//!   tenant attachable, with the timeline either whole or gone;
//! - a deletion waits for the upload in flight: nothing of the timeline
//!   lands afterwards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pageserver::key::Key;
use pageserver::remote_timeline::{
    self, Generation, IndexPart, RemoteTenant, StaleGeneration, INDEX_FILE_NAME,
};
use pageserver::tenant::timeline::{RecordLsn, Timeline, TimelineConf};
use pageserver::tenant::{Tenant, TenantError, TenantState};
use pageserver::tenant_manager::{AttachError, InitdbConf, TenantManager};
use pageserver::value::{Value, BLCKSZ};
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::PgMajorVersion;
use remote_storage::{
    GenericRemoteStorage, Hook, HookFuture, LocalFs, Operation, RemoteError, RemotePath,
};
use tokio_util::sync::CancellationToken;
use utils::{Lsn, TenantId, TimelineId};

const START: RecordLsn = RecordLsn {
    last: Lsn(0x1000),
    prev: Lsn(0x0FD0),
};
const KEYS: u32 = 8;
/// How long a condition may take to become true (uploads run every 500 ms).
const DEADLINE: Duration = Duration::from_secs(60);

fn key(block: u32) -> Key {
    Key::rel_block(
        RelTag {
            node: RelFileNode {
                spc_oid: 1663,
                db_oid: 5,
                rel_node: 16384,
            },
            fork: ForkNumber::Main,
        },
        block,
    )
}

fn page(fill: u8) -> Bytes {
    Bytes::from(vec![fill; BLCKSZ])
}

/// A pageserver: a tenant manager in its own working directory.
struct Node {
    _workdir: tempfile::TempDir,
    workdir: PathBuf,
    manager: Arc<TenantManager>,
    cancel: CancellationToken,
}

impl Node {
    fn start(storage: &GenericRemoteStorage) -> Node {
        let workdir = tempfile::tempdir().unwrap();
        let path = workdir.path().to_owned();
        let mut node = Node::load(&path, storage);
        node._workdir = workdir;
        node
    }

    /// A manager over `workdir` (a pageserver starting there).
    fn load(workdir: &Path, storage: &GenericRemoteStorage) -> Node {
        let cancel = CancellationToken::new();
        let manager = TenantManager::load(
            workdir,
            TimelineConf {
                open_layer_max_bytes: 64 * 1024 * 1024,
                ..TimelineConf::default()
            },
            InitdbConf {
                pg_bin_dir: PathBuf::from("/nonexistent"),
                pg_os_user: "postgres".into(),
            },
            None,
            Some(storage.clone()),
            cancel.clone(),
        )
        .unwrap();
        Node {
            _workdir: tempfile::tempdir().unwrap(),
            workdir: workdir.to_owned(),
            manager,
            cancel,
        }
    }

    /// Stop every task (a crash, as far as remote storage can tell).
    fn stop(&self) {
        self.cancel.cancel();
    }

    fn remote_tenant(&self, tenant_id: TenantId) -> Arc<RemoteTenant> {
        self.manager.remote_tenant(tenant_id).expect("a generation")
    }
}

fn local(dir: &Path) -> GenericRemoteStorage {
    GenericRemoteStorage::LocalFs(LocalFs::new(dir).unwrap())
}

/// One record per key, each a page image filled with `fill`, then a flush
/// (a new delta layer). Returns the last LSN.
fn write_and_flush(timeline: &Timeline, fill: u8) -> Lsn {
    for block in 0..KEYS {
        let prev = timeline.last_record();
        let record = RecordLsn {
            last: Lsn(prev.last.0 + 0x40),
            prev: prev.last,
        };
        timeline
            .put_batch(record.last, vec![(key(block), Value::Image(page(fill)))])
            .unwrap();
        timeline.advance_last_record(record);
    }
    timeline.flush().unwrap();
    timeline.last_record_lsn()
}

fn check_pages(timeline: &Timeline, lsn: Lsn, fill: u8, what: &str) {
    for block in 0..KEYS {
        let got = timeline.get(key(block), lsn).unwrap();
        assert_eq!(got, Some(page(fill)), "{what}: block {block} at {lsn}");
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Until remote storage holds everything the timeline flushed.
async fn wait_uploaded(timeline: &Timeline) {
    let what = format!("the uploads of timeline {}", timeline.timeline_id);
    wait_until(&what, || {
        timeline.remote_consistent_lsn() >= timeline.disk_consistent_lsn()
    })
    .await;
}

async fn objects(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
) -> BTreeSet<RemotePath> {
    storage
        .list(Some(&remote_timeline::timeline_path(
            tenant_id,
            timeline_id,
        )))
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn index_of(
    storage: &GenericRemoteStorage,
    tenant_id: TenantId,
    timeline_id: TimelineId,
    generation: Generation,
) -> (Bytes, IndexPart) {
    let bytes = storage
        .download(&remote_timeline::index_path(
            tenant_id,
            timeline_id,
            generation,
        ))
        .await
        .unwrap();
    let index = IndexPart::parse(&bytes).unwrap();
    (bytes, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_generation_deletes_nothing_the_newer_one_needs() {
    let bucket = tempfile::tempdir().unwrap();
    let storage = local(bucket.path());
    let (tenant_id, timeline_id) = (TenantId::generate(), TimelineId::generate());

    // Pageserver A creates the tenant (generation 1) and uploads 3 layers.
    let a = Node::start(&storage);
    let tenant_a = a.manager.create_tenant(tenant_id).await.unwrap();
    let tl_a = a
        .manager
        .create_root_timeline(&tenant_a, timeline_id, PgMajorVersion::V15, START)
        .unwrap();
    for fill in 1..=3 {
        write_and_flush(&tl_a, fill);
    }
    wait_uploaded(&tl_a).await;
    assert_eq!(a.remote_tenant(tenant_id).generation(), Generation(1));
    // A second tenant of the same id cannot be created over it.
    let other = Node::start(&storage);
    let err = other
        .manager
        .create_tenant(tenant_id)
        .await
        .err()
        .expect("a second tenant of one id");
    assert!(err.to_string().contains("attach it"), "{err:#}");

    // Pageserver B attaches it: generation 2, from A's index; then writes
    // on and uploads its own index.
    let b = Node::start(&storage);
    let tenant_b = b.manager.attach_tenant(tenant_id, None).await.unwrap();
    assert_eq!(b.remote_tenant(tenant_id).generation(), Generation(2));
    let tl_b = tenant_b.get_timeline(timeline_id).unwrap();
    let b_lsn = write_and_flush(&tl_b, 0xB0);
    wait_uploaded(&tl_b).await;
    let (b_bytes, b_index) = index_of(&storage, tenant_id, timeline_id, Generation(2)).await;
    let generations: BTreeSet<Generation> = b_index.layers.values().map(|f| f.generation).collect();
    assert_eq!(
        generations,
        BTreeSet::from([Generation(1), Generation(2)]),
        "B's index names A's layers and its own"
    );

    // A, unaware of B, writes, compacts and collects garbage: the layers
    // of generation 1 that B's index names go from A's disk.
    write_and_flush(&tl_a, 0xA0);
    tl_a.compact_images(tl_a.disk_consistent_lsn())
        .unwrap()
        .expect("an image layer");
    let removed = tenant_a
        .gc_timeline(timeline_id, tl_a.disk_consistent_lsn())
        .unwrap();
    assert!(
        removed.iter().any(|name| b_index.layers.contains_key(name)),
        "GC on A removed no layer B's index names: {removed:?}"
    );
    // A's uploader uploads that, then finds generation 2 and stops for good
    // (a pageserver that deleted what its own new index no longer names
    // would remove objects B's index names instead).
    let a_remote = a.remote_tenant(tenant_id);
    let b_files: Vec<PathBuf> = b_index
        .layers
        .iter()
        .map(|(name, file)| {
            let path = remote_timeline::layer_path(tenant_id, timeline_id, name, file.generation);
            bucket.path().join(path.as_str())
        })
        .collect();
    wait_until("A to find that it is stale", || {
        a_remote.newer_generation().is_some() || b_files.iter().any(|f| !f.exists())
    })
    .await;

    // Everything B's index names is still there, whole, and B's index is
    // the newest and untouched.
    for (name, file) in &b_index.layers {
        let path = remote_timeline::layer_path(tenant_id, timeline_id, name, file.generation);
        let data = storage
            .download(&path)
            .await
            .unwrap_or_else(|e| panic!("{path}, named by B's index: {e}"));
        assert_eq!(data.len() as u64, file.file_size, "{path}");
    }
    let listing = remote_timeline::list_timeline(&storage, tenant_id, timeline_id)
        .await
        .unwrap();
    assert_eq!(listing.latest_index(), Some(Generation(2)));
    assert_eq!(
        index_of(&storage, tenant_id, timeline_id, Generation(2))
            .await
            .0,
        b_bytes
    );
    // (A checks the generations only after uploading its index: so A did
    // run a round with the layers gone.)
    assert_eq!(a_remote.newer_generation(), Some(Generation(2)));

    // A refuses to delete the timeline, and deletes nothing.
    let before = objects(&storage, tenant_id, timeline_id).await;
    let err = a
        .manager
        .delete_timeline(&tenant_a, timeline_id)
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<StaleGeneration>().is_some(), "{err:#}");
    assert_eq!(objects(&storage, tenant_id, timeline_id).await, before);
    assert!(
        tenant_a.get_timeline(timeline_id).is_ok(),
        "A still serves it"
    );

    // An attach with a generation not above the highest is refused; a
    // fresh attach reads B's data.
    let c = Node::start(&storage);
    let err = c
        .manager
        .attach_tenant(tenant_id, Some(Generation(2)))
        .await
        .err()
        .expect("an attach at generation 2 when 2 is taken");
    assert!(
        matches!(
            err.downcast_ref::<AttachError>(),
            Some(AttachError::GenerationTooLow { highest: 2, .. })
        ),
        "{err:#}"
    );
    let tenant_c = c.manager.attach_tenant(tenant_id, None).await.unwrap();
    assert_eq!(c.remote_tenant(tenant_id).generation(), Generation(3));
    let tl_c = tenant_c.get_timeline(timeline_id).unwrap();
    assert_eq!(tl_c.disk_consistent_lsn(), b_lsn);
    check_pages(&tl_c, b_lsn, 0xB0, "attached from generation 2");

    // A restarted keeps its generation, is stale from its first check,
    // and still deletes nothing.
    let c_objects = objects(&storage, tenant_id, timeline_id).await;
    a.stop();
    let a2 = Node::load(&a.workdir, &storage);
    let a2_remote = a2.remote_tenant(tenant_id);
    assert_eq!(a2_remote.generation(), Generation(1));
    wait_until("A, restarted, to find that it is stale", || {
        a2_remote.newer_generation().is_some()
    })
    .await;
    assert_eq!(a2_remote.newer_generation(), Some(Generation(3)));
    assert_eq!(objects(&storage, tenant_id, timeline_id).await, c_objects);
    // Its uploads stopped for good: detaching it does not wait for them.
    a2.manager
        .detach_tenant(tenant_id, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(a2.manager.get(tenant_id).is_none());
    assert_eq!(objects(&storage, tenant_id, timeline_id).await, c_objects);
    for node in [&a2, &b, &c, &other] {
        node.stop();
    }
}

/// Fails every operation on the doomed timeline's objects once `limit` of
/// them have run, after it is armed: the pageserver crashed there.
/// Also says whether the tombstone went up.
struct CrashAfter {
    prefix: RemotePath,
    limit: usize,
    armed: AtomicBool,
    count: AtomicUsize,
    tombstone_up: AtomicBool,
}

impl CrashAfter {
    fn hook(self: &Arc<Self>) -> Hook {
        let this = self.clone();
        Arc::new(move |op: Operation| -> HookFuture {
            let crashed = this.armed.load(Ordering::SeqCst)
                && op.touches(&this.prefix)
                && this.count.fetch_add(1, Ordering::SeqCst) >= this.limit;
            if let Operation::Upload(path) = &op {
                if !crashed && path.object_name() == remote_timeline::TOMBSTONE_NAME {
                    this.tombstone_up.store(true, Ordering::SeqCst);
                }
            }
            Box::pin(async move {
                if crashed {
                    Err(RemoteError::Other(anyhow::anyhow!("crashed before {op:?}")))
                } else {
                    Ok(())
                }
            })
        })
    }
}

/// The operations on the timeline's objects in a deletion: the tombstone,
/// the listing, the indexes, the layers, the tombstone.
const DELETION_OPERATIONS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_a_deletion_leaves_the_tenant_attachable() {
    let mut cases: Vec<(usize, bool)> = (0..=DELETION_OPERATIONS).map(|k| (k, false)).collect();
    // And a deletion cut short, then retried on the same pageserver.
    cases.push((2, true));
    for (limit, retry) in cases {
        let what = format!("crash after {limit} operations (retried: {retry})");
        let bucket = tempfile::tempdir().unwrap();
        let storage = local(bucket.path());
        let tenant_id = TenantId::generate();
        let (keep, doomed) = (TimelineId::generate(), TimelineId::generate());
        let crash = Arc::new(CrashAfter {
            prefix: remote_timeline::timeline_path(tenant_id, doomed),
            limit,
            armed: AtomicBool::new(false),
            count: AtomicUsize::new(0),
            tombstone_up: AtomicBool::new(false),
        });
        let a = Node::start(&storage.clone().with_hook(crash.hook()));
        let tenant = a.manager.create_tenant(tenant_id).await.unwrap();
        let mut lsns = Vec::new();
        for (id, fill) in [(keep, 0x11), (doomed, 0x22)] {
            let tl = a
                .manager
                .create_root_timeline(&tenant, id, PgMajorVersion::V15, START)
                .unwrap();
            write_and_flush(&tl, fill);
            lsns.push(write_and_flush(&tl, fill + 1));
            wait_uploaded(&tl).await;
        }
        assert!(objects(&storage, tenant_id, doomed).await.len() >= 3);

        crash.armed.store(true, Ordering::SeqCst);
        let result = a.manager.delete_timeline(&tenant, doomed).await;
        let tombstone_up = crash.tombstone_up.load(Ordering::SeqCst);
        if retry {
            crash.armed.store(false, Ordering::SeqCst);
            a.manager
                .delete_timeline(&tenant, doomed)
                .await
                .unwrap_or_else(|e| panic!("{what}: the retry failed: {e:#}"));
            assert!(objects(&storage, tenant_id, doomed).await.is_empty());
        }
        a.stop();

        // Another pageserver attaches the tenant as the crash left it.
        let c = Node::start(&storage);
        let attached = c
            .manager
            .attach_tenant(tenant_id, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: attach failed: {e:#}"));
        assert_eq!(attached.state(), TenantState::Active, "{what}");
        let kept = attached.get_timeline(keep).unwrap();
        check_pages(&kept, lsns[0], 0x12, &what);
        match attached.get_timeline(doomed) {
            Ok(tl) => {
                assert!(
                    !tombstone_up,
                    "{what}: the tombstone was up, yet it came back"
                );
                check_pages(&tl, lsns[1], 0x23, &what);
            }
            Err(TenantError::NotFound(_)) => {
                assert!(tombstone_up, "{what}: no tombstone, yet it is gone");
                // The attach finished the deletion.
                assert!(
                    objects(&storage, tenant_id, doomed).await.is_empty(),
                    "{what}: {:?}",
                    objects(&storage, tenant_id, doomed).await
                );
            }
            Err(e) => panic!("{what}: {e}"),
        }
        assert_eq!(
            result.is_ok(),
            limit >= DELETION_OPERATIONS,
            "{what}: {result:?}"
        );
        c.stop();
    }
}

/// Blocks the first layer upload of a timeline once armed, until released;
/// records every operation on the timeline's objects, and whether the
/// blocked layer was in the bucket when the tombstone went up.
struct BlockUpload {
    bucket: PathBuf,
    prefix: RemotePath,
    armed: AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
    blocked: Mutex<Option<RemotePath>>,
    layer_there_at_tombstone: Mutex<Option<bool>>,
    log: Mutex<Vec<Operation>>,
}

impl BlockUpload {
    fn hook(self: &Arc<Self>) -> Hook {
        let this = self.clone();
        Arc::new(move |op: Operation| -> HookFuture {
            let this = this.clone();
            Box::pin(async move {
                if !op.touches(&this.prefix) {
                    return Ok(());
                }
                this.log.lock().unwrap().push(op.clone());
                let Operation::Upload(path) = &op else {
                    return Ok(());
                };
                let name = path.object_name();
                if name == remote_timeline::TOMBSTONE_NAME {
                    let blocked = this.blocked.lock().unwrap().clone();
                    if let Some(blocked) = blocked {
                        let there = this.bucket.join(blocked.as_str()).exists();
                        *this.layer_there_at_tombstone.lock().unwrap() = Some(there);
                    }
                } else if !name.starts_with(INDEX_FILE_NAME)
                    && this.armed.swap(false, Ordering::SeqCst)
                {
                    *this.blocked.lock().unwrap() = Some(path.clone());
                    this.entered.notify_one();
                    let permit = this.release.acquire().await.expect("not closed");
                    permit.forget();
                }
                Ok(())
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_waits_for_the_upload_in_flight() {
    let bucket = tempfile::tempdir().unwrap();
    let storage = local(bucket.path());
    let tenant_id = TenantId::generate();
    let (doomed, witness) = (TimelineId::generate(), TimelineId::generate());
    let block = Arc::new(BlockUpload {
        bucket: bucket.path().to_owned(),
        prefix: remote_timeline::timeline_path(tenant_id, doomed),
        armed: AtomicBool::new(false),
        entered: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
        blocked: Mutex::new(None),
        layer_there_at_tombstone: Mutex::new(None),
        log: Mutex::new(Vec::new()),
    });
    let a = Node::start(&storage.clone().with_hook(block.hook()));
    let tenant: Arc<Tenant> = a.manager.create_tenant(tenant_id).await.unwrap();
    let mut timelines = Vec::new();
    for id in [doomed, witness] {
        let tl = a
            .manager
            .create_root_timeline(&tenant, id, PgMajorVersion::V15, START)
            .unwrap();
        write_and_flush(&tl, 1);
        wait_uploaded(&tl).await;
        timelines.push(tl);
    }

    // A new layer of the doomed timeline: its upload blocks in flight.
    block.armed.store(true, Ordering::SeqCst);
    write_and_flush(&timelines[0], 2);
    tokio::time::timeout(DEADLINE, block.entered.notified())
        .await
        .expect("the layer upload to start");

    // The deletion must not finish while that upload is in flight; give a
    // deletion that does not wait the time to run ahead, then release it.
    let mut deletion = {
        let (manager, tenant) = (a.manager.clone(), tenant.clone());
        tokio::spawn(async move { manager.delete_timeline(&tenant, doomed).await })
    };
    tokio::select! {
        done = &mut deletion => panic!("the deletion returned while an upload was in flight: {done:?}"),
        _ = tokio::time::sleep(Duration::from_millis(300)) => block.release.add_permits(1),
    }
    tokio::time::timeout(DEADLINE, deletion)
        .await
        .expect("the deletion to finish once the upload is released")
        .unwrap()
        .unwrap();
    let after_deletion = block.log.lock().unwrap().len();

    // The upload landed before the deletion began, and went with the rest.
    assert_eq!(
        *block.layer_there_at_tombstone.lock().unwrap(),
        Some(true),
        "the blocked layer {:?} had not landed when the tombstone went up",
        block.blocked.lock().unwrap()
    );
    assert!(objects(&storage, tenant_id, doomed).await.is_empty());
    assert!(matches!(
        tenant.get_timeline(doomed),
        Err(TenantError::NotFound(_))
    ));

    // Later (a whole upload round of another timeline): still nothing of
    // the doomed timeline, and no operation on it since.
    write_and_flush(&timelines[1], 3);
    wait_uploaded(&timelines[1]).await;
    assert!(objects(&storage, tenant_id, doomed).await.is_empty());
    let log = block.log.lock().unwrap().clone();
    assert_eq!(
        log.len(),
        after_deletion,
        "operations after the deletion: {:?}",
        &log[after_deletion..]
    );
    a.stop();
}
