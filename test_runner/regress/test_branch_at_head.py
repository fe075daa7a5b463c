"""A branch cut at the head of a timeline holds everything committed before
the command, even while the pageserver is still ingesting a load."""

from __future__ import annotations

import re

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import started_endpoint_port
from fixtures.pg import PgBin

SCALE = 4  # pgbench_accounts: 400,000 rows


def psql(pg_bin: PgBin, port: int, sql: str) -> str:
    result = pg_bin.run(
        ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
         "-U", "cloud_admin", "postgres", "-c", sql],
        as_pg_user=False,
    )
    return result.stdout.strip()


def test_branch_right_after_a_load_has_every_row(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    neon_env_builder.num_safekeepers = 3
    nl = neon_env_builder.neon_local()
    nl.run("start")
    nl.run("tenant", "create", "--set-default")
    nl.run("endpoint", "create", "main")
    port = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    pg_bin.run(["pgbench", "-i", "-s", str(SCALE), "-h", "127.0.0.1", "-p", str(port), "-U", "cloud_admin",
                "postgres"], as_pg_user=False)
    committed = psql(pg_bin, port, "SELECT pg_current_wal_flush_lsn()")

    # At once: the pageserver may still be ingesting the load.
    out = nl.run("timeline", "branch", "--branch-name", "big").stdout
    m = re.search(r"at Lsn ([0-9A-F]+/[0-9A-F]+)", out)
    assert m, out
    assert lsn_int(m[1]) >= lsn_int(committed), f"branch at {m[1]}, before the load's end {committed}"

    nl.run("endpoint", "create", "big", "--branch-name", "big")
    big = started_endpoint_port(nl.run("endpoint", "start", "big").stdout)
    assert psql(pg_bin, big, "SELECT count(*) FROM pgbench_accounts") == str(SCALE * 100000)
    assert psql(pg_bin, big, "SELECT count(*) FROM pgbench_branches") == str(SCALE)
    nl.run("stop", "--stop-mode", "immediate")
