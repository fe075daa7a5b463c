"""A branch cut at the head of a timeline holds everything committed before
the command, even while the pageserver has not ingested it yet."""

from __future__ import annotations

import os
import re
import signal
import subprocess

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import started_endpoint_port
from fixtures.pg import PgBin
from fixtures.utils import wait_until

SCALE = 4  # pgbench_accounts: 400,000 rows


def psql(pg_bin: PgBin, port: int, sql: str) -> str:
    result = pg_bin.run(
        ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
         "-U", "cloud_admin", "postgres", "-c", sql],
        as_pg_user=False,
    )
    return result.stdout.strip()


def pending_connections(port: int) -> int:
    """Connections waiting in the accept queue of the listening socket on
    `port` (the receive queue of a listening socket in /proc/net/tcp)."""
    pending = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, state, queues = fields[1], fields[3], fields[4]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    pending += int(queues.split(":")[1], 16)
    return pending


def test_branch_right_after_a_load_has_every_row(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    neon_env_builder.num_safekeepers = 3
    nl = neon_env_builder.neon_local()
    nl.run("start")
    nl.run("tenant", "create", "--set-default")
    nl.run("endpoint", "create", "main")
    port = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    pg_bin.run(["pgbench", "-i", "-s", str(SCALE), "-h", "127.0.0.1", "-p", str(port), "-U", "cloud_admin",
                "postgres"], as_pg_user=False)

    # The pageserver stops before it can ingest the last commit: the branch
    # command reaches it while it is behind the safekeepers.
    [pid_file] = [p for p in nl.pid_files() if p.name == "pageserver.pid"]
    pageserver_pid = int(pid_file.read_text().split()[0])
    config = (nl.repo_dir / "config").read_text().split("[pageserver]")[1]
    http_port = int(re.search(r'listen_http_addr = "[^"]*:(\d+)"', config)[1])
    os.kill(pageserver_pid, signal.SIGSTOP)
    try:
        psql(pg_bin, port, "CREATE TABLE late AS SELECT g FROM generate_series(1, 1000) g")
        committed = psql(pg_bin, port, "SELECT pg_current_wal_flush_lsn()")
        branch = subprocess.Popen([str(nl.binary), "--repo-dir", str(nl.repo_dir), "timeline", "branch",
                                   "--branch-name", "big"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        wait_until("the branch command to call the pageserver", lambda: pending_connections(http_port) > 0, 30)
    finally:
        os.kill(pageserver_pid, signal.SIGCONT)
    out, err = branch.communicate(timeout=180)
    assert branch.returncode == 0, err
    m = re.search(r"at Lsn ([0-9A-F]+/[0-9A-F]+)", out)
    assert m, out
    assert lsn_int(m[1]) >= lsn_int(committed), f"branch at {m[1]}, before the last commit {committed}"

    nl.run("endpoint", "create", "big", "--branch-name", "big")
    big = started_endpoint_port(nl.run("endpoint", "start", "big").stdout)
    assert psql(pg_bin, big, "SELECT count(*) FROM pgbench_accounts") == str(SCALE * 100000)
    assert psql(pg_bin, big, "SELECT count(*) FROM late") == "1000"
    nl.run("stop", "--stop-mode", "immediate")
