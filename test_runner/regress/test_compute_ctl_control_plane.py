"""compute_ctl started as a control plane starts it: no spec file, the spec
fetched from the control plane (neon_local's control-plane service) with
--control-plane-uri and --compute-id, and the trace context of the start
taken from TRACEPARENT: every line of the start carries its trace id, and
the control plane sees it on the spec request. compute_ctl fetches the
spec with the compute token in NEON_AUTH_TOKEN and verifies the tokens of
its own API with neon_local's public key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fixtures import auth
from fixtures.neon_fixtures import NeonEnvBuilder
from fixtures.pg import PgBin
from fixtures.port_distributor import PortDistributor
from fixtures.process import Daemon
from fixtures.utils import wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_compute_ctl_fetches_its_spec(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin,
                                      port_distributor: PortDistributor, test_output_dir: Path):
    nl = neon_env_builder.neon_local()
    nl.run("start")
    nl.run("tenant", "create", "--set-default")
    nl.run("endpoint", "create", "ep")
    control_plane = f"http://{nl.http['control_plane']}"
    admin = nl.session()
    spec = admin.get(f"{control_plane}/v1/computes/ep/spec", timeout=10).json()
    assert spec["pg_port"] and spec["mode"] == "primary", spec
    assert spec["storage_auth_token"], "the spec carries a token for the storage"
    missing = admin.get(f"{control_plane}/v1/computes/nope/spec", timeout=10)
    assert missing.status_code == 404 and "nope" in missing.json()["error"], missing.text

    http_port = port_distributor.get()
    env = auth.with_token({**os.environ, "TRACEPARENT": TRACEPARENT}, nl.token("compute"))
    compute = Daemon([neon_env_builder.binpath / "compute_ctl", "--pgdata", test_output_dir / "pgdata",
                      "--listen-http", f"127.0.0.1:{http_port}", "--control-plane-uri", control_plane,
                      "--compute-id", "ep", "--auth-public-key", nl.public_key],
                     test_output_dir / "compute_ctl.log", http_port, env=env, token=nl.token("compute"))
    compute.start()
    try:
        def running():
            s = compute.get("/status").json()
            assert s["status"] in ("init", "running"), s
            return s["status"] == "running"

        wait_until("the compute to run", running, 120)
        out = subprocess.run([pg_bin.path("psql"), "-X", "-qAt", "-h", "127.0.0.1", "-p", str(spec["pg_port"]),
                              "-U", "cloud_admin", "-d", "postgres", "-c", "SELECT 1"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "1"
        log = compute.log
        assert "fetched the compute spec from the control plane" in log
        start_lines = [line for line in log.splitlines() if "start: " in line and "step_ms=" in line]
        assert len(start_lines) >= 4 and all(TRACE_ID in line for line in start_lines), start_lines
        cp_log = (nl.repo_dir / "control_plane" / "control_plane.log").read_text()
        assert TRACEPARENT in cp_log, cp_log[-3000:]
    finally:
        assert compute.stop() == 0

    # Without --compute-id, compute_ctl refuses to start, saying why.
    bad = Daemon([neon_env_builder.binpath / "compute_ctl", "--pgdata", test_output_dir / "pgdata2",
                  "--listen-http", f"127.0.0.1:{port_distributor.get()}", "--control-plane-uri", control_plane],
                 test_output_dir / "bad.log", 0)
    bad.start(wait=False)
    assert bad.wait() != 0
    assert "--control-plane-uri needs --compute-id" in bad.log
