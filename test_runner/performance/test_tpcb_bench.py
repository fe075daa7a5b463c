"""How close an endpoint is to vanilla PostgreSQL now that the pageserver
redoes heap, heap2, B-tree and sequence records in Rust (computes attach
page images only for the resource managers without Rust redo:
``wal_consistency_checking = 'hash,gin,gist,spgist,brin,generic'``).

1. WAL bytes per pgbench TPC-B transaction, endpoint / vanilla: each run
   is a ``CHECKPOINT``, then ``pgbench -n -c 1 -t N``; the bytes are the
   ``pg_current_wal_lsn()`` advance over the run divided by the
   transactions. Scale 1 with 10,000 transactions (a hot set: most pages
   are changed many times after their first full-page image) and scale 10
   with 2,000 (mostly first changes). The k-th run on each side uses
   ``--random-seed=k`` and autovacuum is off for the pgbench tables: the
   same transactions on the same data, so the ratio shows what the
   architecture adds. (Without them runs differed by up to 25%: the draw
   of accounts, and autovacuum's WAL, which fell more often into the
   endpoint's runs since they last several times as long.)
   ``pg_waldump --stats=record`` over each run's range, on vanilla's
   ``pg_wal`` and on the endpoint's (its compute keeps its own
   ``pg_wal``), says where the bytes go; the full dump counts the
   full-page images (``FPW``, and ``FPW for WAL verification``: the
   images only ``wal_consistency_checking`` adds).
2. pgbench TPC-B TPS (``-c 4 -j 2 -T 15``, scale 10), endpoint / vanilla
   with ``fsync = on`` (both durable: the endpoint through the
   safekeepers' fsync, vanilla through its own; ``synchronous_commit = on``
   on both) and endpoint / vanilla with ``fsync = off`` (for reference).
   Each run is profiled: CPU seconds of the compute's postgres (postmaster
   and every backend, exited ones included), compute_ctl (which runs the
   walproposer), each safekeeper, the pageserver, the other neon_local
   daemons, vanilla's postgres and pgbench, from ``/proc/<pid>/stat``
   before and after; their total against 2 cores, and the machine's whole
   load for comparison (it may be shared).
3. GetPage@LSN latency (``pagebench``, one connection) when the page needs
   a chain of about 1, 10 and 100 deltas on top of an image, next to a
   read of the image itself (chain 0). A table with one row per heap page
   (``fillfactor = 10`` and about 700-byte rows at load; then
   ``fillfactor = 100`` so that pruning runs only when a page is nearly
   full, about every 10th update); a postgres ``CHECKPOINT`` and the
   pageserver's (image layers); round 0 updates every row, and as the first
   change after the checkpoint each update carries the page's full image
   (full_page_writes); each later round (``UPDATE`` of every row, one
   transaction) adds one delta per page, plus a prune record now and then.
   The chains are counted in the compute's WAL (``pg_waldump
   --relation``). Nothing writes images of those pages meanwhile: the
   pageserver's background loop does not run during the test (interval
   an hour; compaction and GC out of reach anyway: ``compaction_threshold``
   and ``pitr_bytes``), ``max_delta_chain`` (ingest's own bound on
   chains) is 1000 (its ``pageserver_delta_chains_ended_total`` must
   stay 0), no checkpoint is
   requested during the rounds and the compute's ``checkpoint_timeout``
   is an hour. So the rounds go to disk only by ingest's own flushes
   (open layer full) until, after one more record, a checkpoint flushes
   the rest and writes images at an LSN above every LSN read. Reads then
   go to layer files, at the four LSNs in ABBA order (0, 1, 10, 100, 100,
   10, 1, 0). How many delta layers a chain crosses matters as much as
   its length, so their number is reported: with the background loop
   flushing every second instead, the rounds made about 50 layers and the
   100-round reads took about 4 times as long as with 9 (debug build).

1 and 2 share one neon_local cluster (three safekeepers) with one endpoint
and one vanilla PostgreSQL 15 with the endpoint's settings copied
(``fixtures.bench.SAME_SETTINGS``; vanilla has no walproposer and no
``wal_consistency_checking``). Endpoint and vanilla runs go in ABBA order;
each figure is the mean of its two runs. 3 runs on its own cluster
(directly started daemons: neon_local has no way to set pageserver
settings), and first, so that the other cluster is not running meanwhile.

``TPCB_BENCH_QUICK=1`` shrinks every scale and duration for a debug run.
Figures go to the summary and to ``test_output/bench/tpcb.json``
(``tpcb_wal``, ``tpcb_tps`` and ``getpage_chain`` keys, as each test
finishes). Timings are never asserted; sanity is (no failed transactions,
one row per page, no chain cut short).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from fixtures import auth
from fixtures.bench import (Cluster, CpuProfile, backend_count, pgbench_tps, pgbench_transactions,
                            postmaster_pid, set_vanilla, start_vanilla_like, write_result)
from fixtures.compute import Compute
from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder, fresh_output_dir
from fixtures.pg import PgBin, VanillaPostgres
from fixtures.port_distributor import PortDistributor

QUICK = os.environ.get("TPCB_BENCH_QUICK", "") not in ("", "0")

# 1. (scale, transactions) of the WAL volume runs.
WAL_CASES = [(1, 1_000), (2, 200)] if QUICK else [(1, 10_000), (10, 2_000)]
# 2. TPS.
TPS_SCALE = 2 if QUICK else 10
TPS_SECONDS = 4 if QUICK else 15
TPS_CLIENTS = ["-c", "4", "-j", "2"]
CORES = 2
# 3. Delta chains.
CHAIN_PAGES = 300 if QUICK else 3000
CHAIN_ROUNDS = [1, 10, 100]
CHAIN_ROW_BYTES = 700  # alone on its page at fillfactor 10 (above 8016 - 7372 bytes)
PAGEBENCH_SECONDS = 2.0 if QUICK else 5.0
MAX_DELTA_CHAIN = 1000

ABBA = ["endpoint", "vanilla", "vanilla", "endpoint"]
# Endpoint, vanilla fsync=on, vanilla fsync=off, and back.
TPS_ORDER = ["endpoint", "vanilla_fsync_on", "vanilla_fsync_off", "vanilla_fsync_off", "vanilla_fsync_on",
             "endpoint"]

RESULT: dict = {}


def record_result(key: str, value: dict) -> None:
    RESULT[key] = value
    write_result("tpcb", RESULT)


# ---- pg_waldump ----------------------------------------------------------

STATS_LINE = re.compile(r"^(\S+)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(\s*[\d.]+\)\s+"
                        r"(\d+)\s+\(\s*[\d.]+\)\s*$")


def waldump_stats(pg_bin: PgBin, wal_dir: Path, start: int, end: int, *extra: str) -> dict:
    """``pg_waldump --stats=record`` over [start, end): records, record
    bytes, image bytes and total by record type, largest first; and the
    full-page images counted in the full dump."""
    base = [pg_bin.path("pg_waldump"), "-p", str(wal_dir), "-s", lsn_str(start), "-e", lsn_str(end), *extra]
    out = subprocess.run([*base, "--stats=record"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    types = {}
    for line in out.stdout.splitlines():
        m = STATS_LINE.match(line)
        if m:
            types[m[1]] = {"n": int(m[2]), "rec_bytes": int(m[3]), "fpi_bytes": int(m[4]), "bytes": int(m[5])}
    types = dict(sorted(types.items(), key=lambda kv: -kv[1]["bytes"]))
    fpw = fpw_verification = 0
    with subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as dump:
        for line in dump.stdout:
            n = line.count(" FPW")
            if n:
                v = line.count(" FPW for WAL verification")
                fpw += n - v
                fpw_verification += v
        err = dump.stderr.read()
    assert dump.returncode == 0, err
    return {
        "records": sum(t["n"] for t in types.values()),
        "bytes": sum(t["bytes"] for t in types.values()),
        "fpi_bytes": sum(t["fpi_bytes"] for t in types.values()),
        "fpw": fpw,
        "fpw_for_verification": fpw_verification,
        "types": types,
    }


# ---- 3. GetPage over delta chains ----------------------------------------

def pageserver_config() -> str:
    config = f"max_delta_chain = {MAX_DELTA_CHAIN}\n"
    # The background loop does not run during the test (no flush,
    # compaction nor GC: the rounds stay in the open layer, below
    # checkpoint_distance, until the test flushes them), and would write no
    # image layer nor remove history if it did.
    config += """
