"""Lazy computes: a start that does not depend on the database's size.

Through neon_local (one safekeeper), release binaries:

1. Start to first query (``endpoint start`` until ``SELECT 1`` answers on a
   new connection), median and p95 of ``STARTS``: a fresh database, and a
   branch holding ``pgbench -i -s 50`` (about 750 MB), on lazy endpoints;
   the same branch on a full-base-backup endpoint (``--lazy false``, fewer
   runs: it is slow). Where the time goes: compute_ctl's step durations of
   the last start of each kind.
2. Cold starts through the proxy (a suspended endpoint woken by the
   connection), median and p95 of ``STARTS``, both sizes.
3. The endpoint's local disk use right after a start, against the
   database's size.
4. A cold sequential scan of ``pgbench_accounts`` right after a start,
   MB/s, lazy and full (the kernel's page cache is dropped first when we
   may: the full endpoint's files were just written).
5. pgbench select-only and TPC-B (``-c 4 -j 2``) at scale 50, which is
   larger than ``shared_buffers``: right after a start (cold, the first
   ``COLD_SECONDS``) and then warm (``WARM_SECONDS``), lazy and full.

Figures go to the summary and to ``test_output/bench/lazy_start.json``.
Timings are never asserted; sanity is (row counts, no failed
transactions). ``LAZY_BENCH_QUICK=1`` makes it small (scale 5, 5 starts,
10-second pgbench runs) for trying it out.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.bench import Cluster, pgbench_tps, write_result
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.pg import PgBin
from fixtures.utils import wait_until

QUICK = os.environ.get("LAZY_BENCH_QUICK") == "1"
SCALE = 5 if QUICK else 50
STARTS = 5 if QUICK else 20
FULL_STARTS = 3
COLD_SECONDS = 10 if QUICK else 60
WARM_SECONDS = 10 if QUICK else 30
CLIENTS = ["-c", "4", "-j", "2"]


@pytest.fixture
def cluster(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin) -> Cluster:
    return Cluster.start(neon_env_builder, pg_bin, num_safekeepers=1, suspend_timeout="1s")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * len(ordered))) - 1)]


def summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "p95_s": round(p95(values), 3),
            "runs_s": [round(v, 3) for v in values]}


def disk_use(path: Path) -> int:
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-s", "-x", "--block-size=1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def endpoint_disk_use(c: Cluster, name: str) -> int:
    pgdata = c.pgdata(name)
    return disk_use(pgdata) + disk_use(pgdata.with_name("pgdata.store"))


def last_start_steps(c: Cluster, name: str) -> dict[str, int]:
    """compute_ctl's step durations (ms) of the endpoint's last start
    (lines ``start: <step> step_ms=N total_ms=M``)."""
    log = (c.nl.repo_dir / "endpoints" / name / "compute_ctl.log").read_text(errors="replace")
    steps: dict[str, int] = {}
    for m in re.finditer(r"start: (.+?) step_ms=(\d+)", log):
        if m[1].startswith("synced the safekeepers"):
            steps = {}
        steps[m[1]] = int(m[2])
    return steps


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def cold_scan(c: Cluster, port: int) -> dict:
    size = int(c.psql(port, "SELECT pg_relation_size('pgbench_accounts')"))
    t0 = time.monotonic()
    assert c.psql(port, "SELECT count(*) FROM pgbench_accounts") == str(SCALE * 100_000)
    seconds = time.monotonic() - t0
    return {"bytes": size, "seconds": round(seconds, 3), "mb_per_s": round(size / seconds / 1e6, 1)}


def pgbench_cold_warm(c: Cluster, name: str, extra: list[str]) -> dict:
    """A fresh start, pgbench for COLD_SECONDS, then WARM_SECONDS more."""
    c.run("endpoint", "start", name)
    port = c.port(name)
    runs = {}
    for phase, seconds in [("cold", COLD_SECONDS), ("warm", WARM_SECONDS)]:
        out = c.pgbench(port, "-n", *CLIENTS, "-T", str(seconds), *extra)
        assert re.search(r"number of failed transactions: 0 ", out), out
        runs[phase] = round(pgbench_tps(out), 1)
    c.run("endpoint", "stop", name)
    return runs


def proxy_cold_starts(c: Cluster, branch: str) -> list[float]:
    """Seconds to a first answer through the proxy, waking the branch's
    suspended endpoint, STARTS times."""
    conninfo = c.proxy_conninfo(f"branch={branch}")
    session = c.nl.session()
    control_plane = c.nl.http["control_plane"]

    def psql() -> str:
        result = subprocess.run([c.pg_bin.path("psql"), "-X", "-qAt", "-d", conninfo, "-c", "SELECT 1"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def state() -> str:
        for line in c.run("endpoint", "list").splitlines()[1:]:
            fields = line.split()
            if fields[0] == branch:
                return fields[5]
        return "absent"

    def starts() -> int:
        doc = session.get(f"http://{control_plane}/v1/status", timeout=5).json()
        return doc["endpoints"].get(branch, {}).get("starts", 0)

    assert psql() == "1"
    times = []
    for _ in range(STARTS):
        wait_until(f"{branch} to be suspended", lambda: state() == "suspended", 60, 0.1)
        before = starts()
        t0 = time.monotonic()
        assert psql() == "1"
        times.append(time.monotonic() - t0)
        assert starts() == before + 1
    return times


def test_lazy_start_bench(cluster: Cluster, report_figure):
    started = time.monotonic()
    c = cluster
    result: dict = {"scale": SCALE}

    # 1. Starts of a fresh database.
    c.run("endpoint", "create", "fresh")
    fresh = []
    for _ in range(STARTS):
        fresh.append(c.timed_start("fresh"))
        c.run("endpoint", "stop", "fresh")
    result["start_fresh"] = summary(fresh)
    result["start_fresh_steps_ms"] = last_start_steps(c, "fresh")

    # ... and of a branch holding pgbench's tables.
    c.run("timeline", "branch", "--branch-name", "big")
    c.run("endpoint", "create", "big", "--branch-name", "big")
    c.run("endpoint", "start", "big")
    port = c.port("big")
    c.pgbench(port, "-i", "-q", "-s", str(SCALE))
    database_size = int(c.psql(port, "SELECT pg_database_size('postgres')"))
    result["database_bytes"] = database_size
    c.run("endpoint", "stop", "big")
    loaded = []
    for _ in range(STARTS):
        loaded.append(c.timed_start("big"))
        if len(loaded) < STARTS:
            c.run("endpoint", "stop", "big")
    result["start_big_lazy"] = summary(loaded)
    result["start_big_lazy_steps_ms"] = last_start_steps(c, "big")
    result["disk_after_start_lazy_bytes"] = endpoint_disk_use(c, "big")
    result["start_size_ratio"] = round(result["start_big_lazy"]["median_s"] / result["start_fresh"]["median_s"], 2)

    # 4. Cold sequential scan, lazy.
    c.run("endpoint", "stop", "big")
    c.run("endpoint", "start", "big")
    result["page_cache_dropped"] = drop_page_cache()
    result["scan_lazy"] = cold_scan(c, c.port("big"))
    c.run("endpoint", "stop", "big")

    # The same branch from full base backups.
    c.run("endpoint", "create", "bigfull", "--branch-name", "big", "--lazy", "false")
    full = []
    for _ in range(FULL_STARTS):
        full.append(c.timed_start("bigfull"))
        if len(full) < FULL_STARTS:
            c.run("endpoint", "stop", "bigfull")
    result["start_big_full"] = summary(full)
    result["start_big_full_steps_ms"] = last_start_steps(c, "bigfull")
    result["disk_after_start_full_bytes"] = endpoint_disk_use(c, "bigfull")
    drop_page_cache()
    result["scan_full"] = cold_scan(c, c.port("bigfull"))
    c.run("endpoint", "stop", "bigfull")
    result["scan_ratio"] = round(result["scan_lazy"]["mb_per_s"] / result["scan_full"]["mb_per_s"], 3)

    # 5. pgbench, cold and warm, lazy and full.
    for kind, extra in [("select", ["-S"]), ("tpcb", [])]:
        lazy = pgbench_cold_warm(c, "big", extra)
        fullrun = pgbench_cold_warm(c, "bigfull", extra)
        result[f"{kind}_lazy_tps"], result[f"{kind}_full_tps"] = lazy, fullrun
        for phase in ("cold", "warm"):
            result[f"{kind}_{phase}_ratio"] = round(lazy[phase] / fullrun[phase], 3)

    # 2. Cold starts through the proxy: a fresh branch and one of the big one.
    c.run("timeline", "create", "--branch-name", "coldfresh")
    c.run("timeline", "branch", "--branch-name", "coldbig", "--ancestor-branch-name", "big")
    result["proxy_cold_fresh"] = summary(proxy_cold_starts(c, "coldfresh"))
    result["proxy_cold_big"] = summary(proxy_cold_starts(c, "coldbig"))
    result["wall_seconds"] = round(time.monotonic() - started, 1)

    write_result("lazy_start", result)
    mib = 1024 * 1024
    report_figure(f"lazy start: start to first query, median (p95) of {STARTS}: fresh database "
                  f"{result['start_fresh']['median_s']:.2f} s ({result['start_fresh']['p95_s']:.2f}), pgbench "
                  f"scale {SCALE} branch ({database_size / mib:.0f} MiB) {result['start_big_lazy']['median_s']:.2f} s "
                  f"({result['start_big_lazy']['p95_s']:.2f}), ratio {result['start_size_ratio']:.2f}; full base "
                  f"backup {result['start_big_full']['median_s']:.2f} s")
    report_figure(f"lazy start: through the proxy, cold, median (p95): fresh "
                  f"{result['proxy_cold_fresh']['median_s']:.2f} s ({result['proxy_cold_fresh']['p95_s']:.2f}), "
                  f"scale {SCALE} {result['proxy_cold_big']['median_s']:.2f} s "
                  f"({result['proxy_cold_big']['p95_s']:.2f})")
    report_figure(f"lazy start: disk right after start: lazy {result['disk_after_start_lazy_bytes'] / mib:.0f} MiB, "
                  f"full {result['disk_after_start_full_bytes'] / mib:.0f} MiB, database {database_size / mib:.0f} MiB")
    report_figure(f"lazy start: cold scan of pgbench_accounts: lazy {result['scan_lazy']['mb_per_s']:.0f} MB/s, "
                  f"full {result['scan_full']['mb_per_s']:.0f} MB/s ({result['scan_ratio']:.2f}x)")
    for kind in ("select", "tpcb"):
        report_figure(f"lazy start: pgbench {kind} {' '.join(CLIENTS)}: lazy {result[f'{kind}_lazy_tps']}, full "
                      f"{result[f'{kind}_full_tps']} tps; cold {result[f'{kind}_cold_ratio']:.2f}x, warm "
                      f"{result[f'{kind}_warm_ratio']:.2f}x")
    report_figure(f"lazy start: steps of the last big lazy start (ms): {json.dumps(result['start_big_lazy_steps_ms'])}")
    report_figure(f"lazy start: {json.dumps({k: v for k, v in result.items() if not k.endswith('steps_ms')})}")
