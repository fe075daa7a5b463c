"""The pageserver under load and faults, with real PostgreSQL: what a compute
started from a base backup sees is exactly what the previous computes
committed (pgbench's invariants, amcheck, the same query results as vanilla
PostgreSQL), after a SIGKILL of the pageserver during pgbench and after the
safekeeper it streams from is killed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fixtures.compute import Compute
from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder
from fixtures.pg import VanillaPostgres
from fixtures.utils import metric_value, wait_until

# Debug builds ingest slowly: pgbench -s 5 with wal_consistency_checking is
# a few hundred MB of WAL.
INGEST_TIMEOUT = 150

PGBENCH_SUMS = """
SELECT (SELECT sum(abalance) FROM pgbench_accounts),
       (SELECT sum(tbalance) FROM pgbench_tellers),
       (SELECT sum(bbalance) FROM pgbench_branches),
       (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
       (SELECT count(*) FROM pgbench_history),
       (SELECT count(*) FROM pgbench_accounts)
"""


def new_timeline(env: NeonEnv) -> tuple[str, str]:
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    env.wal_service(tenant, timeline)
    return tenant, timeline


def pgbench_sums(compute: Compute) -> list[int]:
    """[accounts, tellers, branches, history sums, history rows, accounts rows],
    after checking pgbench's invariant: every balance sum is the history's."""
    sums = [int(v) for v in compute.pg.sql(PGBENCH_SUMS).split("|")]
    accounts, tellers, branches, history = sums[:4]
    assert accounts == tellers == branches == history, f"pgbench sums disagree: {sums}"
    return sums


def background_pgbench(compute: Compute, *args: str) -> subprocess.Popen:
    pg = compute.pg
    return subprocess.Popen(
        [pg.pg_bin.path("pgbench"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "cloud_admin", *args, "postgres"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def assert_no_failed_transactions(out: str, returncode: int = 0) -> None:
    assert returncode == 0, out
    assert "number of failed transactions: 0 " in out, out


def ingested(env: NeonEnv, compute: Compute, timeout: float = INGEST_TIMEOUT) -> int:
    """Wait until the pageserver has ingested the compute's WAL up to its
    current insert LSN; returns that LSN."""
    lsn = compute.insert_lsn()
    env.pageserver.wait_for_lsn(compute.tenant_id, compute.timeline_id, lsn, timeout)
    return lsn


def restart(env: NeonEnv, old: Compute, name: str, walproposer: bool = True) -> Compute:
    """Stop `old`; start a compute from a new base backup once the pageserver
    has all the WAL the safekeepers agreed on. A writable one must have its
    walproposer streaming: without it commits would wait forever."""
    old.stop()
    lsn = env.sync_safekeepers(old.tenant_id, old.timeline_id)
    new = env.compute(name, old.tenant_id, old.timeline_id, lsn=lsn, walproposer=walproposer)
    if walproposer:
        def streaming():
            assert new.walproposer.running, new.walproposer.log[-2000:]
            return new.pg.sql("SELECT count(*) FROM pg_stat_replication "
                              "WHERE application_name = 'walproposer' AND state = 'streaming'") == "1"
        wait_until("the walproposer to stream", streaming, 30)
    return new


def amcheck(compute: Compute) -> None:
    """pg_amcheck of every heap and B-tree of the database `postgres`:
    heapallindexed, rootdescend (which implies parent-check)."""
    compute.pg.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    result = compute.pg.pg_bin.run(
        ["pg_amcheck", "-h", "127.0.0.1", "-p", str(compute.pg.port), "-U", "cloud_admin",
         "--heapallindexed", "--rootdescend", "-d", "postgres"],
        as_pg_user=False, check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"pg_amcheck found corruption ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")


def test_pgbench_then_amcheck(neon_env: NeonEnv):
    tenant, timeline = new_timeline(neon_env)
    main = neon_env.compute("main", tenant, timeline)
    main.pg.pgbench("-i", "-s", "5", "-q")
    out = main.pg.pgbench("-c", "4", "-j", "2", "-T", "15").stdout
    assert_no_failed_transactions(out)
    expected = pgbench_sums(main)
    assert expected[4] > 0 and expected[5] == 500_000
    ingested(neon_env, main)

    again = restart(neon_env, main, "again")
    assert pgbench_sums(again) == expected
    amcheck(again)


# Several tables (with an index, TOAST, a sequence), updates, deletes,
# VACUUM, VACUUM FULL, TRUNCATE, and a second database used after its creation.
SCRIPT = r"""
CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0);
CREATE INDEX accounts_owner ON accounts (owner);
INSERT INTO accounts (owner, balance) SELECT 'owner ' || (g % 97), g * 1.5 FROM generate_series(1, 1500) g;
UPDATE accounts SET balance = balance * 2 WHERE id % 3 = 0;
DELETE FROM accounts WHERE id % 7 = 0;
VACUUM accounts;
UPDATE accounts SET owner = owner || '!' WHERE id < 300;
INSERT INTO accounts (owner, balance) SELECT 'late ' || g, g FROM generate_series(1, 100) g;

