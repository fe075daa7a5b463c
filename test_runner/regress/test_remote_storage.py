"""Pageserver layers in a real S3-protocol server: uploads with an index per
timeline, attach after the local directory is lost, detach, generations on
attach, an object store that is down for a while, a broken index, and
remote deletion of the layers GC removed.

Object names carry the generation of the pageserver that wrote them
(docs/remote-storage.md): ``index_part.json-<8 hex digits>`` and
``<layer name>-<8 hex digits>``."""

from __future__ import annotations

import json
import shutil

import pytest

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder
from fixtures.remote_storage import S3Server
from fixtures.utils import wait_until

PREFIX = "pageserver"

QUERY = """
SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),
       (SELECT count(*) FROM pgbench_history), (SELECT count(*) FROM t)
"""


@pytest.fixture
def s3_env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """The default cluster, its pageserver keeping its layers in S3."""
    neon_env_builder.enable_remote_storage(pageserver_prefix=PREFIX)
    neon_env_builder.pageserver_config = "[background]\ninterval_seconds = 0.5\n"
    return neon_env_builder.init_start()


def timeline_keys(s3: S3Server, tenant: str, timeline: str) -> list[str]:
    return s3.keys(f"{PREFIX}/tenants/{tenant}/timelines/{timeline}/")


def index_key(s3: S3Server, tenant: str, timeline: str) -> str:
    """The key of the timeline's current index: the highest generation's."""
    def generation(key: str) -> int:
        suffix = key.rsplit("/", 1)[1].removeprefix("index_part.json")
        return int(suffix[1:], 16) if suffix else 0
    keys = [k for k in timeline_keys(s3, tenant, timeline) if k.rsplit("/", 1)[1].startswith("index_part.json")]
    assert keys, f"no index for {tenant}/{timeline}"
    return max(keys, key=generation)


def index(s3: S3Server, tenant: str, timeline: str) -> dict:
    return json.loads(s3.get(index_key(s3, tenant, timeline)))


def layer_object(name: str, layer: dict) -> str:
    """The object name of a layer an index names."""
    return f"{name}-{layer['generation']:08x}" if layer["generation"] else name


def wait_uploaded(env: NeonEnv, tenant: str, timeline: str, timeout: float = 120) -> int:
    """Checkpoint, then wait until remote storage holds everything flushed."""
    ps = env.pageserver
    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
    assert r.ok, r.text

    def done():
        info = ps.timeline(tenant, timeline)
        rc, dc = lsn_int(info["remote_consistent_lsn"]), lsn_int(info["disk_consistent_lsn"])
        return rc if rc >= dc and rc > 0 else None

    return wait_until("uploads to catch up", done, timeout)


def restart_wiped(env: NeonEnv) -> None:
    ps = env.pageserver
    ps.kill()
    shutil.rmtree(ps.workdir)
    ps.start()


