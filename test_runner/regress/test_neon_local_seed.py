"""The README walkthrough (README.md, after Neon's own), command by command,
through neon_local: tenants, branches, endpoints and psql on them; time
travel with read-only endpoints; and the errors users meet.

Each test has its own repository and ports (``init --config``), so tests
do not collide; otherwise the commands are the README's.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import NeonLocal
from fixtures.pg import PgBin
from fixtures.utils import pid_alive

ID = r"[0-9a-f]{32}"
LSN = r"[0-9A-F]+/[0-9A-F]+"


class Cluster:
    """A started neon_local repository, with psql."""

    def __init__(self, nl: NeonLocal, pg_bin: PgBin):
        self.nl, self.pg_bin = nl, pg_bin

    def run(self, *args: str) -> str:
        return self.nl.run(*args).stdout

    def fail(self, *args: str) -> str:
        """Runs a command that must fail with exactly one line on stderr."""
        result = self.nl.run(*args, check=False)
        assert result.returncode != 0, result.stdout
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    def psql(self, port: int, sql: str, check: bool = True, user: str = "cloud_admin"):
        result = self.pg_bin.run(
            ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
             "-U", user, "postgres", "-c", sql],
            as_pg_user=False, check=check,
        )
        return result.stdout.strip() if check else result

    def endpoints(self) -> dict[str, list[str]]:
        """`endpoint list` as {name: [address, timeline, branch, lsn, status]}."""
        lines = self.run("endpoint", "list").splitlines()
        assert lines[0].split() == ["ENDPOINT", "ADDRESS", "TIMELINE", "BRANCH", "NAME", "LSN", "STATUS"]
        return {fields[0]: fields[1:] for fields in (line.split() for line in lines[1:])}

    def repo_files(self) -> list[Path]:
        return sorted(p.relative_to(self.nl.repo_dir) for p in self.nl.repo_dir.rglob("*")
                      if "pgdata" not in p.parts and p.suffix != ".log")


@pytest.fixture
def cluster(request: pytest.FixtureRequest, neon_env_builder: NeonEnvBuilder, pg_bin: PgBin) -> Cluster:
    """An initialised repository on free ports, with one safekeeper (as
    `init` makes by default) or as many as the test's parameter says."""
    neon_env_builder.num_safekeepers = getattr(request, "param", 1)
    return Cluster(neon_env_builder.neon_local(), pg_bin)


def start_port(output: str, name: str, timeline: str) -> int:
    m = re.fullmatch(
        rf"Starting new endpoint {name} \(PostgreSQL v15\) on timeline {timeline} \.\.\.\n"
        r"Starting postgres at 'postgresql://cloud_admin@127\.0\.0\.1:(\d+)/postgres'\n",
        output,
    )
    assert m, output
    return int(m[1])


