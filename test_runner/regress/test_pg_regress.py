"""PostgreSQL's own regression suite against an endpoint.

The suite is src/test/regress of the Debian source of the installed
postgresql-15, with the C libraries it loads (regress.so, and refint.so
and autoinc.so of contrib/spi) built against the server's headers;
scripts/install-deps.sh fetches and builds them (scripts/fetch-pg-regress.sh)
into ``$PG_REGRESS_CACHE/<server version>/`` (default
/var/cache/neon-pg-regress/15.18/ for 15.18), readable by the PostgreSQL OS
user: the server reads the suite's data files (COPY FROM server files) and
loads the libraries from there.

`pg_regress --use-existing` runs the parallel schedule, as `make
installcheck-parallel` would, against a compute on three safekeepers and a
pageserver: every test must pass as on vanilla PostgreSQL. With
``--use-existing`` pg_regress neither drops nor creates its database; the
test creates it as pg_regress would (``create_regression_database``). The
results and regression.diffs stay in ``pg_regress/`` of the test's output
directory.

Then the endpoint stops and starts again (from the pageserver's base
backup): the first query must succeed within 30 s of the stop, and the
suite's data must be there: per table row counts and row hashes, and
tenk1 and onek whole. Unlogged tables are left out: a compute starts from
their init fork, empty (docs/pageserver.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import NeonLocal, started_endpoint_port
from fixtures.pg import PgBin, pg_os_user
from fixtures.utils import wait_until

SUITE_CACHE = Path(os.environ.get("PG_REGRESS_CACHE", "/var/cache/neon-pg-regress"))
DATABASE = "regression"
RESTART_LIMIT = 30.0
# pg_regress runs at most this many tests at once (as installcheck-parallel).
MAX_CONCURRENT = 20

# Per ordinary, logged table of the suite: "rows:sum of the hashes of the
# rows' text" (one query: query_to_xml runs the per-table query).
TABLE_FACTS = """
SELECT format('%I.%I', n.nspname, c.relname),
       (xpath('/row/f/text()', query_to_xml(format(
           'SELECT count(*) || '':'' || coalesce(sum(hashtext(x::text)), 0) AS f FROM %I.%I x',
           n.nspname, c.relname), false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
ORDER BY 1
"""


def suite_dir(pg_bin: PgBin) -> Path:
    """The regression suite of the installed server's version."""
    out = pg_bin.run(["postgres", "--version"], as_pg_user=False).stdout
    version = re.search(r"PostgreSQL\) (\d+\.\d+)", out)[1]
    path = SUITE_CACHE / version
    needed = ("parallel_schedule", "sql", "expected", "data", "regress.so", "refint.so", "autoinc.so")
    missing = [name for name in needed if not (path / name).exists()]
    if missing:
        pytest.fail(f"PostgreSQL {version}'s regression suite is not in {path} (missing: {', '.join(missing)}): "
                    f"run scripts/install-deps.sh (it fetches the suite with scripts/fetch-pg-regress.sh)")
    return path


def pg_regress_binary(pg_bin: PgBin) -> str:
    """Debian's pg_regress (package postgresql-client-15), beside PGXS."""
    pgxs = Path(pg_bin.run(["pg_config", "--pgxs"], as_pg_user=False).stdout.strip())
    return str(pgxs.parents[1] / "test" / "regress" / "pg_regress")


def psql(pg_bin: PgBin, port: int, *sql: str, dbname: str = DATABASE, timeout: float = 300) -> str:
    """Run each of ``sql`` (one transaction each) with psql; return the
    unaligned, tuples-only output."""
    args = ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
            "-U", "cloud_admin", dbname]
    for statement in sql:
        args += ["-c", statement]
    return pg_bin.run(args, as_pg_user=False, timeout=timeout).stdout.strip()


def create_regression_database(pg_bin: PgBin, port: int) -> None:
    """What pg_regress does without --use-existing (create_database in
    pg_regress.c): from template0, with the database settings the
    expected output assumes."""
    settings = {"lc_messages": "C", "lc_monetary": "C", "lc_numeric": "C", "lc_time": "C",
                "bytea_output": "hex", "timezone_abbreviations": "Default"}
    psql(pg_bin, port, f"CREATE DATABASE {DATABASE} TEMPLATE=template0",
         *(f"ALTER DATABASE {DATABASE} SET {name} TO '{value}'" for name, value in settings.items()),
         dbname="postgres")


def run_pg_regress(pg_bin: PgBin, port: int, suite: Path, outdir: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The parallel schedule against the server on ``port``, as the
    PostgreSQL OS user (the server writes into ``outdir``/results: COPY TO
    and lo_export of the suite). Returns pg_regress's result and its
    wall time."""
    cmd = [pg_regress_binary(pg_bin), "--use-existing", "--host=127.0.0.1", f"--port={port}",
           "--user=cloud_admin", f"--dbname={DATABASE}", f"--bindir={pg_bin.bindir}",
           f"--inputdir={suite}", f"--outputdir={outdir}", f"--dlpath={suite}",
           f"--schedule={suite / 'parallel_schedule'}", f"--max-concurrent-tests={MAX_CONCURRENT}"]
    start = time.monotonic()
    result = subprocess.run(["runuser", "-u", user, "--", *cmd] if (user := pg_os_user()) else cmd,
                            capture_output=True, text=True, timeout=1500)
    return result, time.monotonic() - start


def failure_report(result: subprocess.CompletedProcess, outdir: Path) -> str:
    """The failed tests and the start of regression.diffs."""
    failed = re.findall(r"^\s*(?:test\s+)?(\S+)\s+\.\.\. (?:FAILED|failed)", result.stdout, re.M)
    diffs = outdir / "regression.diffs"
    head = "\n".join(diffs.read_text(errors="replace").splitlines()[:200]) if diffs.exists() else "(no diffs)"
    return (f"pg_regress exited {result.returncode}; failed: {', '.join(failed) or '?'}\n"
            f"stdout (end):\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}\n"
            f"{diffs} (first 200 lines):\n{head}")


def data_facts(pg_bin: PgBin, port: int) -> dict[str, str]:
    """What the suite left: tenk1 and onek whole (md5 of their rows in
    order), and rows and row hashes of every logged table."""
    facts = {}
    for table in ("tenk1", "onek"):
        facts[f"{table} md5"] = psql(
            pg_bin, port, f"SELECT count(*) || ':' || md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {table} t")
    for line in psql(pg_bin, port, TABLE_FACTS).splitlines():
        name, value = line.split("|", 1)
        facts[name] = value
    return facts


def pageserver_lsn(nl: NeonLocal) -> int:
    """The last WAL record the pageserver has of the endpoint's timeline."""
    conf = (nl.repo_dir / "endpoints" / "main" / "endpoint.toml").read_text()
    tenant, timeline = (re.search(rf'^{key} = "(\w+)"', conf, re.M)[1] for key in ("tenant_id", "timeline_id"))
    url = f"http://{nl.http['pageserver 1']}/v1/tenant/{tenant}/timeline/{timeline}"
    return lsn_int(nl.session(tenant_id=tenant).get(url, timeout=30).json()["last_record_lsn"])


def fact_summary(facts: dict[str, str]) -> str:
    tables = [v for k, v in facts.items() if not k.endswith(" md5")]
    return f"{len(tables)} tables, {sum(int(v.split(':')[0]) for v in tables)} rows"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_pg_regress(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin, test_output_dir: Path, report_figure):
    suite = suite_dir(pg_bin)
    nl = neon_env_builder.neon_local()
    nl.run("start")
    nl.run("tenant", "create", "--set-default")
    nl.run("endpoint", "create", "main")
    port = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    # Endpoints take initdb's max_connections (100; neon_local sets no
    # settings): room for the schedule's 20 sessions and compute_ctl's.
    max_connections = int(psql(pg_bin, port, "SHOW max_connections", dbname="postgres"))
    assert max_connections >= MAX_CONCURRENT + 10, f"max_connections {max_connections}"
    create_regression_database(pg_bin, port)

    outdir = test_output_dir / "pg_regress"
    result, seconds = run_pg_regress(pg_bin, port, suite, outdir)
    (test_output_dir / "pg_regress.stdout").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, failure_report(result, outdir)
    passed = re.search(r"All (\d+) tests passed", result.stdout)
    report_figure(f"pg_regress: {passed[1] if passed else '?'} tests of the parallel schedule passed "
                  f"on an endpoint in {seconds:.0f} s")

    before = data_facts(pg_bin, port)
    # How far the pageserver is behind: a start waits (120 s at most) for
    # it to have the WAL up to where the safekeepers' WAL ends
    # (docs/compute.md).
    end = lsn_int(psql(pg_bin, port, "SELECT pg_current_wal_flush_lsn()"))
    behind = f"the pageserver {(end - pageserver_lsn(nl)) / 2**20:.0f} MiB of WAL behind at the stop"
    start = time.monotonic()
    nl.run("endpoint", "stop", "main")
    started = nl.run("endpoint", "start", "main", check=False, timeout=300)
    failed_start = None
    if started.returncode != 0:
        # Still check the data once the pageserver has caught up; the test
        # fails below with what happened.
        failed_start = f"{time.monotonic() - start:.0f} s after the stop: {started.stderr.splitlines()[-1]}"
        wait_until("the pageserver to catch up", lambda: pageserver_lsn(nl) >= end, 1200, interval=5)
        caught_up = time.monotonic() - start
        started = nl.run("endpoint", "start", "main", check=False, timeout=300)
        failed_start += f"; the pageserver caught up {caught_up:.0f} s after the stop, then the start "
        failed_start += (f"took {time.monotonic() - start - caught_up:.0f} s" if started.returncode == 0
                         else f"failed too: {started.stderr.splitlines()[-1]}")
        assert started.returncode == 0, f"the endpoint did not start again ({behind}): {failed_start}"
    port = started_endpoint_port(started.stdout)
    wait_until("a query after the restart", lambda: psql(pg_bin, port, "SELECT 1", timeout=30) == "1",
               RESTART_LIMIT)
    restart = time.monotonic() - start
    report_figure(f"pg_regress: endpoint stop to first query {restart:.1f} s, {behind} "
                  f"({fact_summary(before)}){'; the first start failed ' + failed_start if failed_start else ''}")

    after = data_facts(pg_bin, port)
    differ = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not differ, f"after the restart ({len(differ)} of {len(before)} differ): {sorted(differ.items())[:20]}"
    assert failed_start is None, f"the endpoint did not start again ({behind}): {failed_start}"
    assert restart <= RESTART_LIMIT, f"stop to first query took {restart:.1f} s ({behind})"
    nl.run("stop")
