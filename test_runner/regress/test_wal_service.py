"""The WAL service with real PostgreSQL 15 and three safekeepers: WAL is
durable on a quorum before a commit returns, survives safekeeper and
compute crashes, and newer proposers fence older ones."""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fixtures.compute import Compute
from fixtures.lsn import SEGMENT_SIZE, lsn_int, lsn_str, read_segments
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder
from fixtures.pg import PgBin, VanillaPostgres
from fixtures.utils import run_checked, wait_until
from fixtures.wal_service import WalService


@pytest.fixture
def env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """Three safekeepers, nothing else."""
    neon_env_builder.pageserver = False
    return neon_env_builder.init_start()


@pytest.fixture
def wal_service(env: NeonEnv) -> WalService:
    """A timeline on the three safekeepers."""
    return env.wal_service()


@pytest.fixture
def compute(env: NeonEnv, wal_service: WalService) -> Compute:
    """A compute on the timeline, to be made by ``init``."""
    return env.new_compute(wal_service)


def commit_lsn(compute: Compute) -> int:
    """A small committed transaction; returns where its WAL ends."""
    compute.pg.sql("INSERT INTO marker VALUES (1)")
    return lsn_int(compute.pg.sql("SELECT pg_current_wal_insert_lsn()"))


def wait_caught_up(service: WalService, lsn: int, timeout: float = 60) -> list[dict]:
    def done():
        statuses = service.statuses()
        if all(lsn_int(s["flush_lsn"]) >= lsn and lsn_int(s["commit_lsn"]) >= lsn for s in statuses):
            return statuses
        return None

    return wait_until(f"safekeepers to reach {lsn:X}", done, timeout)