@pytest.mark.parametrize("cluster", [1, 3], indirect=True, ids=["1sk", "3sk"])
def test_readme_transcript(cluster: Cluster):
    nl = cluster.nl
    out = cluster.run("start")
    # The seed's lines for the storage daemons, then the control plane and
    # the proxy.
    repo = str(nl.repo_dir)
    ps_pg = re.search(r'listen_pg_addr = "([^"]+)"', (nl.repo_dir / "config").read_text().split("[pageserver]")[1])[1]
    assert re.search(
        rf"Starting neon broker at 127\.0\.0\.1:\d+\.\nstorage_broker started, pid: \d+\n"
        rf"Starting pageserver node 1 at '{re.escape(ps_pg)}' in \"{re.escape(repo)}\"\.\npageserver started, pid: \d+\n"
        rf"Starting safekeeper at '127\.0\.0\.1:\d+' in '{re.escape(repo)}/safekeepers/sk1'\.\nsafekeeper 1 started, pid: \d+\n",
        out), out
    safekeepers = len(re.findall(r"safekeeper \d+ started, pid: \d+", out))

    out = cluster.run("tenant", "create", "--set-default")
    m = re.fullmatch(
        rf"tenant ({ID}) successfully created on the pageserver\n"
        rf"Created an initial timeline '({ID})' at Lsn ({LSN}) for tenant: \1\n"
        r"Setting tenant \1 as a default one\n",
        out,
    )
    assert m, out
    tenant, main_tl = m[1], m[2]
    assert cluster.run("tenant", "list") == f"{tenant} active (default)\n"

    assert cluster.run("endpoint", "create", "main") == ""
    main_port = start_port(cluster.run("endpoint", "start", "main"), "main", main_tl)
    eps = cluster.endpoints()
    assert list(eps) == ["main"]
    assert eps["main"][:3] == [f"127.0.0.1:{main_port}", main_tl, "main"]
    assert re.fullmatch(LSN, eps["main"][3]) and eps["main"][4] == "running"

    assert cluster.psql(main_port, "CREATE TABLE t(key int primary key, value text)") == ""
    cluster.psql(main_port, "insert into t values(1,1)")
    assert cluster.psql(main_port, "select * from t") == "1|1"

    out = cluster.run("timeline", "branch", "--branch-name", "migration_check")
    m = re.fullmatch(
        rf"Created timeline '({ID})' at Lsn ({LSN}) for tenant: {tenant}\. Ancestor timeline: 'main'\n", out)
    assert m, out
    branch_tl, branch_lsn = m[1], m[2]
    assert cluster.run("timeline", "list") == (
        f"(L) main [{main_tl}]\n"
        f"(L) ┗━ @{branch_lsn}: migration_check [{branch_tl}]\n"
    )

    assert cluster.run("endpoint", "create", "migration_check", "--branch-name", "migration_check") == ""
    branch_port = start_port(cluster.run("endpoint", "start", "migration_check"), "migration_check", branch_tl)
    assert branch_port == main_port + 2  # main's compute_ctl has main_port + 1
    eps = cluster.endpoints()
    assert list(eps) == ["main", "migration_check"]
    assert eps["migration_check"][:3] == [f"127.0.0.1:{branch_port}", branch_tl, "migration_check"]
    assert lsn_int(eps["migration_check"][3]) >= lsn_int(branch_lsn)
    assert [e[4] for e in eps.values()] == ["running", "running"]

    # The branch has main's data; its changes stay on the branch.
    assert cluster.psql(branch_port, "select * from t") == "1|1"
    cluster.psql(branch_port, "insert into t values(2,2)")
    assert cluster.psql(main_port, "select * from t") == "1|1"
    assert cluster.psql(branch_port, "select * from t order by key") == "1|1\n2|2"

    # `stop` leaves nothing running: daemons, compute_ctls, postgres.
    session = nl.session("compute")
    postmasters = [session.get(f"http://127.0.0.1:{port + 1}/status", timeout=5).json()["postgres_pid"]
                   for port in (main_port, branch_port)]
    pids = nl.pids()
    # broker, pageserver, safekeepers, control plane, proxy, two compute_ctls
    assert len(pids) == 6 + safekeepers
    assert all(pid_alive(p) for p in postmasters)
    out = cluster.run("stop")
    assert "Stopped endpoint main" in out and "Stopped endpoint migration_check" in out
    assert not [p for p in pids + postmasters if pid_alive(p)]
    assert nl.pid_files() == [] and nl.postmaster_pids() == []
    assert [e[4] for e in cluster.endpoints().values()] == ["stopped", "stopped"]

    # Everything comes back after a restart, from the storage.
    cluster.run("start")
    cluster.run("endpoint", "start", "main")
    assert cluster.psql(main_port, "select * from t") == "1|1"
    cluster.run("endpoint", "stop", "main", "--destroy")
    assert list(cluster.endpoints()) == ["migration_check"]
    cluster.run("stop")