[background]
interval_seconds = 3600.0
compaction_threshold = 1000000
pitr_bytes = 1099511627776
"""
    return config


LAYER_NAME = re.compile(r"__([0-9A-F]{16})-([0-9A-F]{16})$")


def delta_layers(timeline_dir: Path, start: int, end: int) -> int:
    """Delta layer files whose LSN range overlaps (start, end]."""
    count = 0
    for path in timeline_dir.iterdir():
        m = LAYER_NAME.search(path.name)
        if m and int(m[1], 16) <= end and int(m[2], 16) > start:
            count += 1
    return count


def psql_lines(compute: Compute, *commands: str) -> list[str]:
    """Run ``commands`` in one psql session, each its own transaction;
    the output's lines."""
    args = ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", compute.pg.connstr()]
    for command in commands:
        args += ["-c", command]
    return compute.pg.pg_bin.run(args, as_pg_user=False, timeout=600).stdout.split()


def pagebench(env: NeonEnv, tenant: str, timeline: str, lsn: int, rel: str) -> dict:
    out = subprocess.run([str(env.binpath / "pagebench"), "--pageserver", f"127.0.0.1:{env.pageserver.pg_port}",
                          "--tenant-id", tenant, "--timeline-id", timeline, "--lsn", lsn_str(lsn), "--rel", rel,
                          "--seconds", str(PAGEBENCH_SECONDS), "--connections", "1"],
                         capture_output=True, text=True, timeout=PAGEBENCH_SECONDS + 120,
                         env=auth.with_token(None, auth.token("tenant", tenant)))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def chain_env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    neon_env_builder.pageserver_config = pageserver_config()
    return neon_env_builder.init_start()


