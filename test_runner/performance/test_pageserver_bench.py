"""Pageserver figures, with a stock PostgreSQL 15 compute whose WAL goes
through three safekeepers:

1. WAL ingest: the pageserver is stopped while ``pgbench -i`` at a large
   scale writes its WAL to the safekeepers; then it starts again and the
   time to ingest everything after its disk-consistent LSN is measured.
2. GetPage@LSN on loopback: ``pagebench`` asks for random blocks of
   ``pgbench_accounts`` at the last record LSN, one request at a time per
   connection, with 1 and with 4 connections; p50/p99 and pages per second.
3. Base backup time against data size, next to ``pg_basebackup`` (tar to
   stdout, no WAL) from the compute itself, which holds the same data.
4. Branch creation time with about 10 MB and about 1 GB of data (median of
   20 each): O(1), so equal within noise.

Before the GetPage, base backup and large-branch figures, a checkpoint
(flush, and image layers for every partition with deltas) is forced
through the API and timed, so that background compaction does not compete
for the two cores during the measurements.
5. Physical bytes stored per logical byte.

Figures go to the summary and to ``test_output/bench/pageserver.json``;
timings are never asserted, sanity is (row counts, every byte ingested).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time

import pytest

from fixtures import auth
from fixtures.compute import Compute
from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder, output_root
from fixtures.utils import wait_until

SMALL_SCALE = 1       # about 15 MB
LARGE_SCALE = int(os.environ.get("PAGESERVER_BENCH_SCALE", "68"))  # about 1 GB
BRANCHES = 20
PAGEBENCH_SECONDS = 10
CONFIG = """
[background]
interval_seconds = 1.0
"""


@pytest.fixture
def bench_env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    neon_env_builder.pageserver_config = CONFIG
    return neon_env_builder.init_start()


def branch_times(env: NeonEnv, tenant: str, timeline: str) -> list[float]:
    ps = env.pageserver
    times = []
    for _ in range(BRANCHES):
        t0 = time.perf_counter()
        r = ps.http("POST", f"/v1/tenant/{tenant}/timeline", json={"ancestor_timeline_id": timeline})
        times.append(time.perf_counter() - t0)
        assert r.status_code == 201, r.text
    return times


def basebackup_seconds(env: NeonEnv, tenant: str, timeline: str, lsn: int) -> tuple[float, int]:
    ps = env.pageserver
    query = f"basebackup {tenant} {timeline} {lsn_str(lsn)}"
    t0 = time.perf_counter()
    out = subprocess.run([env.pg_bin.path("psql"), "-X", "-w", "-h", "127.0.0.1", "-p", str(ps.pg_port), "-U",
                          "cloud_admin", "-d", "postgres", "-c", query], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PGPASSWORD": auth.token("tenant", tenant)})
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    return elapsed, len(out.stdout)


def pg_basebackup_seconds(compute: Compute) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run([compute.pg.pg_bin.path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(compute.pg.port),
                          "-U", "cloud_admin", "-D", "-", "-Ft", "-X", "none", "--no-sync", "-c", "fast"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    return elapsed, len(out.stdout)


def pagebench(env: NeonEnv, tenant: str, timeline: str, lsn: int, rel: str, connections: int) -> dict:
    out = subprocess.run([str(env.binpath / "pagebench"), "--pageserver", f"127.0.0.1:{env.pageserver.pg_port}",
                          "--tenant-id", tenant, "--timeline-id", timeline, "--lsn", lsn_str(lsn), "--rel", rel,
                          "--seconds", str(PAGEBENCH_SECONDS), "--connections", str(connections)],
                         capture_output=True, text=True, env=auth.with_token(None, auth.token("tenant", tenant)))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def test_pageserver_bench(bench_env: NeonEnv, report_figure):
    started = time.monotonic()
    env = bench_env
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    service = env.wal_service(tenant, timeline)
    # The large load is written while the pageserver is down: commits must
    # not wait for it (backpressure off).
    service.walproposer_options.append("--max-pageserver-lag-bytes=0")
    compute = env.new_compute(service, "main")
    compute.init_from_pageserver(ps)
    compute.start()
    pg = compute.pg
    result: dict = {"small_scale": SMALL_SCALE, "large_scale": LARGE_SCALE}

    # Small data set: branch creation and base backup.
    pg.pgbench("-i", "-s", str(SMALL_SCALE), "-q")
    lsn = compute.insert_lsn()
    ps.wait_for_lsn(tenant, timeline, lsn, timeout=300)
    small_logical = ps.timeline(tenant, timeline)["logical_size"]
    os.sync()
    small_branch = branch_times(env, tenant, timeline)
    small_bb = [basebackup_seconds(env, tenant, timeline, lsn) for _ in range(3)]
    small_pgbb = [pg_basebackup_seconds(compute) for _ in range(3)]

    # Large data set, written while the pageserver is down; then ingest.
    assert ps.stop() == 0
    t0 = time.perf_counter()
    pg.pgbench("-i", "-s", str(LARGE_SCALE), "-q")
    load_seconds = time.perf_counter() - t0
    end = compute.insert_lsn()
    ps.start()
    begin = lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"])
    t0 = time.perf_counter()
    wait_until("the pageserver to ingest the WAL", lambda: lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"]) >= end,
               3600, 0.05)
    ingest_seconds = time.perf_counter() - t0
    ingest_mb = (end - begin) / 1e6
    # Flush and write image layers now (the background loop would do it
    # over the next minutes), so the reads below do not share the cores
    # with compaction.
    t0 = time.perf_counter()
    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
    assert r.ok, r.text
    checkpoint_seconds = time.perf_counter() - t0
    info = ps.timeline(tenant, timeline)
    large_logical = info["logical_size"]
    # Reads at the last record, as a compute reads: the images the
    # checkpoint wrote serve them (a read at an older LSN goes below them).
    read_lsn = lsn_int(info["last_record_lsn"])
    os.sync()
    large_branch = branch_times(env, tenant, timeline)

    # GetPage@LSN on pgbench_accounts at the last LSN.
    rel = pg.sql("SELECT CASE reltablespace WHEN 0 THEN 1663 ELSE reltablespace END || '/' || "
                 "(SELECT oid FROM pg_database WHERE datname = current_database()) || '/' || "
                 "pg_relation_filenode('pgbench_accounts') FROM pg_class WHERE relname = 'pgbench_accounts'")
    getpage = {c: pagebench(env, tenant, timeline, read_lsn, rel, c) for c in (1, 4)}

    large_bb = basebackup_seconds(env, tenant, timeline, read_lsn)
    large_pgbb = pg_basebackup_seconds(compute)
    assert pg.sql("SELECT count(*) FROM pgbench_accounts") == str(LARGE_SCALE * 100000)

    # Physical bytes per logical byte, after the checkpoint above.
    assert lsn_int(info["disk_consistent_lsn"]) >= end
    physical = info["physical_size"]

    result.update({
        "ingest_wal_mb": round(ingest_mb, 1),
        "ingest_seconds": round(ingest_seconds, 2),
        "ingest_mb_per_s": round(ingest_mb / ingest_seconds, 1),
        "load_into_safekeepers_seconds": round(load_seconds, 2),
        "checkpoint_seconds": round(checkpoint_seconds, 2),
        "getpage": getpage,
        "small_logical_mb": round(small_logical / 1e6, 1),
        "large_logical_mb": round(large_logical / 1e6, 1),
        "branch_ms_small_median": round(median_ms(small_branch), 2),
        "branch_ms_large_median": round(median_ms(large_branch), 2),
        "branch_ms_small_runs": [round(t * 1000, 2) for t in small_branch],
        "branch_ms_large_runs": [round(t * 1000, 2) for t in large_branch],
        "basebackup_small_seconds": round(statistics.median(t for t, _ in small_bb), 3),
        "basebackup_small_mb": round(small_bb[0][1] / 1e6, 1),
        "pg_basebackup_small_seconds": round(statistics.median(t for t, _ in small_pgbb), 3),
        "basebackup_large_seconds": round(large_bb[0], 2),
        "basebackup_large_mb": round(large_bb[1] / 1e6, 1),
        "pg_basebackup_large_seconds": round(large_pgbb[0], 2),
        "pg_basebackup_large_mb": round(large_pgbb[1] / 1e6, 1),
        "physical_mb": round(physical / 1e6, 1),
        "physical_per_logical": round(physical / large_logical, 2),
        "wall_seconds": round(time.monotonic() - started, 1),
    })
    out = output_root() / "bench"
    out.mkdir(exist_ok=True)
    (out / "pageserver.json").write_text(json.dumps(result, indent=2))

    g1, g4 = getpage[1], getpage[4]
    report_figure(f"pageserver: WAL ingest {ingest_mb:.0f} MB in {ingest_seconds:.1f} s = {ingest_mb / ingest_seconds:.0f} MB/s "
                  f"(pgbench -i -s {LARGE_SCALE} with wal_consistency_checking; PostgreSQL wrote it to the "
                  f"safekeepers in {load_seconds:.1f} s)")
    report_figure(f"pageserver: GetPage@LSN, 1 connection: p50 {g1['p50_us']:.0f} us, p99 {g1['p99_us']:.0f} us, "
                  f"{g1['pages_per_second']:.0f} pages/s; 4 connections: p50 {g4['p50_us']:.0f} us, "
                  f"p99 {g4['p99_us']:.0f} us, {g4['pages_per_second']:.0f} pages/s")
    report_figure(f"pageserver: base backup {result['basebackup_small_mb']} MB in {result['basebackup_small_seconds']} s "
                  f"(pg_basebackup {result['pg_basebackup_small_seconds']} s), {result['basebackup_large_mb']} MB in "
                  f"{result['basebackup_large_seconds']} s (pg_basebackup {result['pg_basebackup_large_mb']} MB in "
                  f"{result['pg_basebackup_large_seconds']} s)")
    report_figure(f"pageserver: branch creation median {result['branch_ms_small_median']} ms at "
                  f"{result['small_logical_mb']} MB, {result['branch_ms_large_median']} ms at {result['large_logical_mb']} MB")
    report_figure(f"pageserver: {result['physical_mb']} MB stored for {result['large_logical_mb']} MB logical "
                  f"= {result['physical_per_logical']} physical bytes per logical byte")