CREATE SEQUENCE ticket_seq;
CREATE TABLE tickets (id bigint PRIMARY KEY DEFAULT nextval('ticket_seq'), account int, note text);
INSERT INTO tickets (account, note) SELECT g, repeat(chr(65 + g % 26), g % 300) FROM generate_series(1, 700) g;
DELETE FROM tickets WHERE id % 10 = 0;
CREATE SEQUENCE fixed_seq;
SELECT setval('fixed_seq', 777);

CREATE TABLE wide (id int PRIMARY KEY, payload text);
INSERT INTO wide SELECT g, string_agg(md5(g::text || '/' || i::text), '' ORDER BY i)
  FROM generate_series(1, 30) g, generate_series(1, 300) i GROUP BY g;
UPDATE wide SET payload = upper(payload) WHERE id % 2 = 0;
DELETE FROM wide WHERE id > 25;
VACUUM FULL wide;

CREATE TABLE scratch AS SELECT g AS n FROM generate_series(1, 1000) g;
TRUNCATE scratch;
INSERT INTO scratch SELECT g FROM generate_series(1, 10) g;

CREATE DATABASE d2;
\c d2
CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
INSERT INTO items SELECT g, 'item ' || g, g % 13 FROM generate_series(1, 1000) g;
CREATE INDEX items_qty ON items (qty);
UPDATE items SET qty = qty + 100 WHERE id % 5 = 0;
DELETE FROM items WHERE qty = 0;
TRUNCATE TABLE items;
INSERT INTO items SELECT g, 'again ' || g, g % 7 FROM generate_series(1, 400) g;
VACUUM ANALYZE items;
"""

TABLES = {"postgres": ["accounts", "tickets", "wide", "scratch"], "d2": ["items"]}


def run_script(pg: VanillaPostgres, path: Path) -> None:
    pg.pg_bin.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.connstr(), "-f", path], as_pg_user=False)


def snapshot(pg: VanillaPostgres) -> dict:
    """Row counts and md5 of ordered rows per table, sequence states, and the
    tables and databases there are."""
    out = {"databases": pg.sql("SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database")}
    for db, tables in TABLES.items():
        out[db, "tables"] = pg.sql("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class "
                                   "WHERE relnamespace = 'public'::regnamespace", db)
        for table in tables:
            out[db, table] = pg.sql(f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text COLLATE \"C\")) "
                                    f"FROM {table} t", db)
    out["postgres", "index scan"] = pg.sql(
        "SET enable_seqscan = off; SELECT count(*), sum(id) FROM accounts WHERE owner >= 'owner 5'")
    out["d2", "index scan"] = pg.sql("SET enable_seqscan = off; SELECT count(*), sum(id) FROM items WHERE qty = 3", "d2")
    for seq in ["ticket_seq", "fixed_seq"]:
        out[seq] = pg.sql(f"SELECT last_value, is_called FROM {seq}")
    return out


def test_same_results_as_vanilla(neon_env: NeonEnv, vanilla_pg: VanillaPostgres, test_output_dir: Path):
    script = test_output_dir / "script.sql"
    script.write_text(SCRIPT)

    vanilla_pg.initdb()
    vanilla_pg.configure(["fsync = off"])
    vanilla_pg.start()
    run_script(vanilla_pg, script)
    # A compute started from a base backup sees the pages as the WAL left
    # them, like crash recovery: a sequence's WAL is logged 32 values ahead,
    # so compare with vanilla after crash recovery too.
    vanilla_pg.stop(mode="immediate")
    vanilla_pg.start()
    expected = snapshot(vanilla_pg)

    tenant, timeline = new_timeline(neon_env)
    main = neon_env.compute("main", tenant, timeline)
    run_script(main.pg, script)
    ingested(neon_env, main)

    again = restart(neon_env, main, "again", walproposer=False)
    actual = snapshot(again.pg)
    assert actual == expected, {k: (expected.get(k), actual.get(k)) for k in expected if expected.get(k) != actual.get(k)}
    # Sanity: the script did something.
    assert expected["postgres", "accounts"].startswith("1386|")
    assert expected["d2", "items"].startswith("400|")
    assert 700 <= int(expected["ticket_seq"].split("|")[0]) <= 700 + 32 and expected["fixed_seq"] == "777|t"


def test_pageserver_sigkill_during_pgbench(neon_env: NeonEnv):
    ps = neon_env.pageserver
    tenant, timeline = new_timeline(neon_env)
    main = neon_env.compute("main", tenant, timeline)
    main.pg.pgbench("-i", "-s", "2", "-q")
    before_bench = main.insert_lsn()
    # Long enough to be running still when the pageserver has ingested some of it.
    bench = background_pgbench(main, "-c", "4", "-j", "2", "-T", "30")
    history = lambda: int(main.pg.sql("SELECT count(*) FROM pgbench_history"))  # noqa: E731

    # Kill it while it is ingesting pgbench's WAL.
    wait_until("the pageserver to ingest some of pgbench's WAL",
               lambda: lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"]) > before_bench and history() > 100, 60)
    ps.kill()
    killed_at = history()
    # The pageserver is not on the commit path.
    wait_until("commits without the pageserver", lambda: history() > killed_at + 300, 30)
    ps.start()
    detail = ps.timeline(tenant, timeline)
    assert lsn_int(detail["disk_consistent_lsn"]) <= lsn_int(detail["last_record_lsn"])

    out, _ = bench.communicate(timeout=120)
    assert_no_failed_transactions(out, bench.returncode)
    expected = pgbench_sums(main)
    assert expected[4] > killed_at
    ingested(neon_env, main)

    again = restart(neon_env, main, "again")
    assert pgbench_sums(again) == expected
    amcheck(again)


def test_wal_receiver_switches_safekeepers(neon_env: NeonEnv):
    ps = neon_env.pageserver
    tenant, timeline = new_timeline(neon_env)
    main = neon_env.compute("main", tenant, timeline)
    main.pg.sql("CREATE TABLE t (i int, v text)")
    main.pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
    ingested(neon_env, main)

    streaming = lambda: neon_env.streaming_safekeepers(tenant, timeline)  # noqa: E731
    victim = wait_until("the pageserver to stream from exactly one safekeeper",
                        lambda: len(s := streaming()) == 1 and s[0], 30)
    victim.kill()

    # The two others are a quorum: commits go on.
    for n in range(5):
        main.pg.sql(f"INSERT INTO t SELECT g, md5(g::text) FROM generate_series({(n + 1) * 1000 + 1}, {(n + 2) * 1000}) g")
    lsn = main.insert_lsn()
    ps.wait_for_lsn(tenant, timeline, lsn, 60)
    # It streams from another safekeeper now.
    wait_until("a walsender on another safekeeper", lambda: streaming() and victim not in streaming(), 30)
    last = ps.timeline(tenant, timeline)["last_record_lsn"]
    assert lsn_int(last) >= lsn, (last, lsn_str(lsn))

    again = restart(neon_env, main, "again", walproposer=False)
    assert again.pg.sql("SELECT count(*), count(DISTINCT i) FROM t") == "6000|6000"


def mount_tmpfs(path: Path, size_bytes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], check=True)


def resize_tmpfs(path: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_full_disk_pauses_ingest_until_space_returns(neon_env_builder: NeonEnvBuilder):
    """The pageserver's disk fills while it ingests: writing an in-memory
    layer fails with ENOSPC. Ingest pauses (memory stays bounded, the error
    is reported in the timeline's detail and a metric) instead of piling up
    frozen layers; once space returns it resumes by itself, and a compute
    started afterwards reads exactly what was committed."""
    workdir = neon_env_builder.out / "pageserver"
    mount_tmpfs(workdir, 1 << 30)
    try:
        # Small in-memory layers: flushes come often.
        neon_env_builder.pageserver_config = (
            "open_layer_max_bytes = 2097152\ncheckpoint_distance = 4194304\n"
            "[background]\ninterval_seconds = 3600\n")
        env = neon_env_builder.init_start()
        ps = env.pageserver
        tenant, timeline = new_timeline(env)
        main = env.compute("main", tenant, timeline)
        main.pg.sql("CREATE TABLE t (id int, payload text)")
        ingested(env, main)
        r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
        assert r.status_code == 200, r.text

        # Leave 1 MB free: the next layer files cannot be written.
        resize_tmpfs(workdir, used_bytes(workdir) + (1 << 20))
        main.pg.sql("INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 100000) g")
        target = main.insert_lsn()

        def paused() -> str:
            detail = ps.timeline(tenant, timeline)
            assert detail.get("ingest_paused"), detail
            return detail["ingest_paused"]
        reason = wait_until("ingest to pause on the full disk", paused, INGEST_TIMEOUT)
        assert "No space left" in reason, reason
        assert metric_value(ps.http("GET", "/metrics").text, "pageserver_ingest_paused_timelines") == 1
        stuck = lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"])
        assert stuck < target
        # Paused means paused: nothing more is read while the disk is full.
        for _ in range(3):
            r = ps.http("GET", "/v1/status")
            assert r.status_code == 200
        assert lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"]) <= stuck + (8 << 20)
        assert ps.running

        # Space returns: ingest resumes without a restart.
        resize_tmpfs(workdir, 1 << 30)
        ps.wait_for_lsn(tenant, timeline, target, INGEST_TIMEOUT)
        assert not ps.timeline(tenant, timeline).get("ingest_paused")
        assert metric_value(ps.http("GET", "/metrics").text, "pageserver_ingest_paused_timelines") == 0
        expected = main.pg.sql("SELECT count(*), sum(hashtext(payload)) FROM t")
        again = restart(env, main, "again")
        assert again.pg.sql("SELECT count(*), sum(hashtext(payload)) FROM t") == expected
    finally:
        neon_env_builder.cleanup()
        subprocess.run(["umount", "-l", str(workdir)], check=False)
