"""neon_local keeps the pageserver's layers in remote storage (a directory
in the repository by default) and re-attaches its tenants when the
pageserver starts with an empty directory: `pageserver stop`, wiping the
directory and `pageserver start` bring every timeline back."""

from __future__ import annotations

import re
import shutil

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import started_endpoint_port
from fixtures.pg import PgBin
from fixtures.utils import wait_until


def psql(pg_bin: PgBin, port: int, sql: str) -> str:
    return pg_bin.run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
                       "-U", "cloud_admin", "postgres", "-c", sql], as_pg_user=False).stdout.strip()


def test_wiped_pageserver_comes_back(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    neon_env_builder.num_safekeepers = 1
    nl = neon_env_builder.neon_local()
    nl.run("start")
    out = nl.run("tenant", "create", "--set-default").stdout
    tenant = re.search(r"tenant ([0-9a-f]{32})", out)[1]
    nl.run("endpoint", "create", "main")
    port = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    psql(pg_bin, port, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    nl.run("timeline", "branch", "--branch-name", "b1")
    psql(pg_bin, port, "INSERT INTO t SELECT g FROM generate_series(1001, 1500) g")
    nl.run("endpoint", "stop", "main")
    tree = nl.run("timeline", "list").stdout

    # Remote storage has an index for every timeline.
    ps = f"http://{nl.http['pageserver 1']}"
    session = nl.session()
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

    port = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    assert psql(pg_bin, port, "SELECT count(*), sum(id) FROM t") == "1500|1125750"
    nl.run("endpoint", "create", "b1", "--branch-name", "b1")
    port = started_endpoint_port(nl.run("endpoint", "start", "b1").stdout)
    assert psql(pg_bin, port, "SELECT count(*) FROM t") == "1000"

    # A restart with the directory in place attaches nothing.
    nl.run("stop")
    out = nl.run("start").stdout
    assert "re-attached" not in out, out
    nl.run("stop")