def test_attach_after_losing_the_local_directory(s3_env: NeonEnv):
    env, s3 = s3_env, s3_env.s3
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    env.wal_service(tenant, timeline)
    main = env.compute("main", tenant, timeline)
    main.pg.pgbench("-i", "-s", "2", "-q")
    main.pg.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    out = main.pg.pgbench("-c", "2", "-T", "4", "-N").stdout
    assert "number of failed transactions: 0 " in out, out
    before = main.pg.sql(QUERY)
    lsn = main.insert_lsn()
    ps.wait_for_lsn(tenant, timeline, lsn)
    # A branch with a change of its own.
    branch = ps.create_timeline(tenant, ancestor_timeline_id=timeline)["timeline_id"]
    env.wal_service(tenant, branch)
    b = env.compute("branch", tenant, branch)
    b.pg.sql("INSERT INTO t VALUES (-1)")
    ps.wait_for_lsn(tenant, branch, b.insert_lsn())
    branch_before = b.pg.sql(QUERY)
    b.stop()
    uploaded = wait_uploaded(env, tenant, timeline)
    wait_uploaded(env, tenant, branch)

    # Every layer the index names is in the bucket, with its size.
    idx = index(s3, tenant, timeline)
    keys = timeline_keys(s3, tenant, timeline)
    assert idx["version"] == 2 and index_key(s3, tenant, timeline).endswith("/index_part.json-00000001")
    assert s3.keys(f"{PREFIX}/tenants/{tenant}/generations/") == [f"{PREFIX}/tenants/{tenant}/generations/00000001"]
    for name, layer in idx["layers"].items():
        key = f"{PREFIX}/tenants/{tenant}/timelines/{timeline}/{layer_object(name, layer)}"
        assert key in keys
        assert s3.client.head_object(Bucket=s3.bucket, Key=key)["ContentLength"] == layer["file_size"]
    assert lsn_int(idx["disk_consistent_lsn"]) == uploaded

    # More WAL after the last upload, then the local directory is lost.
    main.pg.sql("INSERT INTO t SELECT g FROM generate_series(1001, 1500) g")
    before = main.pg.sql(QUERY)
    main.stop()
    restart_wiped(env)
    assert ps.http("GET", f"/v1/tenant/{tenant}").status_code == 404
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach")
    assert r.status_code == 201, r.text
    assert r.json()["generation"] == 2, r.text
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach")
    assert r.status_code == 409, r.text
    info = ps.timeline(tenant, timeline)
    assert lsn_int(info["remote_consistent_lsn"]) >= uploaded
    assert lsn_int(info["disk_consistent_lsn"]) >= uploaded

    # The rest of the WAL comes from the safekeepers; the data is all there.
    synced = env.sync_safekeepers(tenant, timeline)
    again = env.compute("again", tenant, timeline, lsn=synced)
    assert again.pg.sql(QUERY) == before
    again.stop()
    synced = env.sync_safekeepers(tenant, branch)
    b2 = env.compute("branch2", tenant, branch, lsn=synced)
    assert b2.pg.sql(QUERY) == branch_before
    b2.stop()

    # Detach removes the local copy; attach brings it back.
    wait_uploaded(env, tenant, timeline)
    r = ps.http("POST", f"/v1/tenant/{tenant}/detach")
    assert r.status_code == 200, r.text
    assert not (ps.workdir / "tenants" / tenant).exists()
    assert ps.http("GET", f"/v1/tenant/{tenant}").status_code == 404
    # A generation not above the highest in the bucket is refused; the
    # control plane's higher one is taken.
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach", json={"generation": 2})
    assert r.status_code == 409, r.text
    assert "not above the highest" in r.json()["error"], r.text
    assert not (ps.workdir / "tenants" / tenant).exists()
    # ... and so is one that would use up the generations in one step.
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach", json={"generation": 4294967295})
    assert r.status_code == 400, r.text
    assert "more than 1048576 above the highest" in r.json()["error"], r.text
    assert not (ps.workdir / "tenants" / tenant).exists()
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach", json={"generation": 7})
    assert r.status_code == 201, r.text
    assert r.json()["generation"] == 7, r.text
    assert (ps.workdir / "tenants" / tenant / "generation").read_text().strip() == "00000007"
    synced = env.sync_safekeepers(tenant, timeline)
    third = env.compute("third", tenant, timeline, lsn=synced)
    assert third.pg.sql(QUERY) == before


def test_object_store_down_for_a_while(s3_env: NeonEnv):
    env, s3 = s3_env, s3_env.s3
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    env.wal_service(tenant, timeline)
    compute = env.compute("main", tenant, timeline)
    compute.pg.sql("CREATE TABLE t (id int)")
    first = wait_uploaded(env, tenant, timeline)

    s3.relay.cut()
    compute.pg.sql("INSERT INTO t SELECT g FROM generate_series(1, 20000) g")
    ps.wait_for_lsn(tenant, timeline, compute.insert_lsn())
    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
    assert r.ok, r.text
    info = ps.timeline(tenant, timeline)
    flushed = lsn_int(info["disk_consistent_lsn"])
    assert flushed > first
    # Uploads fail and are retried; nothing is lost meanwhile.
    wait_until("a failed upload", lambda: ps.metric("pageserver_remote_operation_failures_total") > 0, 60)
    assert lsn_int(ps.timeline(tenant, timeline)["remote_consistent_lsn"]) < flushed
    assert compute.pg.sql("SELECT count(*) FROM t") == "20000"

    s3.relay.restore()
    wait_until("uploads to resume", lambda: lsn_int(ps.timeline(tenant, timeline)["remote_consistent_lsn"]) >= flushed, 120)
    compute.stop()
    restart_wiped(env)
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach")
    assert r.status_code == 201, r.text
    synced = env.sync_safekeepers(tenant, timeline)
    again = env.compute("again", tenant, timeline, lsn=synced)
    assert again.pg.sql("SELECT count(*) FROM t") == "20000"


