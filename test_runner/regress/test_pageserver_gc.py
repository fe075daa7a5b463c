"""GC keeps the pageserver's physical size bounded under a steady update
workload: flushes, partitioned compaction and GC run in the background
while a stock PostgreSQL compute updates the same rows over and over, and
the space the timeline takes levels off instead of growing with the WAL.
Data inside the PITR window stays readable; branching below it is refused."""

from __future__ import annotations

import pytest

from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder

PITR_BYTES = 4 * 1024 * 1024
CONFIG = f"""
open_layer_max_bytes = {1024 * 1024}
image_partition_keys = 256

[background]
interval_seconds = 0.2
compaction_threshold = 3
pitr_bytes = {PITR_BYTES}
"""
ROUNDS = 40


@pytest.fixture
def gc_env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """The default cluster, its pageserver flushing, compacting and
    collecting garbage often."""
    neon_env_builder.pageserver_config = CONFIG
    return neon_env_builder.init_start()


def test_steady_updates_keep_physical_size_bounded(gc_env: NeonEnv, report_figure):
    env = gc_env
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    env.wal_service(tenant, timeline)
    compute = env.compute("main", tenant, timeline)
    pg = compute.pg
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL, pad text NOT NULL)")
    pg.sql("INSERT INTO t SELECT g, 0, repeat('x', 200) FROM generate_series(1, 4000) g")
    start = compute.insert_lsn()

    sizes = []
    for i in range(ROUNDS):
        # Every row, each round: with Rust redo the WAL carries no page
        # images, so only a larger workload makes WAL outgrow the data.
        pg.sql("UPDATE t SET n = n + 1")
        pg.sql("VACUUM t")
        lsn = compute.insert_lsn()
        ps.wait_for_lsn(tenant, timeline, lsn, timeout=120)
        info = ps.timeline(tenant, timeline)
        sizes.append(info["physical_size"])
    wal = compute.insert_lsn() - start
    info = ps.timeline(tenant, timeline)
    early, late = max(sizes[8:20]), max(sizes[28:])
    report_figure(f"GC under steady updates: {wal / 1e6:.0f} MB of WAL, physical size "
                  f"{early / 1e6:.1f} MB (rounds 8-20) then {late / 1e6:.1f} MB (rounds 28-40), "
                  f"logical size {info['logical_size'] / 1e6:.1f} MB")
    # Without GC the layers keep every delta and every image layer that
    # compaction writes: the size would double from the first window to the
    # second.
    assert late * 2 <= early * 3, f"physical size grows with the WAL: {sizes}"
    assert late < wal / 2, f"{late} bytes stored for {wal} bytes of WAL"
    horizon = lsn_int(info["gc_cutoff_lsn"])
    assert horizon > start, "GC advanced its horizon"

    # Reads inside the window are right: a compute from a fresh base
    # backup sees every update, and a branch just above the horizon works.
    expected = str(ROUNDS * 4000)
    assert pg.sql("SELECT sum(n) FROM t") == expected
    compute.stop()
    synced = env.sync_safekeepers(tenant, timeline)
    again = env.compute("again", tenant, timeline, lsn=synced)
    assert again.pg.sql("SELECT sum(n) FROM t") == expected
    again.stop()

    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline",
                json={"ancestor_timeline_id": timeline, "ancestor_start_lsn": lsn_str(start)})
    assert r.status_code == 400, r.text
    assert "GC horizon" in r.json()["error"], r.text
