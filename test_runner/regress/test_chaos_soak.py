"""Chaos soak: the whole system under load while its daemons are SIGKILLed
one after another, then checked for lost commits, corruption, divergence
between computes and stuck daemons.

A neon_local cluster (broker, pageserver, three safekeepers, control
plane, proxy, one endpoint run by compute_ctl), the pageserver's layers in
an S3 server (moto behind a relay that can be cut). For ``SOAK_SECONDS``
(default 90; `make soak` runs 1800) three things run at once:

* pgbench bursts through the proxy (a new burst after each lost
  connection);
* a ledger writer inserting numbered rows, one autocommit transaction
  each, straight into the compute, remembering which commits were
  acknowledged;
* a chaos schedule seeded by ``SOAK_SEED`` (random by default; printed,
  and in every failure message): SIGKILL a safekeeper, the pageserver, the
  storage broker, compute_ctl, postgres, the proxy or the control plane
  and restart it (or the endpoint), or cut the object store for a while;
  a safekeeper may stay down (and the object store cut) while other
  faults go on.

Then: every daemon answers, a commit returns in time, no acknowledged
ledger row is missing (and none appeared that was never sent or was
refused), pgbench's balances agree, pg_amcheck --heapallindexed is clean,
and after the pageserver uploaded everything, a pageserver on an empty
directory attached from remote storage serves, at the same LSN, exactly
what the live compute showed.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from fixtures.chaos import (ENDPOINT, FAULTS, NUM_SAFEKEEPERS, REMOTE_PREFIX, BALANCE_SQL, TABLES, ChaosSchedule,
                            Ledger, PgbenchLoop, SoakCluster)
from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.pg import PgBin
from fixtures.remote_storage import S3Server
from fixtures.utils import run_checked, wait_until

SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "90"))
PGBENCH_SCALE = int(os.environ.get("SOAK_PGBENCH_SCALE", "2"))
# Seconds every daemon has to answer its status endpoint at the end, and a
# final commit to return.
STATUS_DEADLINE = 30
COMMIT_DEADLINE = 30


@pytest.fixture
def soak_cluster(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin, monkeypatch: pytest.MonkeyPatch):
    builder = neon_env_builder
    builder.num_safekeepers = NUM_SAFEKEEPERS
    s3 = S3Server(builder.ports, builder.out)
    try:
        # neon_local's daemons inherit its environment: the S3 credentials.
        for key, value in S3Server.environment().items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        nl = builder.neon_local(init=False)
        SoakCluster.configure(nl, s3)
        nl.run("init", "--config", nl.config_path, "--num-safekeepers", str(NUM_SAFEKEEPERS))
        yield SoakCluster(nl, s3, pg_bin, builder.ports)
    finally:
        s3.relay.restore()
        builder.cleanup()  # the daemons go before the object store
        s3.stop()


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 900)
def test_chaos_soak(soak_cluster: SoakCluster, report_figure):
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos soak: SOAK_SEED={seed} SOAK_SECONDS={SOAK_SECONDS}", flush=True)
    c = soak_cluster
    try:
        soak(c, seed, report_figure)
    except (AssertionError, TimeoutError) as e:
        faults = "\n".join(c.fault_log[-30:])
        raise AssertionError(f"chaos soak failed with SOAK_SEED={seed} (rerun with it): {e}\n"
                             f"last faults:\n{faults}\ndaemon logs are in {c.nl.repo_dir}") from e


def soak(c: SoakCluster, seed: int, report_figure) -> None:
    c.setup(PGBENCH_SCALE)

    stop = threading.Event()
    ledger = Ledger(c.pg_port, stop)
    pgbench = PgbenchLoop(c.pg_bin.path("pgbench"), c.proxy_conninfo(), stop, c.nl.repo_dir.parent / "pgbench.log")
    started = time.monotonic()
    schedule = ChaosSchedule(c, random.Random(seed), started + SOAK_SECONDS)
    c.fault_log = schedule.log
    ledger.start()
    pgbench.start()
    try:
        schedule.run()
    finally:
        stop.set()
        c.s3.relay.restore()
        ledger.join(COMMIT_DEADLINE + 10)
        pgbench.join(pgbench.seconds + 130)
    duration = time.monotonic() - started
    assert not ledger.is_alive() and not pgbench.is_alive(), "a load thread did not stop"
    assert ledger.error is None, f"the ledger writer failed: {ledger.error!r}"
    assert pgbench.error is None, f"the pgbench loop failed: {pgbench.error!r}"

    # No daemon stuck: every one runs and answers in time.
    assert c.all_running() == [], f"not running after the soak: {c.all_running()}"
    for name in c.daemon_names():
        wait_until(f"{name} to answer /v1/status", lambda: c.status(name), STATUS_DEADLINE)
    wait_until(f"compute {ENDPOINT} to be running", lambda: c.compute_status() == "running", STATUS_DEADLINE)

    # A commit returns in time.
    def final_commit() -> bool:
        n = ledger.next_id
        conn = ledger.connect()
        if conn is None:
            return False
        try:
            ledger.insert_one(conn)
        finally:
            conn.close()
        return n in ledger.acked

    commit_started = time.monotonic()
    wait_until("a final commit", final_commit, COMMIT_DEADLINE)
    final_commit_seconds = time.monotonic() - commit_started

    # Every acknowledged row is there; none that was refused or never sent.
    present = {int(x) for x in c.psql("SELECT id FROM ledger").split()}
    lost = sorted(ledger.acked - present)
    phantom = sorted(present - ledger.acked - ledger.in_doubt)
    in_doubt_present = len(ledger.in_doubt & present)

    applied = ", ".join(f"{kind} {schedule.applied[kind]}" for kind in FAULTS)
    figures = [
        f"chaos soak: seed {seed}, {duration:.0f} s, {sum(schedule.applied.values())} faults ({applied})",
        f"chaos soak: ledger commits acknowledged {len(ledger.acked)}, in doubt {len(ledger.in_doubt)} "
        f"({in_doubt_present} present), refused {len(ledger.refused)}, lost {len(lost)}, "
        f"connections {ledger.connects}, slowest acknowledged commit {ledger.max_commit_seconds:.1f} s, "
        f"final commit {final_commit_seconds:.2f} s",
        f"chaos soak: pgbench transactions {pgbench.transactions} (failed {pgbench.failed}) in {pgbench.bursts} "
        f"bursts, {pgbench.aborted} cut short, {pgbench.hung} hung",
    ]
    for line in figures:
        print(line, flush=True)
        report_figure(line)
    for error, count in ledger.errors.most_common():
        print(f"ledger: {count} x {error}", flush=True)
    assert not lost, f"{len(lost)} acknowledged commits lost: ids {lost[:50]}"
    assert not phantom, f"rows never acknowledged nor in doubt are present (refused or never sent): {phantom[:50]}"
    assert pgbench.hung == 0, f"{pgbench.hung} pgbench bursts ran 120 s past their end"

    # pgbench's transactions are atomic: the balances still agree.
    balance = c.psql(BALANCE_SQL).split("|")
    assert len(set(balance)) == 1, f"pgbench balances disagree (accounts, branches, tellers, history): {balance}"

    # No corruption the amcheck extension can see.
    amcheck = run_checked([c.pg_bin.path("pg_amcheck"), "--heapallindexed", "-h", "127.0.0.1", "-p",
                           str(c.pg_port), "-U", "cloud_admin", "-d", "postgres"], timeout=900)
    assert amcheck.stdout.strip() == "", amcheck.stdout

    # The live data, and where the WAL ends with it.
    live = c.digest()
    lsn = c.flush_lsn()
    print(f"live compute at {lsn_str(lsn)}: {dict(zip(TABLES, live))}", flush=True)
    uploaded = c.wait_uploaded(lsn)
    assert c.s3.keys(f"{REMOTE_PREFIX}/"), "nothing in the bucket"
    c.nl.run("endpoint", "stop", ENDPOINT)

    # A pageserver on an empty directory attaches the tenant from remote
    # storage, catches up from the safekeepers, and serves the same data.
    out = c.wipe_pageserver()
    assert f"tenant {c.tenant_id} re-attached from remote storage" in out, out
    info = c.timeline()
    assert lsn_int(info["remote_consistent_lsn"]) >= uploaded, info
    wait_until(f"the attached pageserver to reach {lsn_str(lsn)}",
               lambda: lsn_int(c.timeline()["last_record_lsn"]) >= lsn, 120)
    c.nl.run("endpoint", "create", "check", "--branch-name", "main", "--lsn", lsn_str(lsn),
             "--pg-port", str(c.check_pg_port), "--http-port", str(c.check_http_port))
    c.nl.run("endpoint", "start", "check", timeout=300)
    attached = c.digest(c.check_pg_port)
    assert attached == live, (f"at {lsn_str(lsn)}, the attached pageserver's data differs from the live "
                              f"compute's: {dict(zip(TABLES, attached))} != {dict(zip(TABLES, live))}")
    c.nl.run("endpoint", "stop", "check")
