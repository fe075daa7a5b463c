"""The storage_broker binary serves gRPC and its management API on one port.

Publishing and subscribing are tested in Rust (storage_broker/tests), and
who may do them in test_auth.py; here a real gRPC call (the standard health
check) is made over cleartext HTTP/2 (fixtures/grpc.py), next to HTTP/1
requests on the same port.
"""

from __future__ import annotations

from fixtures import auth, grpc
from fixtures.neon_fixtures import NeonEnv
from fixtures.utils import metric_value


def grpc_health_check(port: int, service: str) -> bytes:
    """Calls grpc.health.v1.Health/Check (with an admin token); returns the
    response message."""
    request = grpc.pb_bytes(1, service.encode()) if service else b""
    status, messages, text = grpc.call(port, "/grpc.health.v1.Health/Check", [request], auth.admin_token())
    assert status == grpc.OK and len(messages) == 1, (status, text, messages)
    return messages[0]


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
