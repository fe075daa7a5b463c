"""Serverless on a laptop: the proxy routes a connection by branch or
endpoint (startup options, or the TLS SNI name), the control-plane service
of neon_local wakes the compute (creating a branch's endpoint on first
use), and suspends it when idle; the next connection wakes it again.

Real daemons through neon_local, each test with its own repository and
ports. Clients log in through the proxy as a role made with `neon_local
role create` (the proxy refuses cloud_admin); the tests reach computes
directly as cloud_admin.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.neon_local import NeonLocal
from fixtures.pg import PgBin
from fixtures.utils import wait_until

SUSPEND = 2  # seconds: the default suspend timeout in these tests
# The role clients log in as through the proxy.
ROLE, ROLE_PASSWORD = "app", "app-secret-1"


class Serverless:
    """A started neon_local repository with its proxy; HTTP requests carry
    an admin token."""

    def __init__(self, nl: NeonLocal, pg_bin: PgBin):
        self.nl, self.pg_bin = nl, pg_bin
        self.http, self.proxy_port, self.cert = nl.http, nl.proxy_port, nl.proxy_cert
        self.session = nl.session()

    def run(self, *args: str) -> str:
        return self.nl.run(*args).stdout

    def conninfo(self, route: str = "", user: str = ROLE, **extra: str) -> str:
        """A libpq connection string to the proxy; ``route`` is put in
        ``options`` (e.g. ``branch=heikki``). ``ROLE`` comes with its
        password."""
        parts = {"host": "127.0.0.1", "port": str(self.proxy_port), "dbname": "postgres", "user": user,
                 "sslmode": "disable", "connect_timeout": "120"}
        if user == ROLE:
            parts["password"] = ROLE_PASSWORD
        if route:
            parts["options"] = route
        parts.update(extra)
        def quote(v: str) -> str:
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" if " " in v or not v else v

        return " ".join(f"{k}={quote(v)}" for k, v in parts.items())

    def psql(self, conninfo: str, sql: str, check: bool = True, password: str | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess | str:
        env = dict(os.environ)
        env.pop("PGPASSWORD", None)
        if password is not None:
            env["PGPASSWORD"] = password
        result = subprocess.run(
            [self.pg_bin.path("psql"), "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-w", "-d", conninfo, "-c", sql],
            capture_output=True, text=True, env=env, timeout=timeout,
        )
        if not check:
            return result
        assert result.returncode == 0, f"psql {conninfo!r} {sql!r} failed:\n{result.stderr}"
        return result.stdout.strip()

    def direct(self, port: int, sql: str) -> str:
        """SQL on a compute directly, bypassing the proxy."""
        return self.psql(f"host=127.0.0.1 port={port} dbname=postgres user=cloud_admin", sql)

    def endpoints(self) -> dict[str, list[str]]:
        """`endpoint list` as {name: [address, timeline, branch, lsn, status]}."""
        lines = self.run("endpoint", "list").splitlines()
        return {fields[0]: fields[1:] for fields in (line.split() for line in lines[1:])}

    def status(self, name: str) -> str:
        return self.endpoints()[name][4]

    def pg_port(self, name: str) -> int:
        return int(self.endpoints()[name][0].split(":")[1])

    def wait_status(self, name: str, status: str, timeout: float = 60) -> None:
        wait_until(f"endpoint {name} to be {status}", lambda: self.status(name) == status, timeout, 0.2)

    def control_plane(self) -> dict:
        return self.session.get(f"http://{self.http['control_plane']}/v1/status", timeout=5).json()

    def proxy_metrics(self) -> str:
        return self.session.get(f"http://{self.http['proxy']}/metrics", timeout=5).text

    def starts(self, name: str) -> int:
        return self.control_plane()["endpoints"].get(name, {}).get("starts", 0)


def start_serverless(builder: NeonEnvBuilder, pg_bin: PgBin) -> Serverless:
    """A repository on free ports with a TLS certificate for the proxy,
    started with a short default suspend timeout, a default tenant and its
    role ``ROLE``."""
    builder.num_safekeepers = 1
    builder.endpoint_ports = 20
    builder.proxy_tls = True
    nl = builder.neon_local()
    out = nl.run("start", "--suspend-timeout", f"{SUSPEND}s").stdout
    assert "control_plane started" in out and "proxy started" in out, out
    nl.run("tenant", "create", "--set-default")
    nl.create_role(ROLE, ROLE_PASSWORD)
    return Serverless(nl, pg_bin)


@pytest.fixture
def serverless(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin) -> Serverless:
    return start_serverless(neon_env_builder, pg_bin)


def test_branch_on_demand_and_scale_to_zero(serverless: Serverless):
    """A branch is reachable through the proxy with no endpoint command; it
    is suspended when idle (not while a client stays connected) and woken
    by the next connection, data intact."""
    s = serverless
    s.run("timeline", "branch", "--branch-name", "heikki")
    assert s.endpoints() == {}
    heikki = s.conninfo("branch=heikki")
    assert s.psql(heikki, "SELECT 1") == "1"
    eps = s.endpoints()
    assert list(eps) == ["heikki"] and eps["heikki"][2] == "heikki" and eps["heikki"][4] == "running"
    s.psql(heikki, "CREATE TABLE t(x int); INSERT INTO t VALUES (1)")

    for cycle in range(2, 4):
        s.wait_status("heikki", "suspended", timeout=30)
        assert s.nl.postmaster_pids() == []
        assert s.psql(heikki, f"INSERT INTO t VALUES ({cycle}); SELECT sum(x) FROM t") == str(
            sum(range(1, cycle + 1)))
        assert s.status("heikki") == "running"
    assert s.control_plane()["endpoints"]["heikki"]["suspends"] >= 2

    # The default branch without options; `-c endpoint=` names an endpoint.
    assert s.psql(s.conninfo(), "SELECT current_setting('port')") == str(s.pg_port("main"))
    assert s.psql(s.conninfo("-c endpoint=heikki"), "SELECT sum(x) FROM t") == "6"

    # An idle but open connection keeps the endpoint up.
    s.wait_status("heikki", "suspended", timeout=30)
    idle = subprocess.Popen([s.pg_bin.path("psql"), "-X", "-qAt", "-d", heikki],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        idle.stdin.write("SELECT 'connected';\n")
        idle.stdin.flush()
        assert idle.stdout.readline().strip() == "connected"
        # Three suspend timeouts pass while it sits idle.
        deadline = time.monotonic() + 3 * SUSPEND + 1
        while time.monotonic() < deadline:
            assert s.status("heikki") == "running"
        idle.stdin.write("SELECT sum(x) FROM t;\n")
        idle.stdin.flush()
        assert idle.stdout.readline().strip() == "6"
    finally:
        idle.stdin.close()
        idle.wait(timeout=30)
    s.wait_status("heikki", "suspended", timeout=30)

    # An endpoint created by hand without --suspend-timeout is never suspended.
    s.run("timeline", "branch", "--branch-name", "manual")
    s.run("endpoint", "create", "manual", "--branch-name", "manual")
    assert s.psql(s.conninfo("endpoint=manual"), "SELECT 1") == "1"
    deadline = time.monotonic() + 2 * SUSPEND + 1
    while time.monotonic() < deadline:
        assert s.status("manual") == "running"


def test_concurrent_wakes_start_once(serverless: Serverless):
    """20 connections at once to a suspended endpoint: all succeed, after a
    single compute start."""
    s = serverless
    s.run("timeline", "branch", "--branch-name", "busy")
    conn = s.conninfo("branch=busy")
    assert s.psql(conn, "SELECT 1") == "1"
    s.wait_status("busy", "suspended", timeout=30)
    starts = s.starts("busy")

    results: list[object] = [None] * 20

    def connect(i: int) -> None:
        try:
            results[i] = s.psql(conn, "SELECT pg_postmaster_start_time()")
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert all(isinstance(r, str) and r for r in results), results
    assert len(set(results)) == 1, results  # one postmaster served them all
    assert s.starts("busy") == starts + 1


def test_scram_through_proxy(serverless: Serverless):
    """Authentication passes through: a role with a password must give it
    (SCRAM-SHA-256); a wrong one is refused. A role made in SQL works as
    one made by `neon_local role create`."""
    s = serverless
    assert s.psql(s.conninfo(), "SELECT current_user") == ROLE
    s.direct(s.pg_port("main"), "CREATE ROLE alice LOGIN PASSWORD 'secret'")
    alice = s.conninfo(user="alice")
    wrong = s.psql(alice, "SELECT 1", check=False, password="wrong")
    assert wrong.returncode != 0
    assert 'password authentication failed for user "alice"' in wrong.stderr, wrong.stderr
    none = s.psql(alice, "SELECT 1", check=False)
    assert none.returncode != 0 and "password" in none.stderr, none.stderr
    assert s.psql(alice, "SELECT current_user", password="secret") == "alice"
    method = s.direct(s.pg_port("main"), "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                                         "WHERE rolname = 'alice'")
    assert method == "t"


def test_routing_errors(serverless: Serverless):
    s = serverless
    for route, message in [
        ("branch=nope", "unknown branch 'nope'"),
        ("endpoint=nope", "unknown endpoint 'nope'"),
        ("branch=a endpoint=b", "more than one target"),
    ]:
        result = s.psql(s.conninfo(route), "SELECT 1", check=False)
        assert result.returncode != 0
        assert "FATAL" in result.stderr and message in result.stderr, result.stderr
    assert s.endpoints() == {}


def test_proxy_restart(serverless: Serverless):
    """The proxy can be restarted while computes run; they are not
    restarted, and connections work after."""
    s = serverless
    # Created by hand without --suspend-timeout: never suspended.
    s.run("endpoint", "create", "steady")
    s.run("endpoint", "start", "steady")
    conn = s.conninfo("endpoint=steady")
    started = s.psql(conn, "SELECT pg_postmaster_start_time()")
    s.run("proxy", "stop")
    assert s.psql(conn, "SELECT 1", check=False).returncode != 0
    s.run("proxy", "start")
    assert "proxy: running" in s.run("proxy", "status")
    assert s.psql(conn, "SELECT pg_postmaster_start_time()") == started
    # The control plane too: it finds the running compute again.
    s.run("control-plane", "stop")
    s.run("control-plane", "start")
    assert s.psql(conn, "SELECT pg_postmaster_start_time()") == started


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_bad_startup_packets(serverless: Serverless):
    """Garbage and truncated startup packets get an ErrorResponse and do
    not disturb a session going on meanwhile."""
    s = serverless
    good = subprocess.Popen([s.pg_bin.path("psql"), "-X", "-qAt", "-d", s.conninfo()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        good.stdin.write("CREATE TABLE g(x int); INSERT INTO g VALUES (1); SELECT count(*) FROM g;\n")
        good.stdin.flush()
        assert good.stdout.readline().strip() == "1"
        packets = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",             # not PostgreSQL at all
            struct.pack("!ii", 8, 0x12345678),                 # unknown protocol code
            struct.pack("!ii", 100, 3 << 16) + b"user\0",      # truncated, then EOF
            struct.pack("!i", 2**30),                          # absurd length
            struct.pack("!ii", 3, 0),                          # too short
        ]
        for packet in packets:
            with socket.create_connection(("127.0.0.1", s.proxy_port), timeout=30) as sock:
                sock.sendall(packet)
                sock.shutdown(socket.SHUT_WR)
                reply = recv_all(sock)
            assert reply[:1] == b"E", (packet, reply)
            assert b"SFATAL" in reply, (packet, reply)
        good.stdin.write("INSERT INTO g VALUES (2); SELECT sum(x) FROM g;\n")
        good.stdin.flush()
        assert good.stdout.readline().strip() == "3"
    finally:
        good.stdin.close()
        assert good.wait(timeout=30) == 0


def test_cancel_through_proxy(serverless: Serverless):
    """psql's cancel (Ctrl-C) goes to the proxy, which passes it to the
    compute of that session only."""
    s = serverless
    s.run("timeline", "branch", "--branch-name", "other")
    sleepers = {}
    for branch in ["main", "other"]:
        sleepers[branch] = subprocess.Popen(
            [s.pg_bin.path("psql"), "-X", "-d", s.conninfo(f"branch={branch}"), "-c", "SELECT pg_sleep(120)"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def sleeping(branch: str) -> bool:
            return s.direct(s.pg_port(branch), "SELECT count(*) FROM pg_stat_activity "
                                               "WHERE query = 'SELECT pg_sleep(120)' AND state = 'active'") == "1"

        for branch in sleepers:
            wait_until(f"pg_sleep on {branch}", lambda b=branch: s.endpoints().get(b, [""] * 5)[4] == "running"
                       and sleeping(b), 120, 0.2)
        sleepers["main"].send_signal(signal.SIGINT)
        _, err = sleepers["main"].communicate(timeout=30)
        assert "canceling statement due to user request" in err, err
        assert sleeping("other")
        stats = s.proxy_metrics()
        assert re.search(r"^proxy_cancel_requests_total 1$", stats, re.M), stats
    finally:
        for p in sleepers.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def test_tls_and_sni(serverless: Serverless):
    """With a certificate, clients may use TLS; the first label of the SNI
    name picks the endpoint."""
    s = serverless
    s.run("timeline", "branch", "--branch-name", "tlsbranch")
    s.run("endpoint", "create", "tlsep", "--branch-name", "tlsbranch")
    # TLS without a routing name: the default branch.
    assert s.psql(s.conninfo(sslmode="require"), "SELECT current_setting('port')") == str(s.pg_port("main"))
    # SNI: tlsep.localtest.me, verified against our certificate.
    sni = s.conninfo(host="tlsep.localtest.me", hostaddr="127.0.0.1", sslmode="verify-full",
                     sslrootcert=str(s.cert))
    assert s.psql(sni, "SELECT current_setting('port')") == str(s.pg_port("tlsep"))
    assert s.status("tlsep") == "running"
    # Options win over SNI.
    both = s.conninfo("branch=main", host="tlsep.localtest.me", hostaddr="127.0.0.1", sslmode="require")
    assert s.psql(both, "SELECT current_setting('port')") == str(s.pg_port("main"))
    # Without TLS the proxy still works, and refuses nothing it should not.
    assert s.psql(s.conninfo("endpoint=tlsep"), "SELECT 1") == "1"
    assert s.session.get(f"http://{s.http['proxy']}/v1/status", timeout=5).json()["tls"] is True
