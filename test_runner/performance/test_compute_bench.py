"""Computes through neon_local: how long an endpoint takes to start, and
pgbench on an endpoint against a vanilla PostgreSQL on the same machine.

1. Endpoint start time: from running ``neon_local endpoint start`` to the
   first successful query (``SELECT 1`` over a new connection), median of
   5, for a fresh database (the initdb of ``main``) and for a branch holding
   a ``pgbench -i -s 10`` dataset (the endpoint stopped and started again).
2. pgbench TPS, TPC-B (``-c 4 -j 2 -T 15``) and select-only (``-S``), on an
   endpoint and on a vanilla PostgreSQL 15 with otherwise equal settings:
   the compute's ``shared_buffers``, ``fsync``, ``synchronous_commit``,
   ``wal_level``, ``wal_compression``, ``full_page_writes``,
   ``max_wal_size``, ``checkpoint_timeout`` and ``max_connections`` are
   read from it and set on the vanilla server. The vanilla server has no
   walproposer (no ``synchronous_standby_names``) and no
   ``wal_consistency_checking``: both are what the architecture costs.
   Runs go in ABBA order (endpoint, vanilla, vanilla, endpoint), each
   figure the mean of its two runs.

Figures go to the summary and to ``test_output/bench/compute.json``.
Timings are never asserted; sanity is (no failed transactions).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from fixtures.bench import Cluster, pgbench_tps, start_vanilla_like, write_result
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.pg import PgBin
from fixtures.port_distributor import PortDistributor

SCALE = 10
STARTS = 5
TPS_SECONDS = 15
TPS_CLIENTS = ["-c", "4", "-j", "2"]
ABBA = ["endpoint", "vanilla", "vanilla", "endpoint"]


@pytest.fixture
def cluster(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin) -> Cluster:
    return Cluster.start(neon_env_builder, pg_bin, num_safekeepers=1)


def test_compute_bench(cluster: Cluster, pg_bin: PgBin, port_distributor: PortDistributor,
                       test_output_dir: Path, report_figure):
    started = time.monotonic()
    c = cluster
    # 1. Start times: a fresh database.
    c.run("endpoint", "create", "fresh")
    fresh = []
    for _ in range(STARTS):
        fresh.append(c.timed_start("fresh"))
        c.run("endpoint", "stop", "fresh")

    # ... and a branch with pgbench data.
    c.run("timeline", "branch", "--branch-name", "pgb")
    c.run("endpoint", "create", "pgb", "--branch-name", "pgb")
    c.run("endpoint", "start", "pgb")
    port = c.port("pgb")
    c.pgbench(port, "-i", "-q", "-s", str(SCALE))
    settings = c.settings(port)
    c.run("endpoint", "stop", "pgb")
    loaded = []
    for _ in range(STARTS):
        loaded.append(c.timed_start("pgb"))
        if len(loaded) < STARTS:
            c.run("endpoint", "stop", "pgb")
    assert c.psql(port, "SELECT count(*) FROM pgbench_accounts") == str(SCALE * 100_000)

    # 2. pgbench: the endpoint against vanilla with the same settings.
    vanilla = start_vanilla_like(pg_bin, test_output_dir / "vanilla", port_distributor.get(), settings)
    try:
        vanilla.pgbench("-i", "-q", "-s", str(SCALE))
        ports = {"endpoint": port, "vanilla": vanilla.port}
        runs: dict[str, list[tuple[str, float]]] = {"tpcb": [], "select": []}
        for kind, extra in [("tpcb", []), ("select", ["-S"])]:
            for target in ABBA:
                out = c.pgbench(ports[target], "-n", *TPS_CLIENTS, "-T", str(TPS_SECONDS), *extra)
                runs[kind].append((target, pgbench_tps(out)))
    finally:
        vanilla.stop()

    def mean(kind: str, target: str) -> float:
        return statistics.mean(v for t, v in runs[kind] if t == target)

    result = {
        "start_fresh_median_s": round(statistics.median(fresh), 3),
        "start_fresh_runs_s": [round(x, 3) for x in fresh],
        "start_pgbench_s10_median_s": round(statistics.median(loaded), 3),
        "start_pgbench_s10_runs_s": [round(x, 3) for x in loaded],
        "settings": settings,
        "tpcb_endpoint_tps": round(mean("tpcb", "endpoint"), 1),
        "tpcb_vanilla_tps": round(mean("tpcb", "vanilla"), 1),
        "tpcb_ratio": round(mean("tpcb", "endpoint") / mean("tpcb", "vanilla"), 3),
        "select_endpoint_tps": round(mean("select", "endpoint"), 1),
        "select_vanilla_tps": round(mean("select", "vanilla"), 1),
        "select_ratio": round(mean("select", "endpoint") / mean("select", "vanilla"), 3),
        "runs": {k: [{"target": t, "tps": round(v, 1)} for t, v in r] for k, r in runs.items()},
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    write_result("compute", result)
    report_figure(f"compute: endpoint start to first query, median of {STARTS}: fresh database "
                  f"{result['start_fresh_median_s']:.2f} s, pgbench scale {SCALE} branch "
                  f"{result['start_pgbench_s10_median_s']:.2f} s")
    report_figure(f"compute: pgbench TPC-B {' '.join(TPS_CLIENTS)} -T {TPS_SECONDS}: endpoint "
                  f"{result['tpcb_endpoint_tps']:.0f} tps, vanilla {result['tpcb_vanilla_tps']:.0f} tps "
                  f"({result['tpcb_ratio']:.2f}x)")
    report_figure(f"compute: pgbench -S {' '.join(TPS_CLIENTS)} -T {TPS_SECONDS}: endpoint "
                  f"{result['select_endpoint_tps']:.0f} tps, vanilla {result['select_vanilla_tps']:.0f} tps "
                  f"({result['select_ratio']:.2f}x)")
    report_figure(f"compute: {json.dumps({k: v for k, v in result.items() if k not in ('runs', 'settings')})}")
