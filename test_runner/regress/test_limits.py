"""Exhaustion from input on the libpq ports of the pageserver and the
safekeepers: sockets that connect and never say anything cannot keep
authenticated clients out (they get a budget of their own, the oldest
closed beyond it, and none of the sessions' slots), are closed by the
server at the startup deadline, and a session silent between queries is
closed at the idle timeout.

Each daemon runs with a small pending budget (``--max-unauthenticated-
connections``), few sessions (``--max-connections``) and short timeouts,
so that a flood of more silent sockets than both budgets together would,
without these limits, hold every slot until the default startup timeout.
"""

from __future__ import annotations

import io
import socket
import tarfile
import time

import pytest

from fixtures import auth
from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder
from fixtures.pq import PqConnection, PqError, error_fields

PENDING = 4
SESSIONS = 4
FLOOD = 3 * (PENDING + SESSIONS)
STARTUP_TIMEOUT = 4.0
IDLE_TIMEOUT = 10.0
# How late after its deadline the server may close a socket.
SLACK = 5.0

LIMITS = ["--max-connections", str(SESSIONS), "--max-unauthenticated-connections", str(PENDING),
          "--startup-timeout", str(STARTUP_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT)]


@pytest.fixture
def env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """A broker, one safekeeper and a pageserver, both with small limits."""
    neon_env_builder.num_safekeepers = 1
    neon_env_builder.pageserver_extra_args = list(LIMITS)
    neon_env_builder.safekeeper_extra_args = {1: list(LIMITS)}
    return neon_env_builder.init_start()


def open_flood(port: int) -> list[socket.socket]:
    """FLOOD connections that send nothing."""
    return [socket.create_connection(("127.0.0.1", port), timeout=STARTUP_TIMEOUT + SLACK) for _ in range(FLOOD)]


def wait_closed(sock: socket.socket) -> bytes:
    """What the server sent before closing ``sock`` (within the socket's
    timeout, else the test fails)."""
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    except ConnectionResetError:
        return received
    except socket.timeout:
        raise AssertionError(f"the server did not close an idle socket; it sent {received!r}") from None
    finally:
        sock.close()


def check_flood_closed(flood: list[socket.socket], opened: float) -> None:
    for sock in flood:
        assert wait_closed(sock) == b"", "a socket that never started up was answered"
    elapsed = time.monotonic() - opened
    assert elapsed < STARTUP_TIMEOUT + SLACK, f"the silent sockets were closed only after {elapsed:.1f}s"


def test_page_service_idle_flood(env: NeonEnv):
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    lsn = lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"])
    params = {"user": "cloud_admin", "database": "postgres"}

    opened = time.monotonic()
    flood = open_flood(ps.pg_port)
    # Real clients, as many as there are sessions, still get in and are served.
    clients = [PqConnection(ps.pg_port, params, auth.token("tenant", tenant)) for _ in range(SESSIONS)]
    assert time.monotonic() - opened < STARTUP_TIMEOUT, "too slow to test anything: the flood had timed out"
    for conn in clients:
        assert conn.asked_password
        tar = tarfile.open(fileobj=io.BytesIO(conn.copy_out(f"basebackup {tenant} {timeline} {lsn_str(lsn)} lazy")))
        assert tar.extractfile("PG_VERSION").read().strip() == b"15"
    check_flood_closed(flood, opened)

    # One more than the sessions is refused, after authentication.
    with pytest.raises(PqError) as refused:
        PqConnection(ps.pg_port, params, auth.token("tenant", tenant)).close()
    assert (refused.value.severity, refused.value.code) == ("FATAL", "53300"), refused.value
    assert "too many connections to this pageserver" in refused.value.message

    # Sessions silent between queries are closed at the idle timeout, with
    # a reason, which frees their slots.
    for conn in clients:
        conn.sock.settimeout(IDLE_TIMEOUT + SLACK)
        tag, payload = conn.recv()
        fields = error_fields(payload)
        assert (tag, fields.get("S"), fields.get("C")) == (b"E", "FATAL", "57P05"), (tag, payload)
        assert "idle-session timeout" in fields.get("M", "")
        assert wait_closed(conn.sock) == b""
        conn.close()
    with PqConnection(ps.pg_port, params, auth.token("tenant", tenant)) as conn:
        assert conn.start_copy(f"pagestream {tenant} {timeline}") == b"W"


def test_wal_service_idle_flood(env: NeonEnv):
    sk = env.safekeepers[0]
    service = env.wal_service()
    params = {"user": "cloud_admin", "application_name": "reader",
              "options": f"-c tenant_id={service.tenant_id} -c timeline_id={service.timeline_id}"}

    opened = time.monotonic()
    flood = open_flood(sk.pg_port)
    clients = [PqConnection(sk.pg_port, params, service.token()) for _ in range(SESSIONS)]
    assert time.monotonic() - opened < STARTUP_TIMEOUT, "too slow to test anything: the flood had timed out"
    for conn in clients:
        assert conn.asked_password
        [row] = conn.query("IDENTIFY_SYSTEM")
        assert row[1] == "1", row
    check_flood_closed(flood, opened)
    for conn in clients:
        conn.close()


def test_startup_timeout_covers_authentication(env: NeonEnv):
    """A client that sends its startup packet and never the password it is
    asked for is closed at the startup deadline, on both daemons."""
    for port in (env.pageserver.pg_port, env.safekeepers[0].pg_port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=STARTUP_TIMEOUT + SLACK)
        started = time.monotonic()
        body = b"\x00\x03\x00\x00user\x00cloud_admin\x00\x00"
        sock.sendall(len(body + b"1234").to_bytes(4, "big") + body)
        received = wait_closed(sock)
        elapsed = time.monotonic() - started
        assert received[:1] == b"R", received  # asked for the password
        assert STARTUP_TIMEOUT - 0.5 <= elapsed < STARTUP_TIMEOUT + SLACK, elapsed
