"""Backpressure: while the pageserver lags the safekeepers' commit LSN by
more than the endpoint's bound, commits wait; the lag stays bounded, and
the throttle shows in compute_ctl's /status and /metrics and in
`endpoint list`. Once the pageserver catches up, commits flow again."""

from __future__ import annotations

import os
import re
import signal
import subprocess

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import started_endpoint_port
from fixtures.pg import PgBin
from fixtures.utils import metric_value, wait_until

BOUND = 16 * 1024 * 1024
# Each transaction writes about 1 MB of WAL; 100 of them far pass the bound.
TRANSACTIONS = 100
TRANSACTION = "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 1000) g;"


def endpoint_status(nl, name: str) -> str:
    for line in nl.run("endpoint", "list").stdout.splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == name:
            return cells[-1]
    raise AssertionError(f"no endpoint {name}")


def test_commits_wait_for_a_lagging_pageserver(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    neon_env_builder.num_safekeepers = 1
    nl = neon_env_builder.neon_local()
    nl.run("start")
    nl.run("tenant", "create", "--set-default")
    nl.run("endpoint", "create", "main", "--max-pageserver-lag", str(BOUND))
    port = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    psql = [pg_bin.path("psql"), "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
            "-U", "cloud_admin", "postgres"]
    subprocess.run(psql + ["-c", "CREATE TABLE t (i int, txt text)"], check=True, capture_output=True)
    conf = (nl.repo_dir / "endpoints" / "main" / "endpoint.toml").read_text()
    http_port = re.search(r"^http_port = (\d+)", conf, re.M)[1]
    base = f"http://127.0.0.1:{http_port}"
    session = nl.session()  # an admin token: /metrics too

    def commits() -> dict:
        return session.get(f"{base}/status", timeout=10).json()["commits"]

    # The pageserver has reported; nothing is held back.
    state = wait_until("a pageserver report", lambda: (c := commits())["pageserver_lsn"] and c, 30)
    assert state["max_pageserver_lag_bytes"] == BOUND and not state["throttled"]

    [pid_file] = [p for p in nl.pid_files() if p.name == "pageserver.pid"]
    pageserver_pid = int(pid_file.read_text().split()[0])
    os.kill(pageserver_pid, signal.SIGSTOP)
    try:
        script = nl.repo_dir / "load.sql"
        script.write_text("\n".join([TRANSACTION] * TRANSACTIONS))
        load = subprocess.Popen(psql + ["-f", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        state = wait_until("commits to be held back", lambda: (c := commits())["throttled"] and c, 120)
        status = wait_until("endpoint list to show the throttle",
                            lambda: (s := endpoint_status(nl, "main")).startswith("running (throttled") and s, 30)
        assert re.fullmatch(r"running \(throttled: pageserver \d+ MiB behind\)", status), status
        assert load.poll() is None, "the load finished while the pageserver was stopped"
        # Committed WAL stays within the bound (plus the transaction that
        # crossed it) of what the pageserver has.
        committed = lsn_int(state["commit_lsn"])
        lag = committed - lsn_int(state["pageserver_lsn"])
        assert lag <= BOUND + 2 * 1024 * 1024, f"lag {lag} over the bound {BOUND}"
        metrics = session.get(f"{base}/metrics", timeout=10).text
        assert metric_value(metrics, "compute_walproposer_backpressure_throttling") == 1
        assert metric_value(metrics, "compute_walproposer_backpressure_max_lag_bytes") == BOUND
        assert metric_value(metrics, "compute_walproposer_pageserver_lag_bytes") > BOUND
    finally:
        os.kill(pageserver_pid, signal.SIGCONT)

    _, err = load.communicate(timeout=300)
    assert load.returncode == 0, err
    rows = subprocess.run(psql + ["-c", "SELECT count(*) FROM t"], check=True, capture_output=True, text=True)
    assert rows.stdout.strip() == str(TRANSACTIONS * 1000)
    state = wait_until("the throttle to end", lambda: not (c := commits())["throttled"] and c, 60)
    assert state["throttled_seconds"] > 0
    assert endpoint_status(nl, "main") == "running"
    metrics = session.get(f"{base}/metrics", timeout=10).text
    assert metric_value(metrics, "compute_walproposer_backpressure_throttled_seconds") > 0
    nl.run("stop")
