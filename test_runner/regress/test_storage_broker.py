"""The storage_broker binary serves gRPC and its management API on one port.

Publishing and subscribing are tested in Rust (storage_broker/tests); here a
real gRPC call (the standard health check) is made over cleartext HTTP/2
with the standard library alone, next to HTTP/1 requests on the same port.
"""

from __future__ import annotations

import socket
import struct

from fixtures.neon_fixtures import NeonEnv
from fixtures.utils import metric_value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    length = struct.pack(">I", len(payload))[1:]
    return length + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _header(name: str, value: str) -> bytes:
    """An HPACK literal header field, not indexed, without Huffman coding."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def grpc_health_check(port: int, service: str) -> bytes:
    """Calls grpc.health.v1.Health/Check; returns the response message."""
    headers = b"".join(
        _header(name, value)
        for name, value in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    message = b"\x00" + struct.pack(">I", len(request)) + request
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(4, 0, 0, b"")  # SETTINGS
            + _frame(1, 0x4, 1, headers)  # HEADERS, END_HEADERS
            + _frame(0, 0x1, 1, message)  # DATA, END_STREAM
        )
        reader = conn.makefile("rb")
        while True:
            head = reader.read(9)
            assert len(head) == 9, "connection closed before the response ended"
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = reader.read(length)
            assert kind not in (3, 7), f"stream reset or connection closed: {payload!r}"
            if kind == 4 and not flags & 0x1:
                conn.sendall(_frame(4, 0x1, 0, b""))  # SETTINGS ACK
            if stream == 1 and kind == 0:
                data += payload
            if stream == 1 and kind in (0, 1) and flags & 0x1:  # END_STREAM
                break
    assert data[:1] == b"\x00" and len(data) >= 5, f"not one gRPC message: {data!r}"
    return data[5 : 5 + int.from_bytes(data[1:5], "big")]


SERVING = b"\x08\x01"  # HealthCheckResponse { status: SERVING }


def test_grpc_and_http_on_one_port(bare_env: NeonEnv):
    broker = bare_env.start_daemon("storage_broker")
    status = broker.wait_ready()
    assert status["service"] == "storage_broker"

    assert grpc_health_check(broker.http_port, "") == SERVING
    assert grpc_health_check(broker.http_port, "storage_broker.BrokerService") == SERVING

    metrics = broker.get("/metrics").text
    for name in [
        "active_publishers",
        "active_subscribers",
        "published_messages_total",
        "dropped_messages_total",
    ]:
        assert f"\nstorage_broker_{name} 0\n" in metrics, metrics
    # gRPC calls are not counted as management API requests.
    counter = "storage_broker_http_requests_total"
    assert metric_value(metrics, counter, 'path="/v1/status",status="200"') >= 1
    assert 'path="unmatched"' not in metrics and "grpc" not in metrics, metrics

    assert broker.stop() == 0
    assert "storage_broker shut down" in broker.log


def test_bad_stream_limit(bare_env: NeonEnv):
    broker = bare_env.start_daemon("storage_broker", "--max-concurrent-streams", "0")
    assert broker.wait() != 0
    assert "max_concurrent_streams must be at least 1" in broker.log, broker.log
