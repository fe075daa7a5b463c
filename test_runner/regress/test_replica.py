"""Read replicas: `endpoint create NAME --replica-of BRANCH` starts a stock
hot standby (lazily) at the branch's latest shutdown checkpoint, which
streams the primary's WAL from the safekeepers and follows it; it refuses
writes and `endpoint list` shows it."""

from __future__ import annotations

from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import started_endpoint_port
from fixtures.pg import PgBin
from fixtures.utils import wait_until


def psql(pg_bin: PgBin, port: int, sql: str, check: bool = True):
    result = pg_bin.run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
                         "-U", "cloud_admin", "postgres", "-c", sql], as_pg_user=False, check=check)
    return result.stdout.strip() if check else result


def test_replica_follows_the_primary(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    neon_env_builder.num_safekeepers = 3
    nl = neon_env_builder.neon_local()
    nl.run("start")
    nl.run("tenant", "create", "--set-default")
    nl.run("endpoint", "create", "main")
    primary = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    psql(pg_bin, primary, "CREATE TABLE t (x int PRIMARY KEY, v text)")
    psql(pg_bin, primary, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g")

    nl.run("endpoint", "create", "ro", "--replica-of", "main")
    replica = started_endpoint_port(nl.run("endpoint", "start", "ro").stdout)
    assert psql(pg_bin, replica, "SELECT pg_is_in_recovery()") == "t"
    wait_until("the replica to have the rows",
               lambda: psql(pg_bin, replica, "SELECT count(*) FROM t") == "50000", 60)

    # Rows committed on the primary later appear on the replica.
    for round in range(3):
        psql(pg_bin, primary, f"INSERT INTO t SELECT g, 'r{round}' FROM generate_series({50001 + round * 1000}, "
                              f"{50000 + (round + 1) * 1000}) g")
        psql(pg_bin, primary, f"UPDATE t SET v = 'updated {round}' WHERE x % 100 = {round}")
        expected = psql(pg_bin, primary, "SELECT count(*), md5(string_agg(v, ',' ORDER BY x)) FROM t")
        wait_until(f"the replica to follow round {round}",
                   lambda: psql(pg_bin, replica, "SELECT count(*), md5(string_agg(v, ',' ORDER BY x)) FROM t")
                   == expected, 60)

    # It refuses writes.
    refused = psql(pg_bin, replica, "INSERT INTO t VALUES (0, 'no')", check=False)
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr, refused.stderr

    # `endpoint list` shows it as a replica of the branch.
    rows = {line.split()[0]: line for line in nl.run("endpoint", "list").stdout.splitlines()[1:]}
    assert rows["ro"].rstrip().endswith("running (replica)") and " main " in rows["ro"], rows
    assert rows["main"].rstrip().endswith("running"), rows

    # A primary restart: the replica goes on following the new primary.
    nl.run("endpoint", "stop", "main")
    primary = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    psql(pg_bin, primary, "INSERT INTO t VALUES (-1, 'after restart')")
    wait_until("the replica to follow the restarted primary",
               lambda: psql(pg_bin, replica, "SELECT v FROM t WHERE x = -1") == "after restart", 60)
    # And a replica started now begins at the new primary's start point.
    nl.run("endpoint", "stop", "ro")
    replica = started_endpoint_port(nl.run("endpoint", "start", "ro").stdout)
    wait_until("the restarted replica to have every row",
               lambda: psql(pg_bin, replica, "SELECT count(*) FROM t") == "53001", 60)
    nl.run("stop")
