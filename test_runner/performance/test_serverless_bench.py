"""SQL over HTTP (the proxy's serverless listener) against PostgreSQL
connections through the proxy's PostgreSQL port, on a warm endpoint.

Through neon_local (release binaries under ``make bench``, one safekeeper),
endpoint ``bench`` created and started by hand (never suspended), the role
``ROLE`` (made with `neon_local role create`) on both paths:

1. Latency of one ``SELECT 1``, sequentially: over HTTP, ``POST /sql`` on a
   keep-alive ``requests.Session`` (the proxy's pool keeps the server
   connection); over TCP, connect + SCRAM-SHA-256 login + ``SELECT 1`` +
   disconnect through the proxy (what a serverless function without the
   HTTP driver pays per invocation). p50 and p99.
2. Throughput with ``THREADS`` client threads for ``SECONDS`` each: HTTP
   requests per second (a session per thread), TCP connect + ``SELECT 1`` +
   disconnect per second.
3. References, not compared: ``SELECT 1`` on one persistent TCP session
   through the proxy, and a WebSocket session (connect, cleartext password,
   ``SELECT 1``, close) on the serverless listener.

Comparisons run in ABBA order (http, tcp, tcp, http): latencies pool the
samples of both runs, throughputs are the mean of the two runs. The
clients are Python threads on the same 2 cores as the cluster (the GIL
included): the throughputs are a floor. The TCP client logs in with a
SCRAM-SHA-256 implementation in this file (``ScramConnection``: the proxy
passes the compute's SCRAM exchange through; fixtures/pq.py speaks only
cleartext). Figures go to the summary and to
``test_output/bench/serverless.json``. Timings are never asserted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import secrets
import socket
import statistics
import struct
import threading
import time
from typing import Callable

import pytest

from fixtures.bench import ROLE, ROLE_PASSWORD, Cluster, write_result
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.pg import PgBin
from fixtures.pg_websocket import PgWebSocket, ws_url
from fixtures.pq import AUTH_CLEARTEXT_PASSWORD, AUTH_OK, PqConnection, PqError, error_fields, startup_packet
from fixtures.utils import http_session, metric_value

QUICK = os.environ.get("SERVERLESS_BENCH_QUICK") == "1"
HTTP_REQUESTS = 200 if QUICK else 2000      # sequential, over the ABBA runs
TCP_CONNECTIONS = 60 if QUICK else 500      # sequential connect + SELECT 1, over the ABBA runs
REFERENCE_QUERIES = 200 if QUICK else 2000  # SELECT 1 on one persistent TCP session
WS_CONNECTIONS = 60 if QUICK else 500       # sequential WebSocket sessions
THREADS = 8
SECONDS = 3 if QUICK else 10
ABBA = ["http", "tcp", "tcp", "http"]
ENDPOINT = "bench"

# SASL authentication requests (the payload of an 'R' message).
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12


class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses
    it: no channel binding, the user name taken from the startup packet,
    ASCII passwords (no SASLprep)."""

    def __init__(self, password: str):
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.client_first_bare = f"n=,r={self.nonce}"
        self.auth_message = b""
        self.server_key = b""

    def client_first(self) -> bytes:
        return f"n,,{self.client_first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attributes = dict(item.split("=", 1) for item in text.split(","))
        nonce, salt, iterations = attributes["r"], base64.b64decode(attributes["s"]), int(attributes["i"])
        if not nonce.startswith(self.nonce):
            raise PqError({}, f"the server's SCRAM nonce does not extend ours: {text!r}")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"  # biws: base64 of the GS2 header "n,,"
        self.auth_message = f"{self.client_first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, self.auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_key = hmac.digest(salted, b"Server Key", "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        expected = "v=" + base64.b64encode(hmac.digest(self.server_key, self.auth_message, "sha256")).decode()
        if server_final.decode() != expected:
            raise PqError({}, f"the server's SCRAM signature is wrong: {server_final!r}")


