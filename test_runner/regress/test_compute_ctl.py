"""compute_ctl on real storage (broker, three safekeepers, pageserver):
starting from a spec, /status, /configure with roles and databases (SCRAM
passwords), the activity monitor, /terminate, SIGTERM, a fresh PGDATA on
every start, and a newer compute fencing an older one.

compute_ctl verifies tokens (its API takes a compute token) and presents
the spec's ``storage_auth_token`` (a token of the tenant) to the pageserver
and the safekeepers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from fixtures import auth
from fixtures.neon_fixtures import NeonEnv
from fixtures.pg import PgBin
from fixtures.port_distributor import PortDistributor
from fixtures.process import Daemon
from fixtures.utils import metric_value, pid_alive, wait_until


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


class ComputeCtl:
    """compute_ctls on one timeline of the cluster, their files in ``out``."""

    def __init__(self, env: NeonEnv, pg_bin: PgBin, tenant: str, timeline: str, out: Path):
        self.env, self.pg_bin = env, pg_bin
        self.tenant, self.timeline, self.out = tenant, timeline, out
        self.started: list[Daemon] = []

    def spec(self, pg_port: int, **extra) -> dict:
        ps = self.env.pageserver
        return {
            "tenant_id": self.tenant,
            "timeline_id": self.timeline,
            "pageserver_connstring": f"postgresql://cloud_admin@127.0.0.1:{ps.pg_port}",
            "pageserver_http": f"127.0.0.1:{ps.http_port}",
            "safekeepers": [sk.address for sk in self.env.safekeepers],
            "pg_port": pg_port,
            "storage_auth_token": auth.token("tenant", self.tenant),
            **extra,
        }

    def start(self, name: str, spec: dict | None, extra: list[str] | None = None) -> Daemon:
        """compute_ctl on ``spec`` (None: started empty); its API is called
        with a compute token."""
        args = ["--pgdata", str(self.out / name), *(extra or [])]
        if spec is not None:
            path = self.out / f"{name}.json"
            path.write_text(json.dumps(spec))
            args += ["--spec", str(path)]
        daemon = self.env.start_daemon("compute_ctl", *args)
        daemon.token = auth.token("compute")
        self.started.append(daemon)
        return daemon

    def stop_all(self) -> None:
        """SIGTERM (not SIGKILL): compute_ctl stops its postgres."""
        for daemon in self.started:
            if daemon.running:
                daemon.stop()

    def psql(self, port: int, sql: str, user: str = "cloud_admin", password: str | None = None,
             dbname: str = "postgres", check: bool = True):
        env = {**os.environ, "PGPASSWORD": password} if password else None
        result = self.pg_bin.run(
            ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U", user,
             "-d", dbname, "-c", sql],
            as_pg_user=False, check=check, env=env,
        )
        return result.stdout.strip() if check else result


def status(daemon: Daemon) -> dict:
    r = daemon.get("/status")
    r.raise_for_status()
    return r.json()


def wait_status(daemon: Daemon, want: str, timeout: float = 120) -> dict:
    def reached():
        s = status(daemon)
        assert s["status"] in (want, "init", "running"), s
        return s if s["status"] == want else None

    try:
        return wait_until(f"compute_ctl to be {want}", reached, timeout)
    except (TimeoutError, AssertionError) as e:
        raise AssertionError(f"{e}\nlog:\n{daemon.log[-5000:]}") from None


@pytest.fixture
def cc(neon_env: NeonEnv, pg_bin: PgBin, test_output_dir: Path) -> Iterator[ComputeCtl]:
    """compute_ctls on a new timeline of the default cluster."""
    tenant = neon_env.pageserver.create_tenant()
    timeline = neon_env.pageserver.create_timeline(tenant)["timeline_id"]
    neon_env.wal_service(tenant, timeline)
    computes = ComputeCtl(neon_env, pg_bin, tenant, timeline, test_output_dir)
    yield computes
    computes.stop_all()


def test_compute_ctl_lifecycle(cc: ComputeCtl, pg_bin: PgBin, port_distributor: PortDistributor,
                               test_output_dir: Path):
    tenant, timeline = cc.tenant, cc.timeline
    port = port_distributor.get()
    spec = cc.spec(port, roles=[{"name": "alice", "password": "secret1"}],
                   databases=[{"name": "app", "owner": "alice"}], settings={"work_mem": "7MB"})
    first = cc.start("compute", spec)
    first.wait_ready()
    s = wait_status(first, "running")
    assert s["tenant_id"] == tenant and s["timeline_id"] == timeline and s["mode"] == "primary"
    assert s["pg_port"] == port and s["error"] is None
    assert s["start_time"].endswith("Z") and s["last_active"]
    assert pid_alive(s["postgres_pid"])
    assert first.get("/v1/status").json()["status"] == "running"
    metrics = first.get("/metrics", token=auth.admin_token()).text  # /metrics: admin only
    assert metric_value(metrics, "compute_ctl_compute_status", 'status="running"') == 1
    m = re.search(r"^compute_ctl_start_duration_seconds (\S+)$", metrics, re.M)
    assert m and float(m[1]) > 0, metrics

    # postgres runs as the postgres OS user, with the spec's settings and
    # the compute's own.
    if os.geteuid() == 0:
        owner = subprocess.run(["ps", "-o", "user=", "-p", str(s["postgres_pid"])], capture_output=True,
                               text=True).stdout.strip()
        assert owner == "postgres"
    assert cc.psql(port, "SHOW work_mem") == "7MB"
    assert cc.psql(port, "SHOW wal_consistency_checking") == "hash,gin,gist,spgist,brin,generic"
    assert cc.psql(port, "SHOW synchronous_standby_names") == "walproposer"

    # The spec's role logs in with its password, which is stored as SCRAM.
    assert cc.psql(port, "SELECT current_user", user="alice", password="secret1", dbname="app") == "alice"
    wrong = cc.psql(port, "SELECT 1", user="alice", password="wrong", dbname="app", check=False)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr
    assert cc.psql(port, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'alice'") == "SCRAM-SHA-256$"
    assert cc.psql(port, "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'") == "f"
    assert cc.psql(port, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'") == "alice"
    cc.psql(port, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)", user="alice", password="secret1", dbname="app")

    # /configure on the running compute: new password, a role with a
    # precomputed verifier, a database renamed, settings reloaded.
    spec2 = cc.spec(port, roles=[{"name": "alice", "password": "secret2"},
                                 {"name": "bob", "encrypted_password": scram_verifier("bobpw")}],
                    databases=[{"name": "app2", "owner": "alice"}, {"name": "bobdb", "owner": "bob"}],
                    delta_operations=[{"action": "rename_db", "name": "app", "new_name": "app2"}],
                    settings={"work_mem": "9MB"})
    r = first.http("POST", "/configure", json=spec2, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"
    assert cc.psql(port, "SHOW work_mem") == "9MB"
    assert cc.psql(port, "SELECT x FROM t", user="alice", password="secret2", dbname="app2") == "1"
    old = cc.psql(port, "SELECT 1", user="alice", password="secret1", dbname="app2", check=False)
    assert old.returncode != 0 and "password authentication failed" in old.stderr
    assert cc.psql(port, "SELECT current_user", user="bob", password="bobpw", dbname="bobdb") == "bob"
    # ... and dropping.
    spec3 = dict(spec2, roles=[spec2["roles"][0]], databases=[spec2["databases"][0]],
                 delta_operations=[{"action": "delete_db", "name": "bobdb"},
                                   {"action": "delete_role", "name": "bob"}])
    r = first.http("POST", "/configure", json=spec3, timeout=60)
    assert r.status_code == 200, r.text
    assert cc.psql(port, "SELECT count(*) FROM pg_roles WHERE rolname = 'bob'") == "0"
    assert cc.psql(port, "SELECT count(*) FROM pg_database WHERE datname = 'bobdb'") == "0"

    # Refused: a malformed spec, a reserved role, another timeline.
    for body, code, text in [
        ({"tenant_id": tenant}, 400, "invalid compute spec"),
        (cc.spec(port, roles=[{"name": "cloud_admin"}]), 400, "reserved"),
        (dict(spec3, timeline_id="0" * 32), 409, "needs a restart"),
    ]:
        r = first.http("POST", "/configure", json=body, timeout=60)
        assert r.status_code == code and text in r.json()["error"], r.text

    # The monitor: a busy client moves last_active.
    before = status(first)["last_active"]
    busy = subprocess.Popen([pg_bin.path("psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "cloud_admin",
                             "postgres", "-c", "SELECT pg_sleep(2)"], stdout=subprocess.DEVNULL)
    wait_until("last_active to move", lambda: status(first)["last_active"] > before, 20)
    busy.wait(timeout=30)
    assert status(first)["current_lsn"]

    # /terminate stops postgres, answers, and compute_ctl exits 0.
    pg_pid = status(first)["postgres_pid"]
    r = first.http("POST", "/terminate", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "terminated", r.text
    assert first.wait() == 0
    wait_until("postgres to exit", lambda: not pid_alive(pg_pid), 10)

    # A new start takes a fresh PGDATA from storage: the data is there, a
    # file left in the old PGDATA is not.
    (test_output_dir / "compute" / "leftover").write_text("x")
    second = cc.start("compute", spec3)
    wait_status(second, "running")
    assert not (test_output_dir / "compute" / "leftover").exists()
    assert cc.psql(port, "SELECT x FROM t", user="alice", password="secret2", dbname="app2") == "1"

    # SIGTERM: postgres stops fast, compute_ctl exits 0.
    pg_pid = status(second)["postgres_pid"]
    assert second.stop() == 0
    assert not pid_alive(pg_pid)
    assert "received SIGTERM" in second.log and "compute_ctl shut down" in second.log


def test_compute_ctl_configure_and_fencing(cc: ComputeCtl, port_distributor: PortDistributor):
    """Started empty, then by POST /configure; a second compute on the same
    timeline fences the first, which stops its postgres and says why."""
    old = cc.start("old", None)
    assert old.wait_ready()["status"] == "empty"
    assert status(old)["status"] == "empty"
    old_port = port_distributor.get()
    r = old.http("POST", "/configure", json=cc.spec(old_port), timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    cc.psql(old_port, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    old_pg = status(old)["postgres_pid"]

    new_port = port_distributor.get()
    new = cc.start("new", cc.spec(new_port))
    wait_status(new, "running")
    assert cc.psql(new_port, "SELECT x FROM t") == "1"
    cc.psql(new_port, "INSERT INTO t VALUES (2)")

    failed = wait_status(old, "failed", timeout=60)
    assert "another proposer took over" in failed["error"], failed
    assert "postgres was stopped" in failed["error"], failed
    wait_until("the fenced postgres to exit", lambda: not pid_alive(old_pg), 30)
    assert old.get("/v1/status").json()["status"] == "failed"
    # A failed compute_ctl still answers, and exits on SIGTERM.
    assert old.stop() == 0
    assert new.stop() == 0


def test_compute_ctl_start_failure(cc: ComputeCtl, port_distributor: PortDistributor):
    """A start that cannot work (a timeline the pageserver does not have)
    ends in `failed` with the reason, and no postgres."""
    port = port_distributor.get()
    spec = cc.spec(port, mode={"static": "0/1000000"}, safekeepers=[])
    spec["timeline_id"] = "1" * 32
    daemon = cc.start("compute", spec)
    daemon.wait_ready()
    s = wait_status(daemon, "failed", timeout=60)
    assert "the pageserver answered 404" in s["error"], s
    assert s["postgres_pid"] is None
    assert daemon.stop() == 0
