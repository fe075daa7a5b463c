"""Lazy computes (compute_ctl with compute_fs): the start copies no
relation data, blocks come from the pageserver on first read, results equal
those of a compute started from a full base backup, pg_amcheck finds
nothing; a crash of compute_fs stops the compute cleanly and leaves no
mount; without FUSE, compute_ctl says so once and starts from a full base
backup."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from fixtures.compute import mounted_under
from fixtures.neon_fixtures import NeonEnv
from fixtures.pg import PgBin
from fixtures.port_distributor import PortDistributor
from fixtures.utils import pid_alive, wait_until
from regress.test_compute_ctl import ComputeCtl, cc, status, wait_status  # noqa: F401 - cc is a fixture

# What every comparison reads: sums over the whole of pgbench's tables, an
# index scan, and the catalog.
CHECKS = [
    "SELECT count(*), sum(aid), sum(bid), sum(abalance) FROM pgbench_accounts",
    "SELECT count(*), sum(bbalance) FROM pgbench_branches",
    "SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid IN (1, 77777, 250000, 499999) ORDER BY aid",
    "SELECT md5(string_agg(relname::text || ':' || relkind::text, ',' ORDER BY relname)) FROM pg_class",
]


def disk_use(path: Path) -> int:
    """Bytes of disk really used below ``path`` (sparse files count what
    they hold), without crossing into mounts."""
    out = subprocess.run(["du", "-s", "-x", "--block-size=1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def compute_fs_pid(pgdata: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"compute_fs --pgdata {pgdata} "], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    assert len(pids) == 1, out
    return pids[0]


def results(cc: ComputeCtl, port: int) -> list[str]:
    return [cc.psql(port, sql) for sql in CHECKS]


def test_lazy_compute_reads_on_demand(cc: ComputeCtl, pg_bin: PgBin, port_distributor: PortDistributor,
                                      test_output_dir: Path):
    port = port_distributor.get()
    loader = cc.start("loader", cc.spec(port))
    assert wait_status(loader, "running")["data_directory"] == "lazy", loader.log[-3000:]
    pgdata = test_output_dir / "loader"
    assert sorted(mounted_under(pgdata)) == [str(pgdata / "base"), str(pgdata / "global")]
    # pgbench's tables written through the lazy mount, then updated.
    pg_bin.run(["pgbench", "-i", "-s", "5", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "cloud_admin",
                "postgres"], as_pg_user=False)
    pg_bin.run(["pgbench", "-c", "4", "-j", "2", "-t", "300", "-h", "127.0.0.1", "-p", str(port), "-U",
                "cloud_admin", "postgres"], as_pg_user=False)
    expected = results(cc, port)
    database_size = int(cc.psql(port, "SELECT pg_database_size('postgres')"))
    assert database_size > 60 << 20, database_size
    assert loader.stop() == 0
    assert not mounted_under(pgdata), "compute_ctl's stop leaves nothing mounted"

    # A new lazy start: no relation data copied.
    port = port_distributor.get()
    lazy = cc.start("lazy", cc.spec(port))
    assert wait_status(lazy, "running")["data_directory"] == "lazy"
    pgdata = test_output_dir / "lazy"
    store = test_output_dir / "lazy.store"
    # The store holds the relation files: right after start, only the
    # system catalogs (fetched whole at start); the rest of PGDATA is WAL
    # segments and SLRUs, whatever the database's size.
    stored = disk_use(store)
    assert stored < 16 << 20, f"{stored} bytes in the store right after start ({database_size}-byte database)"
    assert disk_use(pgdata) - disk_use(pgdata / "pg_wal") < 4 << 20
    relpath = cc.psql(port, "SELECT pg_relation_filepath('pgbench_accounts')")
    assert not (store / relpath).exists(), "the table's file is not even created before it is used"
    # Through the mount it has its size; in the store it is sparse.
    assert (pgdata / relpath).stat().st_size > 60 << 20
    assert (store / relpath).stat().st_size == (pgdata / relpath).stat().st_size
    assert disk_use(store / relpath) == 0, "no block of the table was copied"
    assert "start: mounted the lazy data directory" in lazy.log
    # Reads fetch what they need; the results are the loader's.
    assert results(cc, port) == expected
    assert disk_use(store) > 40 << 20, "the scans fetched the tables into the store"
    cc.psql(port, "CREATE EXTENSION IF NOT EXISTS amcheck")
    check = pg_bin.run(["pg_amcheck", "-h", "127.0.0.1", "-p", str(port), "-U", "cloud_admin",
                        "--heapallindexed", "--rootdescend", "-d", "postgres"], as_pg_user=False, check=False)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout[-3000:] + check.stderr[-2000:]
    # Writes on the lazy compute: updates of fetched and unfetched blocks,
    # a truncation, a new table, a dropped one.
    cc.psql(port, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 0")
    cc.psql(port, "CREATE TABLE extra AS SELECT g AS x FROM generate_series(1, 100000) g")
    cc.psql(port, "DELETE FROM pgbench_history")
    cc.psql(port, "VACUUM pgbench_history")
    cc.psql(port, "DROP TABLE pgbench_tellers")
    after = [cc.psql(port, "SELECT sum(abalance) FROM pgbench_accounts"),
             cc.psql(port, "SELECT count(*), sum(x) FROM extra"),
             cc.psql(port, "SELECT count(*) FROM pgbench_history")]
    assert after[1] == "100000|5000050000" and after[2] == "0"
    assert lazy.stop() == 0
    assert not mounted_under(pgdata)

    # A full base backup start agrees.
    port = port_distributor.get()
    full = cc.start("full", cc.spec(port, lazy=False))
    assert wait_status(full, "running")["data_directory"] == "full"
    assert not mounted_under(test_output_dir / "full")
    assert [cc.psql(port, "SELECT sum(abalance) FROM pgbench_accounts"),
            cc.psql(port, "SELECT count(*), sum(x) FROM extra"),
            cc.psql(port, "SELECT count(*) FROM pgbench_history")] == after
    assert cc.psql(port, "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_tellers'") == "0"
    assert full.stop() == 0


def test_compute_fs_crash_stops_the_compute(cc: ComputeCtl, port_distributor: PortDistributor,
                                            test_output_dir: Path):
    port = port_distributor.get()
    spec = cc.spec(port)
    daemon = cc.start("compute", spec)
    s = wait_status(daemon, "running")
    cc.psql(port, "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 1000) g")
    pgdata = test_output_dir / "compute"
    os.kill(compute_fs_pid(pgdata), signal.SIGKILL)
    failed = wait_status(daemon, "failed", timeout=60)
    assert "compute_fs exited" in failed["error"] and "postgres was stopped" in failed["error"], failed
    wait_until("postgres to exit", lambda: not pid_alive(s["postgres_pid"]), 30)
    assert not mounted_under(pgdata), "no hung mount is left"
    # A new start is fresh and has the data.
    r = daemon.http("POST", "/configure", json=spec, timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    assert cc.psql(port, "SELECT count(*), sum(x) FROM t") == "1000|500500"
    assert daemon.stop() == 0
    assert not mounted_under(pgdata)


def test_without_fuse_the_base_backup_is_full(cc: ComputeCtl, port_distributor: PortDistributor,
                                             test_output_dir: Path):
    config = test_output_dir / "no_fuse.toml"
    config.write_text('fuse_device = "/nonexistent/fuse"\n')
    port = port_distributor.get()
    spec = cc.spec(port)
    daemon = cc.start("compute", spec, extra=["--config", str(config)])
    assert wait_status(daemon, "running")["data_directory"] == "full"
    notes = [line for line in daemon.log.splitlines() if "no lazy data directory" in line]
    assert len(notes) == 1 and "cannot open /nonexistent/fuse" in notes[0] and "full base backup" in notes[0], notes
    assert not mounted_under(test_output_dir / "compute")
    assert cc.psql(port, "SELECT 1") == "1"
    # A spec that requires a lazy data directory fails, saying why.
    r = daemon.http("POST", "/terminate", timeout=60)
    assert r.status_code == 200, r.text
    assert daemon.wait() == 0
    required = cc.start("required", cc.spec(port_distributor.get(), lazy=True), extra=["--config", str(config)])
    failed = wait_status(required, "failed", timeout=60)
    assert "the spec asks for a lazy data directory" in failed["error"], failed
    assert "cannot open /nonexistent/fuse" in failed["error"], failed
    assert required.stop() == 0


def test_fixture_computes_are_lazy(neon_env: NeonEnv):
    """The computes tests start directly (fixtures/compute.py) run lazily
    too, and unmount when stopped."""
    tenant = neon_env.pageserver.create_tenant()
    timeline = neon_env.pageserver.create_timeline(tenant)["timeline_id"]
    neon_env.wal_service(tenant, timeline)
    compute = neon_env.compute("main", tenant, timeline)
    assert compute.lazy_fs is not None and compute.lazy_fs.running
    assert sorted(mounted_under(compute.pg.datadir)) == [str(compute.pg.datadir / d) for d in ("base", "global")]
    compute.pg.sql("CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 10000) g")
    assert compute.pg.sql("SELECT sum(x) FROM t") == "50005000"
    compute.stop()
    compute.unmount()
