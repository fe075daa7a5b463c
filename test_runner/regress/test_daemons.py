"""The daemon skeletons and neon_local's process management.

Every daemon serves /v1/status and /metrics, stops with exit code 0 on
SIGTERM, and fails clearly on a port in use or a malformed config file.
neon_local init/start/stop manages them as background processes and leaves
none behind. Daemons started alone verify tokens where they can (requests
carry an admin token); /v1/status is open to anyone.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from fixtures.daemons import BINARIES, DAEMONS
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder
from fixtures.port_distributor import PortDistributor
from fixtures.utils import http_session, metric_value, pid_alive, wait_until

NODE_DAEMONS = {"pageserver", "safekeeper"}


@pytest.mark.parametrize("binary", BINARIES)
def test_help(neon_binpath: Path, binary: str):
    result = subprocess.run(
        [neon_binpath / binary, "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert binary in result.stdout
    if binary == "neon_local":
        commands = "init start stop tenant timeline endpoint pageserver safekeeper storage_broker auth role"
        for command in commands.split():
            assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command
    else:
        assert "--config" in result.stdout


@pytest.mark.parametrize("name", DAEMONS)
def test_daemon_status_metrics_and_sigterm(bare_env: NeonEnv, name: str, test_output_dir: Path):
    daemon = bare_env.start_daemon(name)
    status = daemon.wait_ready()
    assert status["service"] == name
    assert status["status"] == ("empty" if name == "compute_ctl" else "ok")
    assert status["pid"] == daemon.pid
    assert isinstance(status["uptime_seconds"], int)
    assert daemon.get("/v1/status", token=None).status_code == 200, "health checks need no token"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", status["version"])
    if name in NODE_DAEMONS:
        assert status["node_id"] == 1
        assert (test_output_dir / f"{name}_0").is_dir(), "data directory not created"

    metrics = daemon.get("/metrics").text
    version = re.escape(status["version"])
    assert re.search(rf'^{name}_build_info\{{version="{version}"\}} 1$', metrics, re.M), metrics
    counter = f"{name}_http_requests_total"
    labels = 'path="/v1/status",status="200"'
    before = metric_value(metrics, counter, labels)
    assert before >= 1
    for _ in range(3):
        assert daemon.get("/v1/status").status_code == 200
    assert metric_value(daemon.get("/metrics").text, counter, labels) == before + 3

    missing = daemon.get("/v1/no/such/endpoint")
    assert missing.status_code == 404
    assert "error" in missing.json()
    metrics = daemon.get("/metrics").text
    assert metric_value(metrics, counter, 'path="unmatched",status="404"') == 1

    assert daemon.stop() == 0
    log = daemon.log
    assert "received SIGTERM" in log
    assert f"{name} shut down" in log
    # Nothing listens on the address any more (connections may linger in
    # TIME_WAIT, which SO_REUSEADDR allows).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", daemon.http_port))


@pytest.mark.parametrize("name", DAEMONS)
def test_port_in_use(bare_env: NeonEnv, port_distributor: PortDistributor, name: str):
    port = port_distributor.get()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        daemon = bare_env.start_daemon(name, http_port=port)
        assert daemon.wait() != 0
    log = daemon.log
    assert f"127.0.0.1:{port}" in log and "in use" in log, log
    assert "panicked" not in log


def test_bad_listen_address(neon_binpath: Path, test_output_dir: Path):
    result = subprocess.run(
        [neon_binpath / "safekeeper", "--datadir", test_output_dir, "--listen-http", "bad-addr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "binding the HTTP listener to bad-addr: " in result.stderr


@pytest.mark.parametrize("name", DAEMONS)
def test_malformed_config(bare_env: NeonEnv, test_output_dir: Path, name: str):
    config = test_output_dir / "bad.toml"
    config.write_text("# comment\nthis is not toml\n")
    daemon = bare_env.start_daemon(name, "--config", str(config))
    assert daemon.wait() != 0
    assert f"parsing config file {config}: line 2, column " in daemon.log, daemon.log

    config.write_text("no_such_key = 1\n")
    daemon = bare_env.start_daemon(name, "--config", str(config))
    assert daemon.wait() != 0
    expected = f"parsing config file {config}: line 1, column 1: unknown field `no_such_key`"
    assert expected in daemon.log, daemon.log

    missing = test_output_dir / "missing.toml"
    daemon = bare_env.start_daemon(name, "--config", str(missing))
    assert daemon.wait() != 0
    assert f"reading config file {missing}: No such file" in daemon.log


def test_config_file_and_flag_override(bare_env: NeonEnv, port_distributor: PortDistributor, test_output_dir: Path):
    """Values come from the config file unless a flag overrides them."""
    config = test_output_dir / "safekeeper.toml"
    unused_port = port_distributor.get()
    config.write_text(f'id = 7\nlisten_http_addr = "127.0.0.1:{unused_port}"\n')
    # start_daemon passes --listen-http with a port of its own: it wins.
    daemon = bare_env.start_daemon("safekeeper", "--config", str(config))
    status = daemon.wait_ready()
    assert status["node_id"] == 7
    assert daemon.http_port != unused_port
    assert daemon.stop() == 0


def test_compute_ctl_bad_spec(bare_env: NeonEnv, test_output_dir: Path):
    """A spec that cannot be used stops compute_ctl at once with one line."""
    spec = test_output_dir / "spec.json"
    spec.write_text(json.dumps({"mode": "primary"}))
    daemon = bare_env.start_daemon("compute_ctl", "--spec", str(spec))
    assert daemon.wait() != 0
    assert "invalid compute spec: missing field `tenant_id`" in daemon.log, daemon.log
    assert f"in {spec}" in daemon.log, daemon.log


def test_neon_local_init_start_stop(neon_env_builder: NeonEnvBuilder):
    neon_local = neon_env_builder.neon_local(init=False)
    config, http = neon_local.config_path, neon_local.http
    neon_local.run("init", "--config", config, "--num-safekeepers", "3")
    assert (neon_local.repo_dir / "config").is_file()
    # init makes the repository's key pair; the private key is for its owner only.
    assert neon_local.private_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert neon_local.private_key.stat().st_mode & 0o777 == 0o600
    assert neon_local.public_key.read_text().startswith("-----BEGIN PUBLIC KEY-----")

    again = neon_local.run("init", "--config", config, check=False)
    assert again.returncode != 0
    assert again.stderr == (
        f"error: {neon_local.repo_dir}/config already exists: "
        "the repository is initialized already (use --force to overwrite it)\n"
    )

    neon_local.run("start")
    pids = neon_local.pids()
    assert len(pids) == 7, neon_local.pid_files()  # + the control plane and the proxy
    assert all(pid_alive(pid) for pid in pids)
    session = http_session()  # no token: /v1/status is open
    for name, addr in http.items():
        status = session.get(f"http://{addr}/v1/status", timeout=5).json()
        assert status["service"] == name.split()[0]
        assert status["pid"] in pids
        if name.startswith("safekeeper"):
            assert status["node_id"] == int(name.split()[1])
    assert (neon_local.repo_dir / "safekeepers" / "sk3" / "safekeeper.log").is_file()

    status = neon_local.run("safekeeper", "status").stdout
    assert status.count(": running (pid ") == 3, status
    assert "pageserver: running" in neon_local.run("pageserver", "status").stdout

    # Starting again leaves the running daemons alone.
    assert "already running" in neon_local.run("start").stdout
    assert neon_local.pids() == pids

    # One daemon on its own: stop, status fails, start again.
    neon_local.run("storage_broker", "stop")
    down = neon_local.run("storage_broker", "status", check=False)
    assert down.returncode != 0 and "storage_broker: not running" in down.stdout
    neon_local.run("storage_broker", "start")
    neon_local.run("storage_broker", "status")

    pids = neon_local.pids()
    neon_local.run("stop")
    assert not any(pid_alive(pid) for pid in pids), [p for p in pids if pid_alive(p)]
    assert neon_local.pid_files() == []
    assert "not running" in neon_local.run("stop").stdout

    # --force replaces the stopped repository.
    neon_local.run("init", "--config", config, "--force")
    assert not (neon_local.repo_dir / "safekeepers").exists()


def test_neon_local_start_failure_cleans_up(neon_env_builder: NeonEnvBuilder):
    """A daemon that cannot start: neon_local shows its log, stops what it
    started and leaves no process nor pid file."""
    neon_env_builder.num_safekeepers = 1
    neon_local = neon_env_builder.neon_local()
    http = neon_local.http
    host, port = http["pageserver 1"].split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        result = neon_local.run("start", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: starting pageserver: ")
    assert f"binding the HTTP listener to {http['pageserver 1']}" in result.stderr  # the log tail
    broker_pid = int(re.search(r"storage_broker started, pid: (\d+)", result.stdout).group(1))
    wait_until("the broker to be gone", lambda: not pid_alive(broker_pid), timeout=5)
    assert neon_local.pid_files() == []


NO_DEFAULT_TENANT = (
    "error: no --tenant-id given and no default tenant: "
    "create one with `neon_local tenant create --set-default`"
)
NOT_RUNNING = (
    "error: cannot reach the pageserver at http://{pageserver}: "
    "is it running? (start it with `neon_local start`)"
)
NO_ENDPOINT = "error: there is no endpoint named 'main' (see `neon_local endpoint list`)"


@pytest.mark.parametrize(
    "command,error",
    [
        (["tenant", "list"], NOT_RUNNING),
        (["tenant", "create"], NOT_RUNNING),
        (["timeline", "list"], NO_DEFAULT_TENANT),
        (["timeline", "branch", "--branch-name", "b"], NO_DEFAULT_TENANT),
        (["endpoint", "create", "main"], NO_DEFAULT_TENANT),
        (["endpoint", "start", "main"], NO_ENDPOINT),
        (["endpoint", "stop", "main"], NO_ENDPOINT),
    ],
)
def test_neon_local_commands_need_daemons_and_tenant(neon_env_builder: NeonEnvBuilder, command: list[str],
                                                     error: str):
    """Before `start` and `tenant create`, commands fail with one line and
    change nothing."""
    neon_env_builder.num_safekeepers = 1
    neon_local = neon_env_builder.neon_local()
    before = sorted(p.relative_to(neon_local.repo_dir) for p in neon_local.repo_dir.rglob("*"))
    result = neon_local.run(*command, check=False)
    assert result.returncode != 0
    assert result.stderr == error.format(pageserver=neon_local.http["pageserver 1"]) + "\n"
    after = sorted(p.relative_to(neon_local.repo_dir) for p in neon_local.repo_dir.rglob("*"))
    assert after == before


def test_neon_local_needs_init(neon_env_builder: NeonEnvBuilder):
    neon_local = neon_env_builder.neon_local(init=False)
    result = neon_local.run("start", check=False)
    assert result.returncode != 0
    assert "neon_local init" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