def test_broken_or_missing_index(s3_env: NeonEnv):
    env, s3 = s3_env, s3_env.s3
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    wait_uploaded(env, tenant, timeline)
    local = ps.workdir / "tenants" / tenant
    files_before = sorted(p.name for p in (local / "timelines" / timeline).iterdir())

    # A malformed index found at start: the tenant is broken, nothing local
    # is deleted and the index is not overwritten.
    key = index_key(s3, tenant, timeline)
    s3.put(key, b'{"version": 1, "metadata": "zz"')
    assert ps.stop() == 0
    ps.start()
    wait_until("the tenant to be marked broken",
               lambda: ps.http("GET", f"/v1/tenant/{tenant}").json()["state"].startswith("broken"), 60)
    state = ps.http("GET", f"/v1/tenant/{tenant}").json()["state"]
    assert "index_part.json" in state, state
    assert sorted(p.name for p in (local / "timelines" / timeline).iterdir()) == files_before
    assert s3.get(key) == b'{"version": 1, "metadata": "zz"'

    # Attaching a tenant whose timeline has layers but no index: a clear
    # error, the tenant is broken, and no local directory appears.
    other = "0" * 31 + "1"
    other_timeline = "0" * 31 + "2"
    s3.put(f"{PREFIX}/tenants/{other}/timelines/{other_timeline}/somelayer", b"x")
    r = ps.http("POST", f"/v1/tenant/{other}/attach")
    assert r.status_code == 422, r.text
    assert "no index_part.json" in r.json()["error"], r.text
    assert ps.http("GET", f"/v1/tenant/{other}").json()["state"].startswith("broken")
    assert not (ps.workdir / "tenants" / other).exists()
    # A tenant remote storage does not know.
    r = ps.http("POST", f"/v1/tenant/{'0' * 31 + '3'}/attach")
    assert r.status_code == 404, r.text


def test_gc_deletes_remote_layers(neon_env_builder: NeonEnvBuilder):
    neon_env_builder.enable_remote_storage(pageserver_prefix=PREFIX)
    neon_env_builder.pageserver_config = """
open_layer_max_bytes = 1048576
image_partition_keys = 256
[background]
interval_seconds = 0.2
compaction_threshold = 2
pitr_bytes = 2097152
"""
    env = neon_env_builder.init_start()
    ps, s3 = env.pageserver, env.s3
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    env.wal_service(tenant, timeline)
    compute = env.compute("main", tenant, timeline)
    pg = compute.pg
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL, pad text)")
    pg.sql("INSERT INTO t SELECT g, 0, repeat('x', 200) FROM generate_series(1, 3000) g")

    def update_rounds(rounds: int) -> None:
        for i in range(rounds):
            pg.sql(f"UPDATE t SET n = n + 1 WHERE id % 3 = {i % 3}")
        ps.wait_for_lsn(tenant, timeline, compute.insert_lsn())

    def bucket_layers() -> set[str]:
        """The layer objects in the bucket (every object but the index)."""
        return {k.rsplit("/", 1)[1] for k in timeline_keys(s3, tenant, timeline)} - \
            {index_key(s3, tenant, timeline).rsplit("/", 1)[1]}

    def gc_cutoff() -> int:
        return lsn_int(ps.timeline(tenant, timeline)["gc_cutoff_lsn"])

    # Images at the end of a first part (the checkpoint of wait_uploaded),
    # then about 5 MB more of WAL against the 2 MiB PITR window: the GC
    # horizon passes those images, and the layers below them go.
    update_rounds(12)
    wait_uploaded(env, tenant, timeline)
    first_end = lsn_int(ps.timeline(tenant, timeline)["disk_consistent_lsn"])
    update_rounds(24)
    wait_until("GC to pass the first part", lambda: gc_cutoff() > first_end, 60)
    wait_uploaded(env, tenant, timeline)

    def only_indexed():
        idx = index(s3, tenant, timeline)
        names = bucket_layers()
        indexed = {layer_object(name, layer) for name, layer in idx["layers"].items()}
        # Raised (and shown on timeout) while they differ.
        assert names == indexed and names, \
            f"not indexed: {sorted(names - indexed)}; indexed, not in the bucket: {sorted(indexed - names)}"
        return True

    # The uploader deletes what GC removed once an index without it is up.
    wait_until("GC to delete layers from the bucket",
               lambda: ps.metric("pageserver_remote_layers_deleted_total") > 0, 60)
    wait_until("the bucket to hold exactly the indexed layers", only_indexed, 60)
    assert ps.metric("pageserver_remote_index_uploads_total") > 2
    # Local and remote agree: the index names only layers the pageserver
    # has (background GC may still be removing some, which the next upload
    # round follows).
    def index_within_local():
        local = {p.name for p in (ps.workdir / "tenants" / tenant / "timelines" / timeline).iterdir()
                 if p.name != "metadata"}
        idx = index(s3, tenant, timeline)
        assert set(idx["layers"]) <= local, f"indexed, not local: {sorted(set(idx['layers']) - local)}"
        return True

    wait_until("the index to name only local layers", index_within_local, 60)