def size_bytes(text: str) -> float:
    """`status`'s sizes ("812 B", "7.6 MiB") in bytes."""
    number, unit = text.split()
    return float(number) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB", "PiB"].index(unit)


def test_status(cluster: Cluster):
    """`status`: every tenant's branches with their parents, sizes and
    endpoints in one table, and a size line per tenant."""
    cluster.run("start")
    cluster.run("tenant", "create", "--set-default")
    cluster.run("endpoint", "create", "main")
    port = start_port_of(cluster.run("endpoint", "start", "main"))
    cluster.psql(port, "CREATE TABLE t AS SELECT g FROM generate_series(1, 200000) g")
    # At the end of main's WAL (neon_local waits for the pageserver to have it).
    cluster.run("timeline", "branch", "--branch-name", "heikki")
    other = re.search(rf"tenant ({ID})", cluster.run("tenant", "create"))[1]
    default = next(line.split()[0] for line in cluster.run("tenant", "list").splitlines() if "(default)" in line)

    lines = cluster.run("status").splitlines()
    header = re.split(r"\s{2,}", lines[0])
    assert header == ["TENANT", "BRANCH", "PARENT", "LAST LSN", "LOGICAL SIZE", "PHYSICAL SIZE", "ENDPOINTS"], lines
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:4]]
    tenant_ids = sorted([default, other])
    by_branch = {}
    for row in rows:
        # The first row of a tenant starts with it; the others are indented.
        if re.fullmatch(rf"{ID}( \(default\))?", row[0]):
            tenant, row = row[0].split()[0], row[1:]
        by_branch[(tenant, row[0])] = row
    assert set(by_branch) == {(default, "main"), (default, "heikki"), (other, "main")}, lines
    main, heikki, other_main = by_branch[(default, "main")], by_branch[(default, "heikki")], by_branch[(other, "main")]
    assert main[1] == "-" and main[5] == "main (running)", main
    assert re.fullmatch(rf"main@{LSN}", heikki[1]) and heikki[5] == "-", heikki
    assert other_main[5] == "-", other_main
    # 200,000 int rows are about 7 MB of heap: the logical size says so, on
    # the branch too (its parent's data as of the branch point).
    assert size_bytes(main[3]) > 7e6 and size_bytes(heikki[3]) > 7e6, lines
    assert size_bytes(main[3]) > size_bytes(other_main[3]) + 6e6, lines
    assert lines[1].startswith(tenant_ids[0]) and "(default)" in "".join(lines[1:4]), lines
    totals = [line for line in lines if line.startswith("tenant ")]
    assert totals == [
        f"tenant {tenant_ids[0]}: {2 if tenant_ids[0] == default else 1} branch{'es' if tenant_ids[0] == default else ''}, "
        + totals[0].split(", ", 1)[1],
        f"tenant {tenant_ids[1]}: {2 if tenant_ids[1] == default else 1} branch{'es' if tenant_ids[1] == default else ''}, "
        + totals[1].split(", ", 1)[1],
    ], totals
    cluster.run("stop")