def psql_in_background(compute: Compute, sql: str) -> subprocess.Popen:
    pg = compute.pg
    return subprocess.Popen(
        [pg.pg_bin.path("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", pg.connstr(), "-c", sql],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_pgbench_wal_is_identical_everywhere(compute: Compute, wal_service: WalService):
    start = compute.init()
    compute.start()
    pg = compute.pg
    pg.sql("CREATE TABLE marker (i int)")
    pg.pgbench("-i", "-s", "2", "-q")
    result = pg.pgbench("-c", "4", "-j", "2", "-T", "30")
    assert "number of failed transactions: 0 " in result.stdout, result.stdout
    end = commit_lsn(compute)
    statuses = wait_caught_up(wal_service, end)
    commit = min(lsn_int(s["commit_lsn"]) for s in statuses)
    assert commit >= end
    copies = [sk.read_wal(wal_service.tenant_id, wal_service.timeline_id, start, commit)
              for sk in wal_service.safekeepers]
    assert len(copies[0]) > 10_000_000, "pgbench wrote little WAL"
    assert copies[0] == copies[1] == copies[2], "safekeepers' WAL differs"
    assert copies[0] == read_segments(pg.datadir / "pg_wal", start, commit), "differs from PostgreSQL's pg_wal"
    assert {s["term"] for s in statuses} == {1}
    metrics = wal_service.safekeepers[0].http("GET", "/metrics").text
    written = float(re.search(r"^safekeeper_wal_bytes_written_total (\S+)$", metrics, re.M)[1])
    assert written >= len(copies[0])
    assert re.search(r"^safekeeper_walproposer_connections 1$", metrics, re.M), metrics


def test_minority_killed_and_restarted(compute: Compute, wal_service: WalService):
    compute.init()
    compute.start()
    pg = compute.pg
    pg.pgbench("-i", "-s", "1", "-q")
    bench = subprocess.Popen(
        [pg.pg_bin.path("pgbench"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "cloud_admin",
         "-c", "4", "-T", "20", "postgres"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    count = lambda: int(pg.sql("SELECT count(*) FROM pgbench_history"))  # noqa: E731
    wait_until("pgbench to commit", lambda: count() > 200, 30)
    victim = wal_service.safekeepers[0]
    victim.kill()
    before = count()
    wait_until("commits without the killed safekeeper", lambda: count() > before + 1000, 30)
    victim.start()
    out, _ = bench.communicate(timeout=60)
    assert bench.returncode == 0 and "number of failed transactions: 0 " in out, out
    wait_caught_up(wal_service, commit_lsn_after_bench(compute))


def commit_lsn_after_bench(compute: Compute) -> int:
    compute.pg.sql("CREATE TABLE IF NOT EXISTS marker (i int)")
    return commit_lsn(compute)


def test_no_quorum_blocks_commits(compute: Compute, wal_service: WalService):
    compute.init()
    compute.start()
    pg = compute.pg
    pg.sql("CREATE TABLE t (i int)")
    sk1, sk2, sk3 = wal_service.safekeepers
    sk2.kill()
    sk3.kill()
    before = lsn_int(sk1.timeline_status(wal_service.tenant_id, wal_service.timeline_id)["flush_lsn"])
    insert = psql_in_background(compute, "INSERT INTO t VALUES (42)")
    # The WAL reaches the one safekeeper left ...
    wait_until("sk1 to receive the insert", lambda: lsn_int(
        sk1.timeline_status(wal_service.tenant_id, wal_service.timeline_id)["flush_lsn"]) > before, 30)
    # ... but without a quorum the commit is not acknowledged (observed for 3 s).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert insert.poll() is None, "commit acknowledged without a quorum"
        time.sleep(0.1)
    sk2.start()
    out, err = insert.communicate(timeout=60)
    assert insert.returncode == 0, err
    assert pg.sql("SELECT i FROM t") == "42"


def test_ledger_survives_crashes(compute: Compute, wal_service: WalService, neon_binpath: Path, report_figure):
    """Commits acknowledged to a client are in the WAL after random
    safekeeper kills and compute crashes."""
    rng = random.Random(1234)
    compute.init()
    compute.start()
    compute.pg.sql("CREATE TABLE ledger (n int)")
    acknowledged: list[int] = []
    attempts = 0
    for round_no in range(3):
        stop = threading.Event()

        def client():
            nonlocal attempts
            n = 0
            while not stop.is_set():
                n += 1
                attempts += 1
                result = subprocess.run(
                    [compute.pg.pg_bin.path("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
                     compute.pg.connstr(), "-c",
                     f"INSERT INTO ledger VALUES ({round_no * 100000 + n}) RETURNING txid_current()"],
                    capture_output=True, text=True, timeout=120,
                )
                if result.returncode == 0:
                    acknowledged.append(int(result.stdout.split()[0]))

        thread = threading.Thread(target=client)
        thread.start()
        # A random safekeeper is killed and restarted at random moments.
        for _ in range(2):
            wait_until("some commits", lambda: len(acknowledged) > 20 * (round_no + 1), 60)
            victim = rng.choice(wal_service.safekeepers)
            victim.kill()
            time.sleep(rng.uniform(0.2, 1.0))  # the outage lasts a random while
            victim.start()
        time.sleep(rng.uniform(0.1, 1.0))  # the compute dies at a random moment
        compute.kill()
        stop.set()
        thread.join(timeout=180)
        # Re-sync, and start the compute again from where the WAL ends.
        synced = wal_service.sync()
        compute.start(start_lsn=synced)
    compute.kill()
    final = wal_service.sync()

    # Decode the WAL of a safekeeper that has all of it.
    tenant, timeline = wal_service.tenant_id, wal_service.timeline_id
    holder = next(sk for sk in wal_service.safekeepers
                  if lsn_int(sk.timeline_status(tenant, timeline)["flush_lsn"]) >= final)
    out = run_checked([str(neon_binpath / "pg_wal_inspect"), "dump",
                       str(holder.datadir / tenant / timeline), "--wal-seg-size", str(SEGMENT_SIZE), "--start",
                       lsn_str(compute.start_lsn)]).stdout
    committed = set()
    for line in out.splitlines():
        record = json.loads(line)
        if "summary" in record:
            continue
        finish = record["parsed"].get("finish")
        if finish and finish["status"] == "committed" and lsn_int(record["end"]) <= final:
            committed.add(finish["xid"])
    missing = [xid for xid in acknowledged if xid not in committed]
    report_figure(f"ledger: {len(acknowledged)} of {attempts} commits acknowledged through 6 safekeeper "
                  f"kills and 3 compute crashes; {len(missing)} missing from the WAL")
    assert len(acknowledged) > 60, f"only {len(acknowledged)} of {attempts} commits acknowledged"
    assert not missing, f"{len(missing)} acknowledged commits are not in the WAL: {missing[:10]}"


def test_newer_proposer_fences_older(compute: Compute, wal_service: WalService):
    compute.init()
    compute.start()
    compute.pg.sql("CREATE TABLE t (i int)")
    older = compute.walproposer
    synced = wal_service.sync()
    assert synced >= lsn_int(compute.pg.sql("SELECT pg_current_wal_insert_lsn()"))
    # The older walproposer learns of the newer term and stops.
    psql_in_background(compute, "INSERT INTO t VALUES (1)")
    assert older.wait(timeout=60) != 0
    log = older.log
    assert "another proposer took over" in log, log[-2000:]
    statuses = wal_service.statuses()
    assert len({s["term"] for s in statuses}) == 1 and statuses[0]["term"] >= 2


def test_divergent_tail_is_truncated(compute: Compute, wal_service: WalService):
    tenant, timeline = wal_service.tenant_id, wal_service.timeline_id
    compute.init()
    compute.start()
    compute.pg.sql("CREATE TABLE t (i int)")
    sk1, sk2, sk3 = wal_service.safekeepers
    # Everything PostgreSQL has flushed is on all three: a commit LSN that a
    # safekeeper reports lags behind (it comes with the next append), so
    # it cannot tell where the shared WAL ends.
    flushed = lsn_int(compute.pg.sql("SELECT pg_current_wal_flush_lsn()"))

    def shared_end() -> int | None:
        ends = {lsn_int(sk.timeline_status(tenant, timeline)["flush_lsn"]) for sk in (sk1, sk2, sk3)}
        end = ends.pop()
        return end if not ends and end >= flushed else None

    committed = wait_until("every safekeeper to have the same WAL", shared_end, 30)
    sk2.kill()
    sk3.kill()
    blocked = psql_in_background(compute, "INSERT INTO t SELECT generate_series(1, 1000)")
    wait_until("a tail only sk1 has", lambda: lsn_int(sk1.timeline_status(tenant, timeline)["flush_lsn"]) > committed + 1000, 30)
    tail_end = lsn_int(sk1.timeline_status(tenant, timeline)["flush_lsn"])
    compute.kill()
    blocked.wait(timeout=30)
    assert blocked.returncode != 0, "the insert was acknowledged without a quorum"

    # sk2 and sk3 elect a new term without sk1: its tail is not theirs.
    sk1.kill()
    sk2.start()
    sk3.start()
    synced = wal_service.sync()
    assert committed <= synced < tail_end
    # With sk2 down, a quorum needs sk1: the new election truncates its tail.
    sk2.kill()
    sk1.start()
    assert wal_service.sync() == synced
    s1 = sk1.timeline_status(tenant, timeline)
    s3 = sk3.timeline_status(tenant, timeline)
    assert lsn_int(s1["flush_lsn"]) == synced
    assert s1["term_history"] == s3["term_history"]
    assert sk1.read_wal(tenant, timeline, synced, tail_end) == bytes(tail_end - synced), "the divergent tail is still there"


def test_stock_standby_streams_from_a_safekeeper(
    compute: Compute, wal_service: WalService, pg_bin: PgBin, port_distributor, test_output_dir: Path
):
    """A stock PostgreSQL hot standby replicates from a safekeeper as if it
    were the primary's walsender."""
    compute.init()
    compute.start()
    pg = compute.pg
    pg.sql("CREATE TABLE t (i int)")
    pg.sql("INSERT INTO t VALUES (1)")
    # The walreceiver asks for whole segments: start in one the safekeepers have from its beginning.
    pg.sql("SELECT pg_switch_wal()")
    standby_dir = test_output_dir / "standby"
    pg_bin.run(["pg_basebackup", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "cloud_admin",
                "-D", standby_dir, "-X", "fetch", "--checkpoint=fast"])
    sk = wal_service.safekeepers[0]
    options = f"-c tenant_id={wal_service.tenant_id} -c timeline_id={wal_service.timeline_id}"
    # The password is a token of the tenant, as a replica's is.
    with open(standby_dir / "postgresql.auto.conf", "a") as f:
        f.write(f"primary_conninfo = 'host=127.0.0.1 port={sk.pg_port} user=cloud_admin "
                f"password={wal_service.token()} application_name=standby options=''{options}'''\n")
        f.write("synchronous_standby_names = ''\n")
    (standby_dir / "standby.signal").touch()
    standby = VanillaPostgres(pg_bin, standby_dir, port_distributor.get())
    standby.start()
    try:
        pg.sql("INSERT INTO t VALUES (2)")
        wait_until("the standby to see the new row", lambda: standby.sql("SELECT count(*) FROM t") == "2", 60)
        status = sk.timeline_status(wal_service.tenant_id, wal_service.timeline_id)
        assert status["walsenders"] == 1
    finally:
        standby.stop(mode="immediate", check=False)
