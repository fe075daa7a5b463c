"""WAL service cost: a stock PostgreSQL 15 compute with and without its
commits waiting for the safekeepers.

Every comparison runs against the SAME PostgreSQL server, whose walproposer
keeps streaming all along; only ``synchronous_standby_names`` is switched
(``ALTER SYSTEM SET synchronous_standby_names = ''`` + ``pg_reload_conf()``
for "without", ``ALTER SYSTEM RESET`` back to ``'walproposer'`` for "with").
So "with" is a commit acknowledged once a quorum of safekeepers has fsynced
its WAL; "without" is a commit acknowledged locally (the compute runs with
``fsync = off``, as the fixture configures it) while the WAL still streams.

1. Single-client commit latency, ``pgbench -N -c 1``, three safekeepers.
2. ``pgbench -N -c 4 -j 2`` throughput, three safekeepers.
3. WAL throughput of ONE safekeeper (a second compute on a one-safekeeper
   timeline): a bulk ``INSERT ... SELECT generate_series`` in one
   transaction; bytes are the safekeeper's commit LSN advance over the load.
   This is end to end: PostgreSQL generating the WAL is part of the time.
   The same load without synchronous replication shows whether the
   safekeeper is the bottleneck (if it is not, the times are equal).

Runs alternate in ABBA order (with, without, without, with, ...) and each
figure is the mean of its two runs. Figures go to the summary and to
``test_output/bench/wal_service.json``. Timings are never asserted; sanity
is (no failed transactions, the WAL reached the safekeepers).
"""

from __future__ import annotations

import json
import re
import statistics
import time
import pytest

from fixtures.lsn import SEGMENT_SIZE, lsn_int
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder, output_root
from fixtures.pg import VanillaPostgres
from fixtures.utils import wait_until
from fixtures.wal_service import WalService

SCALE = 10
LATENCY_SECONDS = 8
TPS_SECONDS = 8
TPS_CLIENTS = ["-c", "4", "-j", "2"]
BULK_ROWS = 1_000_000
BULK_PAYLOAD = 200  # bytes of text per row
PAGE_SIZE = 8192

ABBA = [True, False, False, True]  # with, without, without, with


def set_sync(pg: VanillaPostgres, on: bool) -> None:
    """Switch commits waiting for the walproposer on or off, and wait until
    new sessions and the walsender see it."""
    if on:
        pg.sql("ALTER SYSTEM RESET synchronous_standby_names")
    else:
        pg.sql("ALTER SYSTEM SET synchronous_standby_names = ''")
    pg.sql("SELECT pg_reload_conf()")
    names, state = ("walproposer", "sync") if on else ("", "async")
    wait_until(
        f"synchronous replication {'on' if on else 'off'}",
        lambda: pg.sql("SHOW synchronous_standby_names") == names and pg.sql(
            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication "
            "WHERE application_name = 'walproposer' AND state = 'streaming'") == state,
        30,
    )


def wal_end(pg: VanillaPostgres) -> int:
    """Where PostgreSQL's WAL ends, as a record end: the insert position is
    reported past a page header when the last record filled its page."""
    lsn = lsn_int(pg.sql("SELECT pg_current_wal_insert_lsn()"))
    if lsn % SEGMENT_SIZE == 40:
        return lsn - 40
    if lsn % PAGE_SIZE == 24:
        return lsn - 24
    return lsn


def wait_committed(service: WalService, lsn: int, timeout: float = 60, interval: float = 0.05) -> list[dict]:
    """Wait until every safekeeper has flushed and knows committed WAL up to ``lsn``."""
    def done():
        statuses = service.statuses()
        if len(statuses) == len(service.safekeepers) and all(
                lsn_int(s["flush_lsn"]) >= lsn and lsn_int(s["commit_lsn"]) >= lsn for s in statuses):
            return statuses
        return None

    return wait_until(f"safekeepers to reach {lsn:X}", done, timeout, interval)