def test_timeline_delete(cluster: Cluster):
    """`timeline delete`: refused while the branch has children or a
    running endpoint, naming them, with nothing changed; then the branch,
    its stopped endpoints and its data on the pageserver and the
    safekeeper are gone, and the name can be used again."""
    cluster.run("start")
    cluster.run("tenant", "create", "--set-default")
    cluster.run("endpoint", "create", "main")
    main_port = start_port_of(cluster.run("endpoint", "start", "main"))
    cluster.psql(main_port, "CREATE TABLE t AS SELECT 1 AS x")
    cluster.run("timeline", "branch", "--branch-name", "a")
    cluster.run("timeline", "branch", "--branch-name", "b", "--ancestor-branch-name", "a")
    cluster.run("endpoint", "create", "ea", "--branch-name", "a")
    cluster.run("endpoint", "start", "ea")
    cluster.run("endpoint", "create", "eb", "--branch-name", "b")  # never started

    def timelines() -> str:
        return cluster.run("timeline", "list")

    before = timelines()
    refused = cluster.fail("timeline", "delete", "--branch-name", "a")
    assert "has children (b)" in refused, refused
    assert timelines() == before
    out = cluster.run("timeline", "delete", "--branch-name", "b")
    assert out == "deleted endpoint 'eb'\ndeleted branch 'b' (timeline " + out.split("(timeline ")[1], out
    b_timeline = out.split("(timeline ")[1].rstrip(")\n")
    assert " b [" not in timelines() and "eb" not in cluster.endpoints()
    refused = cluster.fail("timeline", "delete", "--branch-name", "a")
    assert "endpoint 'ea' is running" in refused and "endpoint stop ea" in refused, refused
    assert "ea" in cluster.endpoints() and " a [" in timelines()
    cluster.run("endpoint", "stop", "ea")
    tenant = next(line.split()[0] for line in cluster.run("tenant", "list").splitlines() if "(default)" in line)
    nl = cluster.nl
    session = nl.session()

    def status(daemon: str, timeline: str) -> int:
        url = f"http://{nl.http[daemon]}/v1/tenant/{tenant}/timeline/{timeline}"
        return session.get(url, timeout=10).status_code

    a_timeline = re.search(rf" a \[({ID})\]", timelines())[1]
    # ea ran on a: the safekeeper has its WAL, until the deletion.
    assert status("safekeeper 1", a_timeline) == 200 and status("pageserver 1", a_timeline) == 200
    out = cluster.run("timeline", "delete", "--branch-name", "a")
    assert out == f"deleted endpoint 'ea'\ndeleted branch 'a' (timeline {a_timeline})\n", out
    assert [line for line in timelines().splitlines()] == [timelines().splitlines()[0]], timelines()
    assert list(cluster.endpoints()) == ["main"]
    # Gone from the pageserver and the safekeeper too.
    for daemon in ("pageserver 1", "safekeeper 1"):
        for timeline in (a_timeline, b_timeline):
            assert status(daemon, timeline) == 404, (daemon, timeline)
    assert "no branch named 'a'" in cluster.fail("timeline", "delete", "--branch-name", "a")
    # The name is free again, and main never noticed.
    cluster.run("timeline", "branch", "--branch-name", "a")
    assert cluster.psql(main_port, "SELECT x FROM t") == "1"
    cluster.run("stop")


