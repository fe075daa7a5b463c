"""The proxy and scale to zero, through neon_local's daemons.

1. Cold start: connect through the proxy to a SUSPENDED endpoint (the
   control plane suspended it for idleness; suspend timeout 1 s) on a fresh
   database, to the first query result (``psql -c 'SELECT 1'``, wall
   time), 20 wakes: median and p95. Each wake is checked to have started
   the compute once.
2. Warm per-connection overhead: ``pgbench -n -C -c 1 -t 200`` with the
   script ``SELECT 1``, i.e. 200 times connect + ``SELECT 1`` + disconnect,
   through the proxy against directly to the compute's postgres.
3. pgbench TPC-B (scale 10) through the proxy against directly,
   ``-c 4 -j 2 -T 10``, and the same with ``-C`` (a new connection per
   transaction).

Every comparison runs in ABBA order (proxy, direct, direct, proxy), each
figure the mean of its two runs. pgbench reaches the proxy with
``PGOPTIONS=endpoint=bench``; both ways it logs in as the role ``ROLE``
(made with `neon_local role create`: the proxy refuses cloud_admin) with
its password, so both pay for SCRAM. Figures go to the summary and to
``test_output/bench/proxy.json``. Timings are never asserted.
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

from fixtures.neon_fixtures import NeonEnvBuilder, output_root
from fixtures.neon_local import NeonLocal
from fixtures.pg import PgBin
from fixtures.utils import wait_until

WAKES = 20
WARM_CONNECTIONS = 200
SCALE = 10
TPS_SECONDS = 10
TPS_CLIENTS = ["-c", "4", "-j", "2"]
ABBA = ["proxy", "direct", "direct", "proxy"]
ROLE, ROLE_PASSWORD = "bench", "bench-secret-1"


class Cluster:
    """A started neon_local repository with a default tenant and its role
    ``ROLE``, and its proxy."""

    def __init__(self, nl: NeonLocal, pg_bin: PgBin):
        self.nl, self.pg_bin, self.proxy_port, self.cp = nl, pg_bin, nl.proxy_port, nl.http["control_plane"]
        self.session = nl.session()

    def run(self, *args: str) -> str:
        return self.nl.run(*args, timeout=300).stdout

    def endpoint(self, name: str) -> list[str]:
        for line in self.run("endpoint", "list").splitlines()[1:]:
            fields = line.split()
            if fields[0] == name:
                return fields[1:]
        raise KeyError(name)

    def starts(self, name: str) -> int:
        doc = self.session.get(f"http://{self.cp}/v1/status", timeout=5).json()
        return doc["endpoints"].get(name, {}).get("starts", 0)

    def psql(self, conninfo: str, sql: str) -> str:
        result = subprocess.run([self.pg_bin.path("psql"), "-X", "-qAt", "-d", conninfo, "-c", sql],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def pgbench(self, target: str, port: int, *args: str, user: str = ROLE) -> str:
        env = dict(os.environ)
        if target == "proxy":
            env["PGOPTIONS"] = "endpoint=bench"
            port = self.proxy_port
        else:
            env.pop("PGOPTIONS", None)
        env["PGPASSWORD"] = ROLE_PASSWORD
        result = subprocess.run(
            [self.pg_bin.path("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", user, *args,
             "postgres"], capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        if "-i" not in args:
            assert re.search(r"number of failed transactions: 0 ", result.stdout), result.stdout
        return result.stdout


@pytest.fixture
def cluster(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin) -> Cluster:
    neon_env_builder.num_safekeepers = 1
    nl = neon_env_builder.neon_local()
    nl.run("start", "--suspend-timeout", "1s")
    nl.run("tenant", "create", "--set-default")
    nl.create_role(ROLE, ROLE_PASSWORD)
    return Cluster(nl, pg_bin)


def tps(out: str) -> float:
    m = re.search(r"tps = ([\d.]+) \(", out)
    assert m, out
    return float(m[1])


def test_proxy_bench(cluster: Cluster, test_output_dir: Path, report_figure):
    started = time.monotonic()
    c = cluster
    # 1. Cold starts through the proxy, on a fresh database.
    c.run("timeline", "create", "--branch-name", "cold")
    cold_conn = f"host=127.0.0.1 port={c.proxy_port} dbname=postgres user={ROLE} password={ROLE_PASSWORD} " \
                f"sslmode=disable options=branch=cold"
    assert c.psql(cold_conn, "SELECT 1") == "1"
    cold = []
    for _ in range(WAKES):
        wait_until("cold to be suspended", lambda: c.endpoint("cold")[4] == "suspended", 60, 0.1)
        starts = c.starts("cold")
        t0 = time.monotonic()
        assert c.psql(cold_conn, "SELECT 1") == "1"
        cold.append(time.monotonic() - t0)
        assert c.starts("cold") == starts + 1
    cold.sort()

    # 2, 3. A steady endpoint (no suspend timeout) with pgbench data.
    c.run("endpoint", "create", "bench")
    c.run("endpoint", "start", "bench")
    port = int(c.endpoint("bench")[0].split(":")[1])
    c.pgbench("direct", port, "-i", "-q", "-s", str(SCALE), user="cloud_admin")
    c.psql(f"host=127.0.0.1 port={port} dbname=postgres user=cloud_admin",
           f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE}")
    script = test_output_dir / "select1.sql"
    script.write_text("SELECT 1;\n")
    runs: dict[str, list[tuple[str, float]]] = {"warm": [], "tpcb": [], "tpcb_connect": []}
    for target in ABBA:
        runs["warm"].append((target, tps(c.pgbench(target, port, "-n", "-C", "-c", "1", "-t",
                                                   str(WARM_CONNECTIONS), "-f", str(script)))))
    for kind, extra in [("tpcb", []), ("tpcb_connect", ["-C"])]:
        for target in ABBA:
            out = c.pgbench(target, port, "-n", *TPS_CLIENTS, "-T", str(TPS_SECONDS), *extra)
            runs[kind].append((target, tps(out)))
    assert c.starts("bench") == 0  # started by hand; the proxy found it running

    def mean(kind: str, target: str) -> float:
        return statistics.mean(v for t, v in runs[kind] if t == target)

    warm_proxy_ms = 1000 / mean("warm", "proxy")
    warm_direct_ms = 1000 / mean("warm", "direct")
    result = {
        "cold_start_median_s": round(statistics.median(cold), 3),
        "cold_start_p95_s": round(cold[min(len(cold) - 1, int(round(0.95 * len(cold))) - 1)], 3),
        "cold_start_runs_s": [round(x, 3) for x in cold],
        "warm_connect_select1_proxy_ms": round(warm_proxy_ms, 3),
        "warm_connect_select1_direct_ms": round(warm_direct_ms, 3),
        "warm_ratio": round(warm_proxy_ms / warm_direct_ms, 3),
        "tpcb_proxy_tps": round(mean("tpcb", "proxy"), 1),
        "tpcb_direct_tps": round(mean("tpcb", "direct"), 1),
        "tpcb_ratio": round(mean("tpcb", "proxy") / mean("tpcb", "direct"), 3),
        "tpcb_connect_proxy_tps": round(mean("tpcb_connect", "proxy"), 1),
        "tpcb_connect_direct_tps": round(mean("tpcb_connect", "direct"), 1),
        "tpcb_connect_ratio": round(mean("tpcb_connect", "proxy") / mean("tpcb_connect", "direct"), 3),
        "runs": {k: [{"target": t, "tps": round(v, 1)} for t, v in r] for k, r in runs.items()},
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out = output_root() / "bench"
    out.mkdir(exist_ok=True)
    (out / "proxy.json").write_text(json.dumps(result, indent=2))
    report_figure(f"proxy: cold start through the proxy (suspended endpoint, fresh database) to the first "
                  f"result, {WAKES} wakes: median {result['cold_start_median_s']:.2f} s, "
                  f"p95 {result['cold_start_p95_s']:.2f} s")
    report_figure(f"proxy: connect + SELECT 1 + disconnect: {warm_proxy_ms:.2f} ms through the proxy, "
                  f"{warm_direct_ms:.2f} ms direct ({result['warm_ratio']:.2f}x)")
    report_figure(f"proxy: pgbench {' '.join(TPS_CLIENTS)} -T {TPS_SECONDS}: {result['tpcb_proxy_tps']:.0f} tps "
                  f"through the proxy, {result['tpcb_direct_tps']:.0f} direct ({result['tpcb_ratio']:.2f}x); "
                  f"with -C {result['tpcb_connect_proxy_tps']:.0f} vs {result['tpcb_connect_direct_tps']:.0f} "
                  f"({result['tpcb_connect_ratio']:.2f}x)")
    report_figure(f"proxy: {json.dumps({k: v for k, v in result.items() if k != 'runs'})}")