class ScramConnection(PqConnection):
    """``PqConnection`` (its queries, its close) logging in with
    SCRAM-SHA-256 or a cleartext password, whichever the server asks."""

    def __init__(self, port: int, params: dict[str, str], password: str, timeout: float = 60):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.asked_password = False
        self.parameters: dict[str, str] = {}
        try:
            self.sock.sendall(startup_packet(params))
            self._login(password)
        except BaseException:
            self.sock.close()
            raise

    def _login(self, password: str) -> None:
        scram = Scram(password)
        while True:
            tag, payload = self.recv()
            if tag == b"E":
                raise PqError(error_fields(payload))
            if tag == b"Z":
                return
            if tag != b"R":
                continue  # ParameterStatus, BackendKeyData, notices
            (code,) = struct.unpack("!I", payload[:4])
            if code == AUTH_SASL:
                if b"SCRAM-SHA-256" not in payload[4:].split(b"\0"):
                    raise PqError({}, f"no SCRAM-SHA-256 among the mechanisms {payload[4:]!r}")
                first = scram.client_first()
                self.send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
            elif code == AUTH_SASL_CONTINUE:
                self.send(b"p", scram.client_final(payload[4:]))
            elif code == AUTH_SASL_FINAL:
                scram.verify_server_final(payload[4:])
            elif code == AUTH_CLEARTEXT_PASSWORD:
                self.asked_password = True
                self.send(b"p", password.encode() + b"\0")
            elif code != AUTH_OK:
                raise PqError({}, f"unsupported authentication request {code}")


class Clients:
    """The ways of running ``SELECT 1`` against endpoint ``ENDPOINT``."""

    def __init__(self, cluster: Cluster):
        nl = cluster.nl
        self.proxy_port, self.serverless_port = nl.proxy_port, nl.serverless_port
        assert self.serverless_port, "NeonLocal.serverless_port is not set"
        self.url = f"http://127.0.0.1:{self.serverless_port}/sql"
        self.headers = {"Neon-Connection-String":
                        f"postgresql://{ROLE}:{ROLE_PASSWORD}@127.0.0.1/postgres?options=endpoint%3D{ENDPOINT}"}
        self.params = {"user": ROLE, "database": "postgres", "options": f"endpoint={ENDPOINT}"}
        self.metrics_url = f"http://{nl.http['proxy']}/metrics"
        self.admin = nl.session()

    def http_session(self):
        session = http_session()
        session.headers.update(self.headers)
        return session

    def http_select1(self, session) -> None:
        resp = session.post(self.url, json={"query": "SELECT 1 AS one"}, timeout=60)
        if resp.status_code != 200 or b'"rows":[{"one":1}]' not in resp.content.replace(b" ", b""):
            raise AssertionError(f"POST /sql: HTTP {resp.status_code} {resp.text[:2000]}")

    def tcp_connect_select1(self) -> None:
        with ScramConnection(self.proxy_port, self.params, ROLE_PASSWORD) as conn:
            rows = conn.query("SELECT 1")
        if rows != [["1"]]:
            raise AssertionError(f"SELECT 1 through the proxy returned {rows}")

    def ws_connect_select1(self) -> None:
        with PgWebSocket.login(ws_url(self.serverless_port), ROLE, ROLE_PASSWORD,
                               options=f"endpoint={ENDPOINT}") as ws:
            rows = ws.rows("SELECT 1")
        if rows != [["1"]]:
            raise AssertionError(f"SELECT 1 over the WebSocket returned {rows}")

    def pool_opened(self) -> float:
        text = self.admin.get(self.metrics_url, timeout=10).text
        return metric_value(text, "proxy_serverless_pool_opened_total")