def test_timeline_reset(cluster: Cluster):
    """`timeline reset`: the branch starts again from its parent's end,
    its stopped endpoint follows and sees the parent's newest data (not
    its own writes); refused without a parent, with children or a running
    endpoint, with nothing changed."""
    cluster.run("start")
    cluster.run("tenant", "create", "--set-default")
    cluster.run("endpoint", "create", "main")
    main_port = start_port_of(cluster.run("endpoint", "start", "main"))
    cluster.psql(main_port, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
    cluster.run("timeline", "branch", "--branch-name", "dev")
    cluster.run("endpoint", "create", "edev", "--branch-name", "dev")
    dev_port = start_port_of(cluster.run("endpoint", "start", "edev"))
    cluster.psql(dev_port, "INSERT INTO t VALUES (100)")   # only on dev
    cluster.psql(main_port, "INSERT INTO t VALUES (2)")    # after the branch point
    assert cluster.psql(dev_port, "SELECT array_agg(x ORDER BY x) FROM t") == "{1,100}"

    assert "no parent" in cluster.fail("timeline", "reset", "--branch-name", "main")
    before = cluster.run("timeline", "list")
    refused = cluster.fail("timeline", "reset", "--branch-name", "dev")
    assert "endpoint 'edev' is running" in refused, refused
    cluster.run("timeline", "branch", "--branch-name", "feature", "--ancestor-branch-name", "dev")
    cluster.run("endpoint", "stop", "edev")
    assert "has children (feature)" in cluster.fail("timeline", "reset", "--branch-name", "dev")
    cluster.run("timeline", "delete", "--branch-name", "feature")
    assert cluster.run("timeline", "list") == before

    out = cluster.run("timeline", "reset", "--branch-name", "dev")
    m = re.fullmatch(rf"reset branch 'dev' to 'main' at {LSN} \(timeline ({ID}) replaces ({ID})\)\n", out)
    assert m, out
    new_timeline, old_timeline = m[1], m[2]
    assert f"dev [{new_timeline}]" in cluster.run("timeline", "list")
    eps = cluster.endpoints()
    assert eps["edev"][1] == new_timeline, eps
    dev_port = start_port_of(cluster.run("endpoint", "start", "edev"))
    assert cluster.psql(dev_port, "SELECT array_agg(x ORDER BY x) FROM t") == "{1,2}"
    # The old timeline is gone from the pageserver.
    tenant = next(line.split()[0] for line in cluster.run("tenant", "list").splitlines() if "(default)" in line)
    url = f"http://{cluster.nl.http['pageserver 1']}/v1/tenant/{tenant}/timeline/{old_timeline}"
    assert cluster.nl.session().get(url, timeout=10).status_code == 404
    cluster.run("stop")


def start_port_of(output: str) -> int:
    m = re.search(r"Starting postgres at 'postgresql://cloud_admin@127\.0\.0\.1:(\d+)/postgres'", output)
    assert m, output
    return int(m[1])


def test_time_travel(cluster: Cluster):
    """A read-only endpoint at an LSN sees the branch as of that LSN and
    refuses writes, whatever the session sets."""
    cluster.run("start")
    cluster.run("tenant", "create", "--set-default")
    cluster.run("endpoint", "create", "main")
    cluster.run("endpoint", "start", "main")
    port = int(cluster.endpoints()["main"][0].split(":")[1])
    cluster.psql(port, "CREATE TABLE t(key int primary key)")
    points = []
    for i in range(1, 4):
        cluster.psql(port, f"INSERT INTO t SELECT generate_series({(i - 1) * 10 + 1}, {i * 10})")
        points.append((cluster.psql(port, "SELECT pg_current_wal_flush_lsn()"), i * 10))

    for n, (lsn, rows) in enumerate(points):
        name = f"past{n}"
        cluster.run("endpoint", "create", name, "--lsn", lsn)
        out = cluster.run("endpoint", "start", name)
        assert f"(read-only at {lsn})" in out, out
        past = int(re.search(r"127\.0\.0\.1:(\d+)/postgres", out)[1])
        assert cluster.psql(past, "SELECT count(*), max(key) FROM t") == f"{rows}|{rows}"
        ep = cluster.endpoints()[name]
        assert ep[3] == lsn and ep[4] == "running"
        for sql in [
            "INSERT INTO t VALUES (1000)",
            "SET default_transaction_read_only = off; INSERT INTO t VALUES (1000)",
            "BEGIN READ WRITE; INSERT INTO t VALUES (1000); COMMIT",
            "CREATE TABLE u(x int)",
        ]:
            result = cluster.psql(past, sql, check=False)
            assert result.returncode != 0
            assert "read-only" in result.stderr or "recovery" in result.stderr, result.stderr
        cluster.run("endpoint", "stop", name)

    # main went on meanwhile.
    assert cluster.psql(port, "SELECT count(*) FROM t") == "30"

    # An LSN beyond the end of the branch is refused, creating nothing.
    before = cluster.repo_files()
    err = cluster.fail("endpoint", "create", "future", "--lsn", "FF/0")
    assert err.startswith("error: --lsn FF/0 is beyond the end of branch 'main' ("), err
    assert cluster.repo_files() == before
    cluster.run("stop")


def test_errors(cluster: Cluster):
    """Each mistake gets one line, a non-zero exit and no partial state."""
    cluster.run("start")
    out = cluster.run("tenant", "create", "--set-default")
    tenant = re.search(rf"tenant ({ID})", out)[1]
    cluster.run("endpoint", "create", "main")
    port = int(cluster.endpoints()["main"][0].split(":")[1])
    before = cluster.repo_files()

    # Unknown branch.
    err = cluster.fail("endpoint", "create", "ep", "--branch-name", "nope")
    assert err == f"error: tenant {tenant} has no branch named 'nope' (it has main)"
    err = cluster.fail("timeline", "branch", "--branch-name", "b", "--ancestor-branch-name", "nope")
    assert err == f"error: tenant {tenant} has no branch named 'nope' (it has main)"
    # Duplicates.
    assert cluster.fail("endpoint", "create", "main") == "error: endpoint 'main' already exists"
    assert cluster.fail("timeline", "branch", "--branch-name", "main").startswith(
        f"error: branch 'main' already exists in tenant {tenant}")
    err = cluster.fail("endpoint", "create", "ep", "--pg-port", str(port + 1))
    assert err == f"error: --pg-port {port + 1} is already used by endpoint 'main'"
    assert cluster.fail("endpoint", "create", "bad/name").startswith("error: invalid endpoint name 'bad/name'")
    assert cluster.repo_files() == before

    # Port already in use.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        err = cluster.fail("endpoint", "start", "main")
    assert err == f"error: cannot start endpoint 'main': port {port} (postgres) is already in use"
    assert len(cluster.nl.pids()) == 5 and cluster.nl.postmaster_pids() == []

    # Starting twice.
    cluster.run("endpoint", "start", "main")
    pids = cluster.nl.pids()
    err = cluster.fail("endpoint", "start", "main")
    assert re.fullmatch(r"error: endpoint 'main' is already running \(compute_ctl pid \d+\)", err), err
    assert cluster.nl.pids() == pids
    # A second read-write endpoint on the same branch would fence the first.
    cluster.run("endpoint", "create", "second")
    err = cluster.fail("endpoint", "start", "second")
    assert err.startswith("error: endpoint 'main' already runs read-write on timeline "), err
    assert cluster.psql(port, "SELECT 1") == "1"
    cluster.run("endpoint", "stop", "main")
    cluster.run("endpoint", "stop", "second", "--destroy")

    # PostgreSQL not found, a compute_ctl binary missing: the repository's
    # config names them.
    config = cluster.nl.repo_dir / "config"
    good = config.read_text()
    config.write_text(re.sub(r'(?m)^pg_bin_dir = ".*"$', 'pg_bin_dir = "/nonexistent/pg"', good))
    err = cluster.fail("endpoint", "start", "main")
    assert err.startswith("error: PostgreSQL not found: /nonexistent/pg/postgres does not exist"), err
    config.write_text(re.sub(r'(?m)^compute_ctl = ".*"$', 'compute_ctl = "/nonexistent/compute_ctl"', good))
    err = cluster.fail("endpoint", "start", "main")
    assert err == "error: /nonexistent/compute_ctl not found: build the daemons with `cargo build --bins`"
    assert len(cluster.nl.pids()) == 5 and cluster.nl.postmaster_pids() == []
    config.write_text(good)

    # A daemon binary missing: nothing starts.
    cluster.run("stop")
    config.write_text(re.sub(r'(?m)^pageserver = ".*"$', 'pageserver = "/nonexistent/pageserver"', good))
    err = cluster.fail("start")
    assert err == "error: /nonexistent/pageserver not found: build the daemons with `cargo build --bins`"
    assert cluster.nl.pid_files() == []
    config.write_text(good)
    cluster.run("start")
    cluster.run("endpoint", "start", "main")
    assert cluster.endpoints()["main"][4] == "running"
    cluster.run("stop")
    assert cluster.nl.pid_files() == [] and cluster.nl.postmaster_pids() == []