def test_getpage_delta_chain(chain_env: NeonEnv, report_figure):
    started = time.monotonic()
    env = chain_env
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    compute = env.new_compute(env.wal_service(tenant, timeline), "chain")
    compute.init_from_pageserver(ps)
    # No postgres checkpoint during the rounds: its next change of each
    # page would carry a full image again.
    compute.pg.configure(["checkpoint_timeout = '1h'", "max_wal_size = '10GB'"])
    compute.start()
    pg = compute.pg

    pg.sql("CREATE TABLE chain (id int, n int, pad text) WITH (fillfactor = 10, autovacuum_enabled = off)")
    pg.sql("ALTER TABLE chain ALTER COLUMN pad SET STORAGE PLAIN")
    pg.sql(f"INSERT INTO chain SELECT g, 0, repeat('x', {CHAIN_ROW_BYTES}) FROM generate_series(1, {CHAIN_PAGES}) g")
    assert pg.sql("SELECT count(DISTINCT (ctid::text::point)[0]) FROM chain") == str(CHAIN_PAGES)
    assert pg.sql("SELECT pg_relation_size('chain') / 8192") == str(CHAIN_PAGES)
    # Updates may fill the page; prune only when it is nearly full.
    pg.sql("ALTER TABLE chain SET (fillfactor = 100)")
    rel = pg.sql("SELECT 1663 || '/' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' || "
                 "pg_relation_filenode('chain')")
    pg.sql("CHECKPOINT")
    checkpoint_lsn = compute.flush_lsn()
    ps.wait_for_lsn(tenant, timeline, checkpoint_lsn, timeout=300)
    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
    assert r.ok, r.text
    redo_before = pg.sql("SELECT redo_lsn FROM pg_control_checkpoint()")

    # Round 0 (the full images), then rounds 1..100; the flush LSN after each.
    rounds = max(CHAIN_ROUNDS)
    t0 = time.monotonic()
    lsns = [lsn_int(x) for x in psql_lines(
        compute, *(["UPDATE chain SET n = n + 1", "SELECT pg_current_wal_flush_lsn()"] * (rounds + 1)))]
    rounds_seconds = time.monotonic() - t0
    assert len(lsns) == rounds + 1, lsns
    assert pg.sql("SELECT min(n) || ' ' || max(n) FROM chain") == f"{rounds + 1} {rounds + 1}"
    assert pg.sql("SELECT redo_lsn FROM pg_control_checkpoint()") == redo_before, \
        "postgres checkpointed during the rounds: chains were cut by new full images"
    assert pg.sql("SELECT count(DISTINCT (ctid::text::point)[0]) FROM chain") == str(CHAIN_PAGES), \
        "an update left its page"
    targets = {0: lsns[0], **{k: lsns[k] for k in CHAIN_ROUNDS}}

    # The chains, from the compute's WAL: images in round 0 and records of
    # the table's pages after it.
    wal_dir = pg.datadir / "pg_wal"
    filters = [f"--relation={rel}", "--fork=main"]
    round0 = waldump_stats(env.pg_bin, wal_dir, checkpoint_lsn, lsns[0], *filters)
    assert round0["fpw"] >= CHAIN_PAGES, round0
    chains = {}
    for k in CHAIN_ROUNDS:
        stats = waldump_stats(env.pg_bin, wal_dir, lsns[0], lsns[k], *filters)
        assert stats["fpw"] + stats["fpw_for_verification"] == 0, stats
        chains[k] = {"records_per_page": round(stats["records"] / CHAIN_PAGES, 2),
                     "types": {t: v["n"] for t, v in stats["types"].items()}}

    # Everything on disk, so that the reads go to layer files and do not
    # share the cores with ingest or a flush: one more record after the
    # rounds, then a checkpoint (flush, and images at its LSN, above every
    # LSN read below).
    pg.sql("CREATE TABLE chain_end ()")
    end = compute.flush_lsn()
    ps.wait_for_lsn(tenant, timeline, end, timeout=300)
    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
    assert r.ok, r.text
    assert lsn_int(r.json()["disk_consistent_lsn"]) > lsns[-1], r.text
    chains_ended = ps.metric("pageserver_delta_chains_ended_total")
    assert chains_ended == 0, "ingest stored images in place of deltas: the chains were cut short"
    layers = delta_layers(ps.workdir / "tenants" / tenant / "timelines" / timeline, lsns[0], lsns[-1])

    order = [0, *CHAIN_ROUNDS, *reversed(CHAIN_ROUNDS), 0]
    runs = [(k, pagebench(env, tenant, timeline, targets[k], rel)) for k in order]
    assert ps.metric("pageserver_delta_chains_ended_total") == chains_ended

    def mean(k: int, field: str) -> float:
        return statistics.mean(r[field] for kk, r in runs if kk == k)

    getpage = {}
    for k in targets:
        getpage[k] = {"lsn": lsn_str(targets[k]),
                      "records_per_page": chains[k]["records_per_page"] if k else 0.0,
                      "p50_us": round(mean(k, "p50_us"), 1), "p99_us": round(mean(k, "p99_us"), 1),
                      "pages_per_second": round(mean(k, "pages_per_second"), 1)}
    for k in CHAIN_ROUNDS:
        getpage[k]["p50_vs_image"] = round(getpage[k]["p50_us"] / getpage[0]["p50_us"], 2)
    result = {
        "pages": CHAIN_PAGES,
        "row_bytes": CHAIN_ROW_BYTES,
        "delta_chains_ended": chains_ended,
        "delta_layers_holding_the_rounds": layers,
        "round0_images": round0["fpw"],
        "rounds_seconds": round(rounds_seconds, 2),
        "chains": chains,
        "getpage": getpage,
        "runs": [{"round": k, **r} for k, r in runs],
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    record_result("getpage_chain", result)
    for k in CHAIN_ROUNDS:
        g = getpage[k]
        report_figure(f"getpage chain: after {k} rounds, about {g['records_per_page']:.1f} deltas per page: "
                      f"p50 {g['p50_us']:.0f} us, p99 {g['p99_us']:.0f} us, {g['pages_per_second']:.0f} pages/s "
                      f"(p50 {g['p50_vs_image']:.2f}x the image's)")
    g = getpage[0]
    report_figure(f"getpage chain: the image alone (round 0): p50 {g['p50_us']:.0f} us, p99 {g['p99_us']:.0f} us, "
                  f"{g['pages_per_second']:.0f} pages/s; {CHAIN_PAGES} pages, rounds in {layers} delta layer(s), "
                  f"1 connection, {PAGEBENCH_SECONDS:g} s per run, ABBA over the LSNs")
    report_figure(f"getpage chain: {json.dumps({k: v for k, v in result.items() if k not in ('runs', 'getpage')})}")


# ---- 1 and 2: an endpoint and a vanilla server ---------------------------

class Pair:
    """Endpoint ``bench`` on a neon_local cluster, and a vanilla server with
    its settings; both hold the pgbench tables of ``scale``."""

    def __init__(self, cluster: Cluster, vanilla: VanillaPostgres, settings: dict[str, str], out: Path):
        self.cluster, self.vanilla, self.settings, self.out = cluster, vanilla, settings, out
        self.ports = {"endpoint": cluster.port("bench"), "vanilla": vanilla.port}
        self.scale: int | None = None

    def ensure_scale(self, scale: int) -> None:
        if self.scale != scale:
            for port in self.ports.values():
                self.cluster.pgbench(port, "-i", "-q", "-s", str(scale))
            self.scale = scale

    def autovacuum(self, on: bool) -> None:
        """Autovacuum of the pgbench tables on both servers on or off."""
        for port in self.ports.values():
            for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
                self.cluster.psql(port, f"ALTER TABLE {table} SET (autovacuum_enabled = {'on' if on else 'off'})")

    def wal_dir(self, target: str) -> Path:
        return (self.cluster.pgdata("bench") if target == "endpoint" else self.vanilla.datadir) / "pg_wal"

    def pgdata(self, target: str) -> Path:
        return self.cluster.pgdata("bench") if target == "endpoint" else self.vanilla.datadir

    def lsn(self, target: str) -> int:
        return lsn_int(self.cluster.psql(self.ports[target], "SELECT pg_current_wal_lsn()"))


@pytest.fixture(scope="module")
def pair(neon_binpath: Path, pg_bin: PgBin, port_distributor: PortDistributor) -> Iterator[Pair]:
    out = fresh_output_dir("test_tpcb_bench")
    builder = NeonEnvBuilder(neon_binpath, pg_bin, port_distributor, out)
    vanilla = None
    try:
        cluster = Cluster.start(builder, pg_bin, num_safekeepers=3)
        cluster.run("endpoint", "create", "bench")
        cluster.run("endpoint", "start", "bench")
        settings = cluster.settings(cluster.port("bench"))
        assert settings["wal_compression"] == "lz4", settings
        vanilla = start_vanilla_like(pg_bin, out / "vanilla", port_distributor.get(), settings)
        yield Pair(cluster, vanilla, settings, out)
    finally:
        if vanilla is not None:
            vanilla.stop(check=False)
        builder.cleanup()


def test_tpcb_wal_bytes(pair: Pair, pg_bin: PgBin, report_figure):
    started = time.monotonic()
    c = pair.cluster
    set_vanilla(pair.vanilla, "fsync", pair.settings["fsync"])
    cases = []
    for scale, txns in WAL_CASES:
        pair.ensure_scale(scale)
        pair.autovacuum(False)
        runs = []
        for target in ABBA:
            port = pair.ports[target]
            # The k-th run on each side draws the same accounts: equal
            # workloads on equal data, whatever else differs.
            seed = 1 + sum(r["target"] == target for r in runs)
            c.psql(port, "CHECKPOINT")
            begin = pair.lsn(target)
            out = c.pgbench(port, "-n", "-c", "1", "-t", str(txns), f"--random-seed={seed}")
            end = pair.lsn(target)
            assert pgbench_transactions(out) == txns
            stats = waldump_stats(pg_bin, pair.wal_dir(target), begin, end)
            runs.append({"target": target, "seed": seed, "wal_bytes": end - begin,
                         "bytes_per_txn": (end - begin) / txns, "tps": pgbench_tps(out), **stats})

        def mean(target: str, field: str) -> float:
            return statistics.mean(r[field] for r in runs if r["target"] == target)

        case = {"scale": scale, "transactions": txns}
        for target in ("endpoint", "vanilla"):
            case[target] = {f: round(mean(target, f), 1) for f in
                            ("bytes_per_txn", "records", "fpw", "fpw_for_verification", "fpi_bytes", "tps")}
            # The record types of the target's first run, largest first.
            first = next(r for r in runs if r["target"] == target)
            case[target]["top_types"] = {t: v for t, v in list(first["types"].items())[:8]}
        case["ratio"] = round(case["endpoint"]["bytes_per_txn"] / case["vanilla"]["bytes_per_txn"], 3)
        case["runs"] = [{k: v for k, v in r.items() if k != "types"} for r in runs]
        cases.append(case)
    record_result("tpcb_wal", {"cases": cases, "settings": pair.settings,
                               "wall_seconds": round(time.monotonic() - started, 1)})
    for case in cases:
        e, v = case["endpoint"], case["vanilla"]
        report_figure(
            f"tpcb wal: scale {case['scale']}, pgbench -c 1 -t {case['transactions']}: endpoint "
            f"{e['bytes_per_txn']:.0f} B/txn, vanilla {v['bytes_per_txn']:.0f} B/txn ({case['ratio']:.2f}x); "
            f"full-page images per run: endpoint {e['fpw']:.0f} (+{e['fpw_for_verification']:.0f} for "
            f"verification), vanilla {v['fpw']:.0f}; image bytes {e['fpi_bytes'] / 1e6:.1f} MB vs "
            f"{v['fpi_bytes'] / 1e6:.1f} MB")
        for target in ("endpoint", "vanilla"):
            top = ", ".join(f"{t} {d['n']} x, {d['bytes'] / 1e3:.0f} kB" for t, d in
                            list(case[target]["top_types"].items())[:4])
            report_figure(f"tpcb wal: scale {case['scale']} {target} (first run) top record types: {top}")


def test_tpcb_tps(pair: Pair, report_figure):
    started = time.monotonic()
    c = pair.cluster
    pair.ensure_scale(TPS_SCALE)
    pair.autovacuum(True)
    runs = []
    for target in TPS_ORDER:
        server = "endpoint" if target == "endpoint" else "vanilla"
        if server == "vanilla":
            set_vanilla(pair.vanilla, "fsync", "on" if target == "vanilla_fsync_on" else "off")
        port = pair.ports[server]
        c.psql(port, "CHECKPOINT")
        groups = {**c.cpu_groups("bench"), "postgres vanilla": (postmaster_pid(pair.vanilla.datadir), True)}
        profile = CpuProfile(groups)
        pgdata = pair.pgdata(server)
        backends = backend_count(pgdata)
        out = profile.measure(
            lambda: c.pgbench(port, "-n", *TPS_CLIENTS, "-T", str(TPS_SECONDS)),
            settle=lambda: backend_count(pgdata) <= backends)
        runs.append({"target": target, "tps": pgbench_tps(out), "profile": profile.summary(CORES)})

    def mean_tps(target: str) -> float:
        return statistics.mean(r["tps"] for r in runs if r["target"] == target)

    def mean_cpu(target: str) -> dict:
        profiles = [r["profile"] for r in runs if r["target"] == target]
        names = {n for p in profiles for n in p["cpu_seconds"]}
        cpu = {n: round(statistics.mean(p["cpu_seconds"].get(n, 0.0) for p in profiles), 2) for n in names}
        return {
            "cpu_seconds": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
            "cpu_seconds_total": round(statistics.mean(p["cpu_seconds_total"] for p in profiles), 2),
            "utilisation_of_cores": round(statistics.mean(p["utilisation_of_cores"] for p in profiles), 3),
            "machine_busy_of_all_cpus": round(statistics.mean(p["machine_busy_of_all_cpus"] for p in profiles), 3),
        }

    targets = ["endpoint", "vanilla_fsync_on", "vanilla_fsync_off"]
    result = {
        "scale": TPS_SCALE,
        "seconds": TPS_SECONDS,
        "tps": {t: round(mean_tps(t), 1) for t in targets},
        "ratio_vs_fsync_on": round(mean_tps("endpoint") / mean_tps("vanilla_fsync_on"), 3),
        "ratio_vs_fsync_off": round(mean_tps("endpoint") / mean_tps("vanilla_fsync_off"), 3),
        "cpu": {t: mean_cpu(t) for t in targets},
        # CPU milliseconds per transaction by component (mean CPU over mean transactions).
        "cpu_ms_per_txn": {t: {n: round(s / (mean_tps(t) * TPS_SECONDS) * 1000, 3)
                               for n, s in mean_cpu(t)["cpu_seconds"].items()} for t in targets},
        "runs": runs,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    record_result("tpcb_tps", result)
    tps = result["tps"]
    report_figure(f"tpcb tps: pgbench {' '.join(TPS_CLIENTS)} -T {TPS_SECONDS}, scale {TPS_SCALE}: endpoint "
                  f"{tps['endpoint']:.0f} tps; vanilla fsync=on {tps['vanilla_fsync_on']:.0f} tps "
                  f"({result['ratio_vs_fsync_on']:.2f}x), fsync=off {tps['vanilla_fsync_off']:.0f} tps "
                  f"({result['ratio_vs_fsync_off']:.2f}x)")
    for t in targets:
        cpu = result["cpu"][t]
        per_txn_ms = cpu["cpu_seconds_total"] / (tps[t] * TPS_SECONDS) * 1000
        parts = ", ".join(f"{n} {s:.1f}" for n, s in cpu["cpu_seconds"].items() if s >= 0.05)
        report_figure(f"tpcb tps: {t} CPU s per {TPS_SECONDS} s run: {parts}; total {cpu['cpu_seconds_total']:.1f} "
                      f"= {cpu['utilisation_of_cores']:.0%} of {CORES} cores, {per_txn_ms:.2f} ms CPU/txn "
                      f"(machine busy {cpu['machine_busy_of_all_cpus']:.0%})")