def timed(n: int, action: Callable[[], None]) -> list[float]:
    """Seconds each of ``n`` sequential calls of ``action`` took."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        action()
        out.append(time.perf_counter() - started)
    return out


def throughput(threads: int, seconds: float, make_action: Callable[[], Callable[[], None]]) -> float:
    """Calls per second of ``threads`` threads, each calling its own
    ``make_action()`` in a loop for ``seconds``; any failure fails."""
    counts = [0] * threads
    errors: list[BaseException] = []
    start_line = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        try:
            action = make_action()
            start_line.wait()
            while time.monotonic() < deadline[0]:
                action()
                counts[i] += 1
        except threading.BrokenBarrierError:
            pass  # another thread failed first
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            start_line.abort()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    deadline[0] = time.monotonic() + seconds
    started = time.monotonic()
    try:
        start_line.wait()
    except threading.BrokenBarrierError:
        pass  # a thread failed before the start: reported below
    for w in workers:
        w.join(timeout=seconds + 120)
    elapsed = time.monotonic() - started
    assert not errors, f"{len(errors)} client threads failed, the first: {errors[0]!r}"
    return sum(counts) / elapsed


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def latency_ms(samples: list[float]) -> dict:
    return {"p50_ms": round(1000 * percentile(samples, 0.50), 3), "p99_ms": round(1000 * percentile(samples, 0.99), 3),
            "mean_ms": round(1000 * statistics.mean(samples), 3), "samples": len(samples)}


@pytest.fixture
def cluster(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin) -> Cluster:
    c = Cluster.start(neon_env_builder, pg_bin, num_safekeepers=1)
    c.run("endpoint", "create", ENDPOINT)
    c.run("endpoint", "start", ENDPOINT)
    return c


def compare(clients: Clients) -> tuple[dict, dict, float]:
    """The ABBA runs: latency samples and throughputs by path, and the
    server connections the pool opened during the HTTP runs."""
    session = clients.http_session()
    for _ in range(50):  # warm: the pool's connection, the client's keep-alive
        clients.http_select1(session)
    clients.tcp_connect_select1()
    latencies: dict[str, list[float]] = {"http": [], "tcp": []}
    rates: dict[str, list[float]] = {"http": [], "tcp": []}
    opened = 0.0
    for path in ABBA:
        if path == "http":
            before = clients.pool_opened()
            latencies["http"] += timed(HTTP_REQUESTS // 2, lambda: clients.http_select1(session))
            opened += clients.pool_opened() - before

            def make_http() -> Callable[[], None]:
                own = clients.http_session()
                return lambda: clients.http_select1(own)

            rates["http"].append(throughput(THREADS, SECONDS, make_http))
        else:
            latencies["tcp"] += timed(TCP_CONNECTIONS // 2, clients.tcp_connect_select1)
            rates["tcp"].append(throughput(THREADS, SECONDS, lambda: clients.tcp_connect_select1))
    return latencies, rates, opened


def references(clients: Clients) -> dict:
    """SELECT 1 on one persistent TCP session; WebSocket sessions."""
    with ScramConnection(clients.proxy_port, clients.params, ROLE_PASSWORD) as conn:
        conn.query("SELECT 1")
        persistent = timed(REFERENCE_QUERIES, lambda: conn.query("SELECT 1"))
    clients.ws_connect_select1()
    websocket = timed(WS_CONNECTIONS, clients.ws_connect_select1)
    return {"tcp_persistent_select1": latency_ms(persistent), "websocket_connect_select1": latency_ms(websocket)}


def test_serverless_bench(cluster: Cluster, report_figure):
    started = time.monotonic()
    clients = Clients(cluster)
    latencies, rates, opened = compare(clients)
    http, tcp = latency_ms(latencies["http"]), latency_ms(latencies["tcp"])
    http_rate, tcp_rate = statistics.mean(rates["http"]), statistics.mean(rates["tcp"])
    result = {
        "http_select1": http,
        "tcp_connect_select1": tcp,
        "p50_ratio_tcp_over_http": round(tcp["p50_ms"] / http["p50_ms"], 2),
        "p99_ratio_tcp_over_http": round(tcp["p99_ms"] / http["p99_ms"], 2),
        "http_requests_per_s": round(http_rate, 1),
        "tcp_connections_per_s": round(tcp_rate, 1),
        "throughput_ratio_http_over_tcp": round(http_rate / tcp_rate, 2),
        "threads": THREADS,
        "seconds_per_throughput_run": SECONDS,
        "pool_connections_opened_during_http_latency_runs": opened,
        "runs": {"http_rates": [round(r, 1) for r in rates["http"]], "tcp_rates": [round(r, 1) for r in rates["tcp"]]},
        "references": references(clients),
        "quick": QUICK,
    }
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    write_result("serverless", result)
    ref = result["references"]
    table = [
        "| SELECT 1 on a warm endpoint | HTTP POST /sql (keep-alive, pooled) | TCP connect + SCRAM + disconnect "
        "| ratio (TCP / HTTP) |",
        "|---|---|---|---|",
        f"| latency p50, sequential | {http['p50_ms']:.2f} ms | {tcp['p50_ms']:.2f} ms | "
        f"{result['p50_ratio_tcp_over_http']:.2f}x |",
        f"| latency p99, sequential | {http['p99_ms']:.2f} ms | {tcp['p99_ms']:.2f} ms | "
        f"{result['p99_ratio_tcp_over_http']:.2f}x |",
        f"| {THREADS} client threads, {SECONDS} s | {http_rate:,.0f} req/s | {tcp_rate:,.0f} conn/s | "
        f"{1 / result['throughput_ratio_http_over_tcp']:.2f}x the rate |",
        f"| reference: SELECT 1 on one TCP session | p50 {ref['tcp_persistent_select1']['p50_ms']:.2f} ms, "
        f"p99 {ref['tcp_persistent_select1']['p99_ms']:.2f} ms | | |",
        f"| reference: WebSocket connect + password + SELECT 1 + close | "
        f"p50 {ref['websocket_connect_select1']['p50_ms']:.2f} ms, "
        f"p99 {ref['websocket_connect_select1']['p99_ms']:.2f} ms | | |",
    ]
    for line in table:
        report_figure(f"serverless: {line}")
    report_figure(f"serverless: the pool opened {opened:.0f} server connections during the sequential HTTP runs; "
                  f"clients are Python threads on the cluster's cores (a floor for the rates)")
