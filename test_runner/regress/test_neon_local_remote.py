"""neon_local keeps the pageserver's layers in remote storage (a directory
in the repository by default) and re-attaches its tenants when the
pageserver starts with an empty directory: `pageserver stop`, wiping the
directory and `pageserver start` bring every timeline back."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from fixtures.daemons import NeonLocal, http_session, neon_local, write_neon_local_config  # noqa: F401
from fixtures.neon_fixtures import PortDistributor, wait_until
from fixtures.pg import PgBin
from fixtures.wal_service import lsn_int


def psql(pg_bin: PgBin, port: int, sql: str) -> str:
    return pg_bin.run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
                       "-U", "cloud_admin", "postgres", "-c", sql], as_pg_user=False).stdout.strip()


def start_port(output: str) -> int:
    m = re.search(r"postgresql://cloud_admin@127\.0\.0\.1:(\d+)/postgres", output)
    assert m, output
    return int(m[1])


def test_wiped_pageserver_comes_back(neon_local: NeonLocal, port_distributor: PortDistributor,
                                     test_output_dir: Path, pg_bin: PgBin):
    nl = neon_local
    config = test_output_dir / "init.toml"
    http = write_neon_local_config(config, port_distributor, safekeepers=1, endpoint_ports=10)
    nl.run("init", "--config", config)
    nl.run("start")
    out = nl.run("tenant", "create", "--set-default").stdout
    tenant = re.search(r"tenant ([0-9a-f]{32})", out)[1]
    nl.run("endpoint", "create", "main")
    port = start_port(nl.run("endpoint", "start", "main").stdout)
    psql(pg_bin, port, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    nl.run("timeline", "branch", "--branch-name", "b1")
    psql(pg_bin, port, "INSERT INTO t SELECT g FROM generate_series(1001, 1500) g")
    nl.run("endpoint", "stop", "main")
    tree = nl.run("timeline", "list").stdout

    # Remote storage has an index for every timeline.
    ps = f"http://{http['pageserver 1']}"
    session = http_session()
    timelines = [t["timeline_id"] for t in session.get(f"{ps}/v1/tenant/{tenant}/timeline", timeout=10).json()]
    assert len(timelines) == 2
    for tl in timelines:
        wait_until("an index in remote storage", lambda: lsn_int(
            session.get(f"{ps}/v1/tenant/{tenant}/timeline/{tl}", timeout=10).json()["remote_consistent_lsn"]) > 0, 60)
    remote = nl.repo_dir / "remote_storage" / "tenants" / tenant / "timelines"
    assert sorted(p.name for p in remote.iterdir()) == sorted(timelines)

    nl.run("pageserver", "stop")
    shutil.rmtree(nl.repo_dir / "pageserver_1")
    out = nl.run("pageserver", "start").stdout
    assert f"tenant {tenant} re-attached from remote storage" in out, out
    assert nl.run("timeline", "list").stdout == tree

    port = start_port(nl.run("endpoint", "start", "main").stdout)
    assert psql(pg_bin, port, "SELECT count(*), sum(id) FROM t") == "1500|1125750"
    nl.run("endpoint", "create", "b1", "--branch-name", "b1")
    port = start_port(nl.run("endpoint", "start", "b1").stdout)
    assert psql(pg_bin, port, "SELECT count(*) FROM t") == "1000"

    # A restart with the directory in place attaches nothing.
    nl.run("stop")
    out = nl.run("start").stdout
    assert "re-attached" not in out, out
    nl.run("stop")
