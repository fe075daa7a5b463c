"""Authentication on every port (docs/authentication.md), with real daemons.

For each port and API: no token, a malformed one, one signed by an unknown
key, a forged one, an expired one (401, FATAL 28P01, UNAUTHENTICATED) and a
valid one of another tenant or scope (403, ERROR 42501, PERMISSION_DENIED)
are refused, the right one is served. After the refused destructive calls
the timeline's files are byte-identical and the timeline still works. A
hostile proposer without the tenant's token can neither vote nor append,
and a WAL reader without a pageserver token cannot move the remote
consistent LSN (which lets safekeepers drop WAL). The broker takes
publications from safekeepers and subscriptions from pageservers only, so
a daemon with the wrong token gets no WAL through it. compute_ctl's API
takes compute tokens, the control plane's wake API proxy tokens; the proxy
refuses cloud_admin, wrong passwords and, when required, clients without
TLS. Public key files may hold several keys (rotation).

Tokens are signed here with PyJWT (fixtures/auth.py), independently of the
Rust signer; neon_local's are printed by `neon_local auth token`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import struct
import tarfile
import time
from pathlib import Path

import jwt
import pytest
import requests

from fixtures import auth, grpc
from fixtures.daemons import Safekeeper
from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder
from fixtures.neon_local import NeonLocal
from fixtures.pg import PgBin
from fixtures.port_distributor import PortDistributor
from fixtures.pq import (PqConnection, PqError, copy_data, errors_in, message, password_message, query_message,
                         raw_exchange, startup_packet)
from fixtures.process import Daemon
from fixtures.utils import http_session, wait_until
from fixtures.wal_service import WalService
from regress.test_compute_ctl import ComputeCtl, cc, wait_status  # noqa: F401 - cc is a fixture
from regress.test_proxy import ROLE, ROLE_PASSWORD, start_serverless
from regress.test_safekeeper_offload import ReplicationError, ReplicationReader, report_remote_consistent

# SQLSTATEs of refusals.
INVALID_PASSWORD = "28P01"
INSUFFICIENT_PRIVILEGE = "42501"
INVALID_AUTHORIZATION = "28000"

BROKER_SERVICE = "/storage_broker.BrokerService"
# The scopes that open no tenant's data.
SERVICE_SCOPES = ("pageserver", "safekeeper", "compute", "proxy")


# ---------------------------------------------------------------------------
# Tokens that must be refused
# ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def invalid_tokens(scope: str = "tenant", tenant_id: str | None = None,
                   key: auth.Ed25519PrivateKey | None = None) -> dict[str, str | None]:
    """Tokens that authenticate nobody, by name: none, garbage, and forms
    of a ``scope`` (``tenant_id``) token that must not pass: signed by an
    unknown key, expired, claims changed after signing, unsigned, signed
    with HMAC using the public key as the secret. ``key``: the trusted
    private key (default: the session's)."""
    good = auth.token(scope, tenant_id, key=key)
    header, _, signature = good.split(".")
    admin_claims = b64url(json.dumps({"scope": "admin"}).encode())
    trusted = key or auth.session_key()

    def forged(alg: str, sign) -> str:
        """Admin claims with ``alg`` in the header, signed by ``sign``."""
        head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        return f"{head}.{admin_claims}.{sign(f'{head}.{admin_claims}'.encode())}"

    return {
        "no token": None,
        "malformed": "not-a-token",
        "unknown key": auth.token(scope, tenant_id, key=auth.new_key()),
        "expired": auth.expired(scope, tenant_id, key=key),
        "claims changed": f"{header}.{admin_claims}.{signature}",
        "alg none": forged("none", lambda _: ""),
        "HS256 with the public key": forged(
            "HS256", lambda msg: b64url(hmac.new(auth.public_pem(trusted), msg, hashlib.sha256).digest())),
    }


def wrong_tokens(tenant_id: str, other_tenant: str, scopes: tuple[str, ...] = SERVICE_SCOPES) -> dict[str, str]:
    """Valid tokens that do not open ``tenant_id``'s data: another tenant's,
    and those of ``scopes``."""
    assert tenant_id != other_tenant
    return {"another tenant's": auth.token("tenant", other_tenant),
            **{f"a {scope} token": auth.token(scope) for scope in scopes}}


def expect(response: requests.Response, status: int, what: str) -> requests.Response:
    assert response.status_code == status, f"{what}: HTTP {response.status_code} {response.text[:500]}"
    if status in (401, 403):
        assert response.json()["error"], f"{what}: {response.text}"
    return response


def check_http_matrix(daemon: Daemon, method: str, path: str, refused: dict[str, tuple[str | None, int]],
                      served: dict[str, str], **kwargs) -> None:
    """``refused`` tokens get their status; ``served`` ones 200 or 201."""
    for name, (token, status) in refused.items():
        r = expect(daemon.http(method, path, token=token, **kwargs), status, f"{method} {path} with {name}")
        if name == "no token":
            assert "no token" in r.json()["error"], r.text
        if name == "expired":
            assert "expired" in r.json()["error"], r.text
    for name, token in served.items():
        r = daemon.http(method, path, token=token, **kwargs)
        assert r.status_code in (200, 201), f"{method} {path} with {name}: HTTP {r.status_code} {r.text[:500]}"


def refusals(tenant: str, other: str, scopes: tuple[str, ...] = SERVICE_SCOPES) -> dict[str, tuple[str | None, int]]:
    """Every token a route of ``tenant`` refuses, with its HTTP status."""
    return {**{name: (token, 401) for name, token in invalid_tokens("tenant", tenant).items()},
            **{name: (token, 403) for name, token in wrong_tokens(tenant, other, scopes).items()}}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def digest(*roots: Path) -> dict[str, str]:
    """The sha256 of every file below ``roots`` (and the directories), by path."""
    out = {}
    for root in roots:
        out[str(root)] = "directory" if root.is_dir() else "missing"
        for path in sorted(root.rglob("*")):
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "directory"
    return out


def settled_digest(*roots: Path) -> dict[str, str]:
    """``digest`` once it stays the same for half a second (background
    work done)."""
    last: dict[str, str] = {}

    def same_as_last():
        nonlocal last
        now = digest(*roots)
        settled = now == last
        last = now
        return now if settled else None

    return wait_until("the files to settle", same_as_last, 60, interval=0.5)


def assert_same_files(before: dict[str, str], after: dict[str, str]) -> None:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"refused calls changed files: {changed}"


# ---------------------------------------------------------------------------
# The fixture cluster's daemons
# ---------------------------------------------------------------------------


def test_every_daemon_checks_tokens(neon_env: NeonEnv):
    """The cluster's daemons run with authentication on: /v1/status is
    open, admin routes refuse a missing token."""
    env = neon_env
    for daemon in [env.broker, env.pageserver, *env.safekeepers]:
        assert "authentication on" in daemon.log, f"{daemon.name}: {daemon.log[-2000:]}"
        assert daemon.get("/v1/status", token=None).status_code == 200
        expect(daemon.get("/metrics", token=None), 401, f"{daemon.name} /metrics without a token")
        tenant = auth.token("tenant", secrets.token_hex(16))
        expect(daemon.get("/metrics", token=tenant), 403, f"{daemon.name} /metrics with a tenant token")
        assert daemon.get("/metrics").status_code == 200


def test_pageserver_http(neon_env: NeonEnv):
    ps = neon_env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    other = ps.create_tenant()
    ours = auth.token("tenant", tenant)
    served = {"the tenant's token": ours, "an admin token": auth.admin_token()}

    for path in [f"/v1/tenant/{tenant}", f"/v1/tenant/{tenant}/timeline",
                 f"/v1/tenant/{tenant}/timeline/{timeline}"]:
        check_http_matrix(ps, "GET", path, refusals(tenant, other), served)
    r = ps.http("GET", f"/v1/tenant/{tenant}/timeline/{timeline}", token=ours)
    assert r.json()["timeline_id"] == timeline
    # A tenant works on its own timelines (a flush here).
    expect(ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint", token=ours), 200, "checkpoint")

    # Routes that are not a tenant's need admin.
    tenants = ps.get("/v1/tenant").json()
    for method, path, body in [("GET", "/v1/tenant", None), ("POST", "/v1/tenant", {}), ("GET", "/metrics", None)]:
        refused = {**{name: (token, 401) for name, token in invalid_tokens("tenant", tenant).items()},
                   "the tenant's token": (ours, 403), "a pageserver token": (auth.token("pageserver"), 403)}
        check_http_matrix(ps, method, path, refused, {}, json=body)
    assert ps.get("/v1/tenant").json() == tenants, "a refused tenant creation created one"
    # A tenant's token opens that tenant only.
    expect(ps.http("GET", f"/v1/tenant/{other}/timeline", token=ours), 403, "another tenant's timelines")


def test_page_service(neon_env: NeonEnv):
    ps = neon_env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    other = ps.create_tenant()
    lsn = lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"])
    params = {"user": "cloud_admin", "database": "postgres"}
    basebackup = f"basebackup {tenant} {timeline} {lsn_str(lsn)}"
    pagestream = f"pagestream {tenant} {timeline}"

    # No valid token: refused at connect.
    for name, token in invalid_tokens("tenant", tenant).items():
        with pytest.raises(PqError) as refused:
            PqConnection(ps.pg_port, params, token).close()
        assert (refused.value.severity, refused.value.code) == ("FATAL", INVALID_PASSWORD), (name, refused.value)

    # A valid token of another tenant or scope: connected, each command refused.
    for name, token in wrong_tokens(tenant, other).items():
        with PqConnection(ps.pg_port, params, token) as conn:
            for command in (basebackup, pagestream):
                with pytest.raises(PqError) as refused:
                    conn.start_copy(command)
                assert (refused.value.severity, refused.value.code) == ("ERROR", INSUFFICIENT_PRIVILEGE), \
                    (name, command, refused.value)

    # The tenant's token (and an admin one): served.
    for token in (auth.token("tenant", tenant), auth.admin_token()):
        with PqConnection(ps.pg_port, params, token) as conn:
            assert conn.asked_password
            tar = tarfile.open(fileobj=io.BytesIO(conn.copy_out(basebackup)))
            assert tar.extractfile("PG_VERSION").read().strip() == b"15"
        with PqConnection(ps.pg_port, params, token) as conn:
            assert conn.start_copy(pagestream) == b"W"
            conn.copy_send(struct.pack("<BQI", 3, lsn, 5))  # DbSize of database 5 (postgres)
            response = conn.copy_recv()
            assert response[0] == 103 and struct.unpack("<Q", response[1:9])[0] > 0, response[:200]


def test_refused_destructive_calls_change_nothing(neon_env: NeonEnv):
    """Deleting, detaching, branching, flushing: refused without the
    tenant's token on the pageserver and the safekeepers, leaving every
    file of the tenant as it was; the timeline then still works."""
    env = neon_env
    ps = env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    other = ps.create_tenant()
    env.wal_service(tenant, timeline)
    compute = env.compute("main", tenant, timeline)
    compute.pg.sql("CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 10000) g")
    compute.stop()
    compute.unmount()
    lsn = env.sync_safekeepers(tenant, timeline)
    expect(ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint"), 200, "checkpoint")
    roots = [ps.workdir / "tenants" / tenant, *(sk.datadir / tenant for sk in env.safekeepers)]
    before = settled_digest(*roots)
    states = [consensus_state(sk, tenant, timeline) for sk in env.safekeepers]

    timeline_path = f"/v1/tenant/{tenant}/timeline/{timeline}"
    calls = [
        (ps, "DELETE", timeline_path, None),
        (ps, "POST", f"/v1/tenant/{tenant}/detach", None),
        (ps, "POST", f"/v1/tenant/{tenant}/timeline", {"ancestor_timeline_id": timeline}),
        (ps, "POST", f"{timeline_path}/checkpoint", None),
    ]
    for sk in env.safekeepers:
        calls += [(sk, "DELETE", timeline_path, None),
                  (sk, "POST", f"/v1/tenant/{tenant}/timeline",
                   {"timeline_id": secrets.token_hex(16), "pg_version": 150000})]
    for daemon, method, path, body in calls:
        for name, (token, status) in refusals(tenant, other).items():
            expect(daemon.http(method, path, token=token, json=body), status,
                   f"{daemon.name} {method} {path} with {name}")

    assert_same_files(before, digest(*roots))
    assert [consensus_state(sk, tenant, timeline) for sk in env.safekeepers] == states
    # Everything still works: the tenant is attached, the timeline is
    # there, and a compute from a base backup has the rows and writes.
    assert ps.http("GET", f"/v1/tenant/{tenant}").json()["state"] == "active"
    again = env.compute("again", tenant, timeline, lsn=lsn)
    assert again.pg.sql("SELECT count(*), sum(x) FROM t") == "10000|50005000"
    again.pg.sql("INSERT INTO t VALUES (0)")
    ps.wait_for_lsn(tenant, timeline, again.insert_lsn())


# ---------------------------------------------------------------------------
# Safekeepers
# ---------------------------------------------------------------------------


@pytest.fixture
def sk_env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """One safekeeper, nothing else."""
    neon_env_builder.pageserver = False
    neon_env_builder.num_safekeepers = 1
    return neon_env_builder.init_start()


def test_safekeeper_http(sk_env: NeonEnv):
    sk = sk_env.safekeepers[0]
    service = sk_env.wal_service()
    tenant, timeline = service.tenant_id, service.timeline_id
    other = secrets.token_hex(16)
    ours = service.token()
    served = {"the tenant's token": ours, "an admin token": auth.admin_token()}

    check_http_matrix(sk, "GET", f"/v1/tenant/{tenant}/timeline/{timeline}", refusals(tenant, other), served)
    for path in ["/v1/timeline", "/metrics"]:
        refused = {**{name: (token, 401) for name, token in invalid_tokens("tenant", tenant).items()},
                   "the tenant's token": (ours, 403), "a safekeeper token": (auth.token("safekeeper"), 403)}
        check_http_matrix(sk, "GET", path, refused, {"an admin token": auth.admin_token()})

    # Creating a timeline: refused for another tenant (nothing made),
    # served for the tenant's own.
    new = secrets.token_hex(16)
    body = {"timeline_id": new, "pg_version": 150000}
    for name, (token, status) in refusals(tenant, other).items():
        expect(sk.http("POST", f"/v1/tenant/{tenant}/timeline", token=token, json=body), status, f"create with {name}")
    assert not (sk.datadir / tenant / new).exists()
    expect(sk.http("POST", f"/v1/tenant/{tenant}/timeline", token=ours, json=body), 201, "create with the tenant's")
    assert sk.timeline_status(tenant, new)["timeline_id"] == new


# The walproposer's messages (libs/safekeeper_api/src/messages.rs): a tag,
# then little-endian fields.

def proposer_greeting(tenant: str, timeline: str) -> bytes:
    # Protocol 1; PostgreSQL version, system id and segment size 0: "take the timeline's".
    return (b"g" + struct.pack("<II", 1, 0) + os.urandom(16) + struct.pack("<Q", 0)
            + bytes.fromhex(tenant) + bytes.fromhex(timeline) + struct.pack("<I", 0))


def vote_request(term: int) -> bytes:
    return b"v" + struct.pack("<Q", term)


def elected(term: int, start: int, history: list[tuple[int, int]], timeline_start: int) -> bytes:
    return (b"e" + struct.pack("<QQI", term, start, len(history))
            + b"".join(struct.pack("<QQ", t, lsn) for t, lsn in history) + struct.pack("<Q", timeline_start))


def append_request(term: int, begin: int, wal: bytes, commit: int) -> bytes:
    return b"a" + struct.pack("<QQQQQ", term, begin, begin + len(wal), commit, 0) + wal


def wal_push_params(service: WalService) -> dict[str, str]:
    return {"user": "cloud_admin", "application_name": "walproposer",
            "options": f"-c tenant_id={service.tenant_id} -c timeline_id={service.timeline_id}"}


def hostile_proposer(sk: Safekeeper, service: WalService, password: str | None) -> list[tuple[bytes, bytes]]:
    """A proposer that sends everything at once without waiting for an
    answer: the password (none: an empty one), START_WAL_PUSH, a greeting,
    a vote request for a much higher term, its election, an append of
    garbage WAL with a commit LSN after it, and Terminate. Returns what
    the safekeeper answered."""
    status = sk.timeline_status(service.tenant_id, service.timeline_id)
    term, flush = status["term"] + 100, lsn_int(status["flush_lsn"])
    garbage = b"\xab" * 8192
    data = (startup_packet(wal_push_params(service)) + password_message(password or "")
            + query_message("START_WAL_PUSH")
            + copy_data(proposer_greeting(service.tenant_id, service.timeline_id))
            + copy_data(vote_request(term))
            + copy_data(elected(term, flush, [(term, flush)], lsn_int(status["timeline_start_lsn"])))
            + copy_data(append_request(term, flush, garbage, flush + len(garbage)))
            + message(b"X", b""))
    return raw_exchange(sk.pg_port, data, timeout=30)


def consensus_state(sk: Safekeeper, tenant: str, timeline: str) -> dict:
    """What a proposer's votes and appends would change, and the horizon
    that lets WAL go."""
    s = sk.timeline_status(tenant, timeline)
    return {k: s[k] for k in ("term", "last_log_term", "term_history", "flush_lsn", "commit_lsn",
                              "remote_consistent_lsn", "timeline_start_lsn")}


def test_safekeeper_wal_service(sk_env: NeonEnv):
    """Without the tenant's token nobody pushes WAL (votes, appends) or
    reads it; without a pageserver's, nobody moves the remote consistent
    LSN."""
    sk = sk_env.safekeepers[0]
    service = sk_env.wal_service()
    tenant, timeline = service.tenant_id, service.timeline_id
    other = secrets.token_hex(16)
    compute = sk_env.new_compute(service)
    compute.init()
    compute.start()
    compute.pg.sql("CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 1000) g")
    compute.stop()
    commit = service.sync()
    wait_until("the safekeeper to have committed everything",
               lambda: lsn_int(sk.timeline_status(tenant, timeline)["commit_lsn"]) == commit, 30)
    state = consensus_state(sk, tenant, timeline)
    roots = [sk.datadir / tenant]
    before = settled_digest(*roots)
    params = wal_push_params(service)

    # No valid token: refused at connect, even with the whole push sent at once.
    for name, token in invalid_tokens("tenant", tenant).items():
        with pytest.raises(PqError) as refused:
            PqConnection(sk.pg_port, params, token).close()
        assert (refused.value.severity, refused.value.code) == ("FATAL", INVALID_PASSWORD), (name, refused.value)
        answer = hostile_proposer(sk, service, token)
        assert answer[0][0] == b"R", (name, answer)  # it asked for the password ...
        assert [(e["S"], e["C"]) for e in errors_in(answer)] == [("FATAL", INVALID_PASSWORD)], (name, answer)
        assert b"W" not in [tag for tag, _ in answer], (name, answer)  # ... and took no WAL push

    # Valid tokens that do not open the tenant: no WAL push; readers only
    # with a pageserver's or a safekeeper's.
    for name, token in wrong_tokens(tenant, other).items():
        with PqConnection(sk.pg_port, params, token) as conn:
            with pytest.raises(PqError) as refused:
                conn.start_copy("START_WAL_PUSH")
            assert (refused.value.severity, refused.value.code) == ("ERROR", INSUFFICIENT_PRIVILEGE), \
                (name, refused.value)
        answer = hostile_proposer(sk, service, token)
        assert ("ERROR", INSUFFICIENT_PRIVILEGE) in [(e["S"], e["C"]) for e in errors_in(answer)], (name, answer)
        assert b"W" not in [tag for tag, _ in answer], (name, answer)
    for name, token in wrong_tokens(tenant, other, scopes=("compute", "proxy")).items():
        for command in ("IDENTIFY_SYSTEM", f"START_REPLICATION PHYSICAL {lsn_str(compute.start_lsn)}"):
            with PqConnection(sk.pg_port, params, token) as conn:
                with pytest.raises(PqError) as refused:
                    if command == "IDENTIFY_SYSTEM":
                        conn.query(command)
                    else:
                        conn.start_copy(command)
                assert refused.value.code == INSUFFICIENT_PRIVILEGE, (name, command, refused.value)

    # Nothing voted, appended, truncated or written.
    assert consensus_state(sk, tenant, timeline) == state
    assert_same_files(before, digest(*roots))
    assert sk.timeline_status(tenant, timeline)["walproposers"] == 0

    # Readers with the tenant's, a pageserver's, a safekeeper's or an admin
    # token read the WAL.
    wal = sk.read_wal(tenant, timeline, compute.start_lsn, commit)
    for scope in ("tenant", "pageserver", "safekeeper", "admin"):
        token = service.token() if scope == "tenant" else auth.token(scope)
        with PqConnection(sk.pg_port, params, token) as conn:
            assert conn.query("IDENTIFY_SYSTEM"), scope
        reader = ReplicationReader(sk, service, compute.start_lsn, application_name="reader", token=token)
        assert reader.read_until(commit) == wal, scope
        reader.close()

    # The same messages from a proposer with the tenant's token do count:
    # the greeting is answered and the vote moves the term.
    with PqConnection(sk.pg_port, params, service.token()) as conn:
        assert conn.start_copy("START_WAL_PUSH") == b"W"
        conn.copy_send(proposer_greeting(tenant, timeline))
        assert conn.copy_recv()[:1] == b"g"
        conn.copy_send(vote_request(state["term"] + 100))
        vote = conn.copy_recv()
        assert vote[:1] == b"v" and struct.unpack("<QB", vote[1:10]) == (state["term"] + 100, 1), vote
    assert sk.timeline_status(tenant, timeline)["term"] == state["term"] + 100

    # Feedback under the tenant's token (a replica's) leaves the remote
    # consistent LSN alone, even from a reader that says it is the
    # pageserver; a pageserver's moves it.
    report_remote_consistent(sk, service, commit, application_name="pageserver", token=service.token())
    assert lsn_int(sk.timeline_status(tenant, timeline)["remote_consistent_lsn"]) == \
        lsn_int(state["remote_consistent_lsn"])
    report_remote_consistent(sk, service, commit, application_name="pageserver")
    assert lsn_int(sk.timeline_status(tenant, timeline)["remote_consistent_lsn"]) == commit

    # Another tenant's token reads nothing.
    with pytest.raises(ReplicationError, match="(?i)token|permission|privilege"):
        ReplicationReader(sk, service, compute.start_lsn, application_name="reader",
                          token=auth.token("tenant", other))


# ---------------------------------------------------------------------------
# The storage broker
# ---------------------------------------------------------------------------


def timeline_info(safekeeper_id: int, tenant: str, timeline: str, lsn: int) -> bytes:
    """A SafekeeperTimelineInfo (storage_broker/proto/broker.proto)."""
    ttid = grpc.pb_bytes(1, bytes.fromhex(tenant)) + grpc.pb_bytes(2, bytes.fromhex(timeline))
    return (grpc.pb_uint(1, safekeeper_id) + grpc.pb_bytes(2, ttid) + grpc.pb_uint(3, 1) + grpc.pb_uint(4, 1)
            + grpc.pb_uint(5, lsn) + grpc.pb_uint(6, lsn) + grpc.pb_bytes(11, b"127.0.0.1:1")
            + grpc.pb_bytes(12, b"127.0.0.1:2"))


SUBSCRIBE_ALL = grpc.pb_bytes(1, b"")  # SubscribeSafekeeperInfoRequest { all: {} }


def test_broker_publish_and_subscribe(bare_env: NeonEnv):
    """Publishing needs a safekeeper (or admin) token, subscribing a
    pageserver (or admin) one; a refused publication reaches nobody."""
    broker = bare_env.start_daemon("storage_broker")
    broker.wait_ready()
    port = broker.http_port
    tenant, timeline = secrets.token_hex(16), secrets.token_hex(16)
    publish, subscribe = f"{BROKER_SERVICE}/PublishSafekeeperInfo", f"{BROKER_SERVICE}/SubscribeSafekeeperInfo"

    check_http_matrix(broker, "GET", "/metrics", {
        **{name: (token, 401) for name, token in invalid_tokens("safekeeper").items()},
        "a safekeeper token": (auth.token("safekeeper"), 403)}, {"an admin token": auth.admin_token()})

    # Subscriptions: refused ones end at once.
    invalid = {name: (token, grpc.UNAUTHENTICATED) for name, token in invalid_tokens("pageserver").items()}
    for name, (token, status) in {**invalid, **{
            f"a {scope} token": (auth.token(scope), grpc.PERMISSION_DENIED)
            for scope in ("safekeeper", "compute", "proxy")},
            "a tenant token": (auth.token("tenant", tenant), grpc.PERMISSION_DENIED)}.items():
        with grpc.GrpcCall(port, subscribe, [SUBSCRIBE_ALL], token) as refused:
            assert refused.wait_end() == status, (name, refused.status, refused.status_message)
    subscribers = [grpc.GrpcCall(port, subscribe, [SUBSCRIBE_ALL], auth.token(scope), timeout=30)
                   for scope in ("pageserver", "admin")]
    try:
        for s in subscribers:
            s.wait_headers()
            assert s.status is None, (s.status, s.status_message)
        wait_until("two subscribers", lambda: broker.metric("storage_broker_active_subscribers") == 2, 10)

        # Publications: refused ones are published to nobody.
        invalid = {name: (token, grpc.UNAUTHENTICATED) for name, token in invalid_tokens("safekeeper").items()}
        refused_calls = {**invalid, **{f"a {scope} token": (auth.token(scope), grpc.PERMISSION_DENIED)
                                       for scope in ("pageserver", "compute", "proxy")},
                         "a tenant token": (auth.token("tenant", tenant), grpc.PERMISSION_DENIED)}
        for n, (name, (token, status)) in enumerate(refused_calls.items()):
            result = grpc.call(port, publish, [timeline_info(100 + n, tenant, timeline, 0x1000000)], token)
            assert result[0] == status, (name, result)
        assert broker.metric("storage_broker_published_messages_total") == 0
        # A safekeeper's and an admin's are: the subscribers get exactly those.
        for safekeeper_id, scope in ((1, "safekeeper"), (2, "admin")):
            result = grpc.call(port, publish, [timeline_info(safekeeper_id, tenant, timeline, 0x1000000)],
                               auth.token(scope))
            assert result[0] == grpc.OK, (scope, result)
        for s in subscribers:
            messages = s.wait_messages(2)
            assert [grpc.pb_fields(m)[1] for m in messages] == [1, 2]
        assert broker.metric("storage_broker_published_messages_total") == 2
    finally:
        for s in subscribers:
            s.close()


BROKER_REFUSAL = re.compile(r"(?i)permission|unauthenticated|does not open")


@pytest.mark.parametrize("who", ["pageserver", "safekeeper"])
def test_wrong_daemon_token_gets_nothing_through_the_broker(neon_env_builder: NeonEnvBuilder, who: str):
    """A pageserver whose token cannot subscribe, or a safekeeper whose
    token cannot publish: the broker refuses them (they say so), and the
    pageserver never finds the safekeeper's WAL, until the token is right."""
    neon_env_builder.num_safekeepers = 1
    env = neon_env_builder.init_start()
    ps = env.pageserver
    daemon = ps if who == "pageserver" else env.safekeepers[0]
    right = daemon.env[auth.TOKEN_ENV]
    wrong = auth.token("safekeeper" if who == "pageserver" else "pageserver")
    assert daemon.stop() == 0
    daemon.env = auth.with_token(daemon.env, wrong)
    daemon.start()

    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    service = env.wal_service(tenant, timeline)
    compute = env.compute("main", tenant, timeline)
    compute.pg.sql("CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 1000) g")
    lsn = compute.flush_lsn()
    wait_until("the safekeeper to commit the rows",
               lambda: lsn_int(service.statuses()[0]["commit_lsn"]) >= lsn, 30)

    def refusals_logged() -> int:
        return sum(1 for line in daemon.log.splitlines() if "broker" in line.lower() and BROKER_REFUSAL.search(line))

    # The refusal is logged (once: the daemon retries quietly in the background).
    wait_until(f"the {who} to log that the broker refused it", lambda: refusals_logged() >= 1, 60)
    assert lsn_int(ps.timeline(tenant, timeline)["last_record_lsn"]) < lsn
    assert env.streaming_safekeepers(tenant, timeline) == []

    assert daemon.stop() == 0
    daemon.env = auth.with_token(daemon.env, right)
    daemon.start()
    ps.wait_for_lsn(tenant, timeline, lsn)


# ---------------------------------------------------------------------------
# compute_ctl
# ---------------------------------------------------------------------------


def test_compute_ctl_http(bare_env: NeonEnv, test_output_dir: Path):
    """Its API takes compute (or admin) tokens; refused calls change
    nothing."""
    daemon = bare_env.start_daemon("compute_ctl", "--pgdata", str(test_output_dir / "pgdata"))
    assert daemon.wait_ready()["status"] == "empty"
    compute = auth.token("compute")
    refused = {**{name: (token, 401) for name, token in invalid_tokens("compute").items()},
               **{f"a {scope} token": (auth.token(scope), 403) for scope in ("pageserver", "safekeeper", "proxy")},
               "a tenant token": (auth.token("tenant", secrets.token_hex(16)), 403)}
    check_http_matrix(daemon, "GET", "/status", refused,
                      {"a compute token": compute, "an admin token": auth.admin_token()})
    check_http_matrix(daemon, "GET", "/metrics", {**refused, "a compute token": (compute, 403)},
                      {"an admin token": auth.admin_token()})
    for path in ("/configure", "/terminate"):
        for name, (token, status) in refused.items():
            expect(daemon.http("POST", path, token=token, json={}), status, f"POST {path} with {name}")
    assert daemon.get("/status", token=compute).json()["status"] == "empty"
    assert daemon.running, "a refused /terminate stopped it"
    assert daemon.stop() == 0


def test_compute_ctl_needs_the_tenants_storage_token(cc: ComputeCtl, port_distributor: PortDistributor):
    """A spec whose storage token is another tenant's, or expired: the
    pageserver refuses the start, which fails without a postgres."""
    for n, (name, token) in enumerate({"another tenant's": auth.token("tenant", secrets.token_hex(16)),
                                       "expired": auth.expired("tenant", cc.tenant)}.items()):
        daemon = cc.start(f"compute{n}", cc.spec(port_distributor.get(), storage_auth_token=token))
        s = wait_status(daemon, "failed", timeout=60)
        assert s["postgres_pid"] is None, (name, s)
        assert daemon.stop() == 0


# ---------------------------------------------------------------------------
# neon_local: its daemons, the control plane, the proxy
# ---------------------------------------------------------------------------


def created_tenant(output: str) -> str:
    m = re.search(r"tenant ([0-9a-f]{32}) successfully created", output)
    assert m, output
    return m[1]


def endpoint_http(nl: NeonLocal, name: str) -> str:
    conf = (nl.repo_dir / "endpoints" / name / "endpoint.toml").read_text()
    port = re.search(r"^http_port = (\d+)", conf, re.M)[1]
    return f"http://127.0.0.1:{port}"


def endpoint_status(nl: NeonLocal, name: str) -> str:
    for line in nl.run("endpoint", "list").stdout.splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == name:
            return cells[-1]
    return "absent"


def check_url_matrix(url: str, method: str, refused: dict[str, tuple[str | None, int]], served: dict[str, str],
                     **kwargs) -> None:
    session = http_session()
    for name, (token, status) in refused.items():
        headers = auth.bearer(token) if token is not None else {}
        expect(session.request(method, url, headers=headers, timeout=60, **kwargs), status,
               f"{method} {url} with {name}")
    for name, token in served.items():
        r = session.request(method, url, headers=auth.bearer(token), timeout=120, **kwargs)
        assert r.status_code == 200, f"{method} {url} with {name}: HTTP {r.status_code} {r.text[:500]}"


def test_neon_local_control_plane_and_computes(neon_env_builder: NeonEnvBuilder):
    """neon_local's daemons check its tokens; the control plane serves a
    compute's spec to admin, compute and that tenant's tokens, and wakes
    computes for proxy (and admin) tokens only; compute_ctl's API takes
    compute tokens."""
    neon_env_builder.num_safekeepers = 1
    nl = neon_env_builder.neon_local()
    nl.run("start")
    tenant = created_tenant(nl.run("tenant", "create", "--set-default").stdout)
    other = created_tenant(nl.run("tenant", "create").stdout)
    nl.run("endpoint", "create", "ep")
    key = auth.load_private_key(nl.private_key)
    # What neon_local prints are tokens of its key, in the agreed form.
    public = key.public_key()
    claims = jwt.decode(nl.token(), public, algorithms=["EdDSA"])
    assert claims["scope"] == "admin" and "tenant_id" not in claims, claims
    claims = jwt.decode(nl.token(tenant_id=tenant), public, algorithms=["EdDSA"])
    assert (claims["scope"], claims["tenant_id"]) == ("tenant", tenant), claims
    assert jwt.get_unverified_header(nl.token("proxy")) == {"alg": "EdDSA", "typ": "JWT"}

    # Its storage daemons.
    invalid = {name: (token, 401) for name, token in invalid_tokens("tenant", tenant, key=key).items()}
    invalid["the test session's key"] = (auth.admin_token(), 401)
    ps, sk = f"http://{nl.http['pageserver 1']}", f"http://{nl.http['safekeeper 1']}"
    check_url_matrix(f"{ps}/v1/tenant/{tenant}/timeline", "GET",
                     {**invalid, "another tenant's token": (nl.token(tenant_id=other), 403)},
                     {"the tenant's token": nl.token(tenant_id=tenant), "an admin token": nl.token()})
    check_url_matrix(f"{ps}/v1/tenant", "GET", {**invalid, "a tenant token": (nl.token(tenant_id=tenant), 403)},
                     {"an admin token": nl.token()})
    check_url_matrix(f"{sk}/v1/timeline", "GET", {**invalid, "a tenant token": (nl.token(tenant_id=tenant), 403)},
                     {"an admin token": nl.token()})

    # The control plane: a compute's spec.
    cp = f"http://{nl.http['control_plane']}"
    assert http_session().get(f"{cp}/v1/status", timeout=10).status_code == 200
    check_url_matrix(f"{cp}/v1/computes/ep/spec", "GET", {
        **invalid, "another tenant's token": (nl.token(tenant_id=other), 403),
        "a proxy token": (nl.token("proxy"), 403), "a pageserver token": (nl.token("pageserver"), 403)},
        {"the tenant's token": nl.token(tenant_id=tenant), "a compute token": nl.token("compute"),
         "an admin token": nl.token()})
    check_url_matrix(f"{cp}/metrics", "GET", {**invalid, "a tenant token": (nl.token(tenant_id=tenant), 403),
                                               "a proxy token": (nl.token("proxy"), 403)}, {})

    # Waking: refused calls start nothing; a proxy token wakes the compute.
    check_url_matrix(f"{cp}/v1/wake_compute", "POST", {
        **invalid, "the tenant's token": (nl.token(tenant_id=tenant), 403),
        "a compute token": (nl.token("compute"), 403), "a pageserver token": (nl.token("pageserver"), 403)},
        {}, json={"endpoint": "ep"})
    assert endpoint_status(nl, "ep") == "stopped"
    assert nl.postmaster_pids() == []
    check_url_matrix(f"{cp}/v1/wake_compute", "POST", {}, {"a proxy token": nl.token("proxy")},
                     json={"endpoint": "ep"})
    assert endpoint_status(nl, "ep").startswith("running")

    # compute_ctl of the endpoint.
    compute_ctl = endpoint_http(nl, "ep")
    check_url_matrix(f"{compute_ctl}/status", "GET", {
        **invalid, "the tenant's token": (nl.token(tenant_id=tenant), 403), "a proxy token": (nl.token("proxy"), 403)},
        {"a compute token": nl.token("compute"), "an admin token": nl.token()})
    nl.run("stop")


def test_neon_local_roles_and_token_expiry(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    """`role create|list|delete` reach the running primary at once; a new
    password replaces the old; reserved names, empty passwords and unknown
    roles are refused and change nothing; no clear-text password is kept;
    `auth token --expires-in` sets the expiry."""
    s = start_serverless(neon_env_builder, pg_bin)
    nl = s.nl
    assert s.psql(s.conninfo(), "SELECT current_user") == ROLE  # wakes main
    assert nl.run("role", "list").stdout.split() == [ROLE]

    out = nl.run("role", "create", "bob", "--password", "bob-pw-1").stdout
    assert "applied to running endpoint 'main'" in out, out
    assert s.psql(s.conninfo(user="bob", password="bob-pw-1"), "SELECT current_user") == "bob"
    nl.run("role", "create", "bob", "--password", "bob-pw-2")
    old = s.psql(s.conninfo(user="bob", password="bob-pw-1"), "SELECT 1", check=False)
    assert old.returncode != 0 and "password authentication failed" in old.stderr, old.stderr
    assert s.psql(s.conninfo(user="bob", password="bob-pw-2"), "SELECT current_user") == "bob"
    assert sorted(nl.run("role", "list").stdout.split()) == [ROLE, "bob"]

    state_before = (nl.repo_dir / "state.toml").read_text()
    for args in (["create", "cloud_admin", "--password", "x"], ["create", "pg_monitor", "--password", "x"],
                 ["create", "carol", "--password", ""], ["delete", "nobody"]):
        result = nl.run("role", *args, check=False)
        assert result.returncode != 0 and result.stderr.startswith("error: "), (args, result.stderr)
    assert (nl.repo_dir / "state.toml").read_text() == state_before
    for secret in ("bob-pw-1", "bob-pw-2", ROLE_PASSWORD):
        assert secret not in state_before

    out = nl.run("role", "delete", "bob").stdout
    assert "applied to running endpoint 'main'" in out, out
    gone = s.psql(s.conninfo(user="bob", password="bob-pw-2"), "SELECT 1", check=False)
    assert gone.returncode != 0, gone.stdout
    assert s.direct(s.pg_port("main"), "SELECT count(*) FROM pg_roles WHERE rolname = 'bob'") == "0"
    assert nl.run("role", "list").stdout.split() == [ROLE]

    public = auth.load_private_key(nl.private_key).public_key()
    before = time.time()
    claims = jwt.decode(nl.run("auth", "token", "--scope", "compute", "--expires-in", "3600").stdout.strip(),
                        public, algorithms=["EdDSA"])
    assert claims["scope"] == "compute" and before + 3600 - 5 <= claims["exp"] <= time.time() + 3600 + 5, claims
    refused = nl.run("auth", "token", "--scope", "tenant", check=False)
    assert refused.returncode != 0 and "--tenant-id" in refused.stderr, refused.stderr


def proxy_refusal(port: int, user: str, password: str) -> PqError:
    """Connect to the proxy without TLS as ``user``; the error it ends with."""
    with pytest.raises(PqError) as refused:
        PqConnection(port, {"user": user, "database": "postgres"}, password).close()
    return refused.value


def test_proxy_refuses_cloud_admin_and_wrong_passwords(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    s = start_serverless(neon_env_builder, pg_bin)
    # The role logs in with its password, and only with it.
    assert s.psql(s.conninfo(), "SELECT current_user") == ROLE
    wrong = s.psql(s.conninfo(password="wrong-password"), "SELECT 1", check=False)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr
    none = s.psql(s.conninfo(password=""), "SELECT 1", check=False)
    assert none.returncode != 0, none.stdout
    # cloud_admin is refused whatever it presents: its loopback trust on the
    # compute is no way in through the proxy.
    for password in ("", "x", ROLE_PASSWORD, s.nl.token()):
        result = s.psql(s.conninfo(user="cloud_admin"), "SELECT 1", check=False, password=password)
        assert result.returncode != 0 and "FATAL" in result.stderr, (password, result.stdout, result.stderr)
        error = proxy_refusal(s.proxy_port, "cloud_admin", password)
        assert (error.severity, error.code) == ("FATAL", INVALID_AUTHORIZATION), error
    # Directly on the compute's own port, from loopback, cloud_admin still works.
    assert s.direct(s.pg_port("main"), "SELECT current_user") == "cloud_admin"


def test_proxy_requires_tls(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    neon_env_builder.proxy_require_tls = True
    s = start_serverless(neon_env_builder, pg_bin)
    # Without TLS: refused, before any password is asked for.
    plain = s.psql(s.conninfo(sslmode="disable"), "SELECT 1", check=False)
    assert plain.returncode != 0 and "FATAL" in plain.stderr, plain.stderr
    error = proxy_refusal(s.proxy_port, ROLE, ROLE_PASSWORD)
    assert (error.severity, error.code) == ("FATAL", INVALID_AUTHORIZATION), error
    # With TLS: served.
    assert s.psql(s.conninfo(sslmode="require"), "SELECT current_user") == ROLE
    # The first label of the SNI name picks the endpoint.
    sni = s.conninfo(host="main.localtest.me", hostaddr="127.0.0.1", sslmode="verify-full",
                     sslrootcert=str(s.cert))
    assert s.psql(sni, "SELECT 1") == "1"
    # cloud_admin over TLS: still refused.
    admin = s.psql(s.conninfo(user="cloud_admin", sslmode="require"), "SELECT 1", check=False, password="x")
    assert admin.returncode != 0 and "FATAL" in admin.stderr, admin.stderr
    # The serverless listener: plain HTTP (and so plain WebSocket) refused,
    # HTTPS on the same port served.
    port = s.nl.serverless_port
    headers = {"Neon-Connection-String": f"postgresql://{ROLE}:{ROLE_PASSWORD}@127.0.0.1/postgres"}
    body = {"query": "SELECT current_user AS u"}
    plain_http = requests.post(f"http://127.0.0.1:{port}/sql", json=body, headers=headers, timeout=60)
    assert plain_http.status_code == 403 and "TLS" in plain_http.json()["message"], plain_http.text
    upgrade = requests.get(f"http://127.0.0.1:{port}/v2", timeout=60, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode()})
    assert upgrade.status_code == 403, upgrade.text
    https = requests.post(f"https://127.0.0.1:{port}/sql", json=body, headers=headers, timeout=120,
                          verify=str(s.cert))
    assert https.status_code == 200 and https.json()["rows"] == [{"u": ROLE}], https.text


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def test_key_rotation(bare_env: NeonEnv, test_output_dir: Path):
    """A public key file may hold several keys: tokens of any of them pass,
    so a new key can be trusted, used, and the old one dropped."""
    old, new = auth.session_key(), auth.new_key()
    keys = test_output_dir / "rotating_keys.pem"
    tokens = {"old": auth.token("admin", key=old), "new": auth.token("admin", key=new)}

    def answers() -> dict[str, int]:
        return {name: ps.get("/v1/tenant", token=token).status_code for name, token in tokens.items()}

    auth.write_public_keys(keys, old)
    ps = bare_env.start_daemon("pageserver", public_key=keys)
    ps.wait_ready()
    assert answers() == {"old": 200, "new": 401}
    for trusted, expected in [((old, new), {"old": 200, "new": 200}), ((new,), {"old": 401, "new": 200})]:
        assert ps.stop() == 0
        auth.write_public_keys(keys, *trusted)
        ps.start()
        assert answers() == expected, trusted