def pgbench(pg: VanillaPostgres, *args: str) -> str:
    out = pg.pgbench(*args).stdout
    assert "number of failed transactions: 0 " in out, out
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed and int(processed[1]) > 0, out
    return out


def figure(pattern: str, out: str) -> float:
    m = re.search(pattern, out)
    assert m, out
    return float(m[1])


def mean_by_mode(runs: list[tuple[bool, float]], on: bool) -> float:
    return statistics.mean(v for mode, v in runs if mode == on)


@pytest.fixture
def env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """Four safekeepers alone: three for the first compute, and one,
    stopped until the test starts it, for the second."""
    neon_env_builder.pageserver = False
    neon_env_builder.num_safekeepers = 4
    env = neon_env_builder.init_start()
    env.safekeepers[3].kill()
    return env


def test_wal_service_bench(env: NeonEnv, report_figure):
    started = time.monotonic()
    wal_service = env.wal_service(safekeepers=env.safekeepers[:3])
    compute = env.new_compute(wal_service)
    pg = compute.pg
    compute.init()
    compute.start()
    pg.sql("CREATE TABLE marker (i int)")
    pg.pgbench("-i", "-s", str(SCALE), "-q")
    set_sync(pg, True)
    pgbench(pg, "-N", *TPS_CLIENTS, "-T", "3")  # warm-up

    # 1. Single-client commit latency.
    latency: list[tuple[bool, float]] = []
    for on in ABBA:
        set_sync(pg, on)
        out = pgbench(pg, "-N", "-c", "1", "-T", str(LATENCY_SECONDS))
        latency.append((on, figure(r"latency average = ([\d.]+) ms", out)))

    # 2. Throughput with several clients (the alternation continues: B A A B).
    tps: list[tuple[bool, float]] = []
    for on in [not m for m in ABBA]:
        set_sync(pg, on)
        out = pgbench(pg, "-N", *TPS_CLIENTS, "-T", str(TPS_SECONDS))
        tps.append((on, figure(r"tps = ([\d.]+) \(without initial connection time\)", out)))

    # Sanity: all of it is on all three safekeepers.
    set_sync(pg, True)
    pg.sql("INSERT INTO marker VALUES (1)")
    end = wal_end(pg)
    statuses = wait_committed(wal_service, end)
    assert all(lsn_int(s["commit_lsn"]) - compute.start_lsn > 100_000_000 for s in statuses), statuses
    compute.kill()  # leave the cores to the next part
    for sk in wal_service.safekeepers:
        sk.kill()

    # 3. One safekeeper's WAL throughput, end to end.
    sk = env.safekeepers[3]
    sk.start()
    single = env.new_compute(env.wal_service(safekeepers=[sk]), "one_safekeeper")
    single.init()
    single.start()
    pg1 = single.pg
    tenant, timeline = single.service.tenant_id, single.service.timeline_id
    pg1.sql("CREATE TABLE bulk (id bigint, payload text)")
    bulk: list[dict] = []
    for on in ABBA:
        pg1.sql("TRUNCATE bulk")
        pg1.sql("CHECKPOINT")
        set_sync(pg1, on)
        wait_committed(single.service, wal_end(pg1))
        before = lsn_int(sk.timeline_status(tenant, timeline)["commit_lsn"])
        t0 = time.perf_counter()
        pg1.sql(f"INSERT INTO bulk SELECT g, repeat('x', {BULK_PAYLOAD}) FROM generate_series(1, {BULK_ROWS}) g")
        elapsed = time.perf_counter() - t0
        end = wal_end(pg1)
        wait_committed(single.service, end, interval=0.01)
        caught_up = time.perf_counter() - t0 - elapsed
        after = lsn_int(sk.timeline_status(tenant, timeline)["commit_lsn"])
        assert after - before > BULK_ROWS * BULK_PAYLOAD, (before, after)
        bulk.append({"sync": on, "seconds": elapsed, "bytes": after - before, "catch_up_s": caught_up})
    assert pg1.sql("SELECT count(*) FROM bulk") == str(BULK_ROWS)
    single.kill()

    def bulk_mean(on: bool, key: str) -> float:
        return statistics.mean(r[key] for r in bulk if r["sync"] == on)

    lat_on, lat_off = mean_by_mode(latency, True), mean_by_mode(latency, False)
    tps_on, tps_off = mean_by_mode(tps, True), mean_by_mode(tps, False)
    wal_mb = bulk_mean(True, "bytes") / 1e6
    secs_on, secs_off = bulk_mean(True, "seconds"), bulk_mean(False, "seconds")
    result = {
        "method": "same server with and without synchronous replication; ABBA order, mean of 2 runs each",
        "pgbench_scale": SCALE,
        "single_client_seconds_per_run": LATENCY_SECONDS,
        "single_client_latency_ms_3_safekeepers": round(lat_on, 3),
        "single_client_latency_ms_no_sync": round(lat_off, 3),
        "single_client_latency_ratio": round(lat_on / lat_off, 2),
        "single_client_latency_ms_runs": [[("with" if m else "without"), v] for m, v in latency],
        "tps_clients": " ".join(TPS_CLIENTS),
        "tps_seconds_per_run": TPS_SECONDS,
        "tps_3_safekeepers": round(tps_on, 1),
        "tps_no_sync": round(tps_off, 1),
        "tps_ratio": round(tps_on / tps_off, 2),
        "tps_runs": [[("with" if m else "without"), v] for m, v in tps],
        "one_safekeeper_note": "end to end: PostgreSQL generating the WAL is part of the time",
        "one_safekeeper_load": f"INSERT {BULK_ROWS} rows of {BULK_PAYLOAD} bytes in one transaction",
        "one_safekeeper_wal_mb": round(wal_mb, 1),
        "one_safekeeper_seconds": round(secs_on, 3),
        "one_safekeeper_mb_per_s": round(wal_mb / secs_on, 1),
        "one_safekeeper_no_sync_seconds": round(secs_off, 3),
        "one_safekeeper_no_sync_mb_per_s": round(bulk_mean(False, "bytes") / 1e6 / secs_off, 1),
        "one_safekeeper_no_sync_catch_up_s": round(bulk_mean(False, "catch_up_s"), 3),
        "one_safekeeper_runs": [
            {"mode": "with" if r["sync"] else "without", "seconds": round(r["seconds"], 3),
             "mb": round(r["bytes"] / 1e6, 1), "catch_up_s": round(r["catch_up_s"], 3)} for r in bulk],
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out = output_root() / "bench"
    out.mkdir(exist_ok=True)
    (out / "wal_service.json").write_text(json.dumps(result, indent=2))
    report_figure(f"wal service: 1-client commit latency (pgbench -N -c 1) {lat_on:.3f} ms through 3 safekeepers, "
                  f"{lat_off:.3f} ms without synchronous replication ({lat_on / lat_off:.2f}x)")
    report_figure(f"wal service: pgbench -N {' '.join(TPS_CLIENTS)}: {tps_on:.0f} tps through 3 safekeepers, "
                  f"{tps_off:.0f} tps without ({tps_on / tps_off:.2f}x)")
    report_figure(f"wal service: one safekeeper, end to end (PostgreSQL generating the WAL included): "
                  f"{wal_mb:.0f} MB in {secs_on:.2f} s = {wal_mb / secs_on:.0f} MB/s; same load without "
                  f"synchronous replication {secs_off:.2f} s ({result['one_safekeeper_no_sync_mb_per_s']:.0f} MB/s), "
                  f"safekeeper caught up {result['one_safekeeper_no_sync_catch_up_s']:.2f} s after it")
    report_figure(f"wal service: {json.dumps({k: v for k, v in result.items() if not k.endswith('runs')})}")
