"""The Docker Compose cluster (docker-compose/): images built by the
Dockerfile from base images made locally, then pgbench through the proxy
with a safekeeper stopped under load, and a pageserver restart that keeps
the data. Skipped when no Docker engine is reachable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.neon_fixtures import REPO_ROOT
from fixtures.pg import PgBin
from fixtures.port_distributor import PortDistributor
from fixtures.utils import http_session, run_checked, wait_until

COMPOSE_DIR = REPO_ROOT / "docker-compose"
PASSWORD = "compose-test-password"


def compose_command() -> list[str] | str:
    """The Compose command, or why the test cannot run."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine reachable (`docker info` failed: {info.stderr.strip()[-300:]})"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return "Docker Compose is not installed (neither `docker compose` nor `docker-compose`)"


def timed(what: str, cmd: list[str], timings: dict[str, float], **kwargs) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = run_checked(cmd, **kwargs)
    timings[what] = time.monotonic() - started
    return result


@pytest.mark.timeout(3600)
def test_docker_compose(
    port_distributor: PortDistributor, test_output_dir: Path, pg_bin: PgBin, report_figure
):
    compose_cmd = compose_command()
    if isinstance(compose_cmd, str):
        pytest.skip(compose_cmd)

    timings: dict[str, float] = {}
    # Images: the base images without a registry, then the Dockerfile's
    # two targets (the classic builder: Rust is compiled for `neon` only).
    timed("base images", ["bash", str(COMPOSE_DIR / "make-base-image.sh")], timings)
    timed("tools image", ["docker", "build", "--target", "tools", "-t", "neon-local/tools:latest", "."],
          timings, cwd=REPO_ROOT)
    timed("neon image", ["docker", "build", "--target", "builder", "-t", "neon-local/builder:latest", "."],
          timings, cwd=REPO_ROOT)
    run_checked(["docker", "build", "-t", "neon-local/neon:latest", "."], cwd=REPO_ROOT)
    # Earlier builds, now untagged (the builder's is tagged: the dependency
    # layer it stands on stays).
    subprocess.run(["docker", "image", "prune", "-f", "--filter", "label=org.neon-local.image"],
                   capture_output=True)

    project = f"neontest{os.getpid()}"
    ports = {name: port_distributor.get() for name in ("proxy", "pageserver", "compute", "s3")}
    env = os.environ | {
        "NEON_PROXY_PORT": str(ports["proxy"]),
        "NEON_PAGESERVER_HTTP_PORT": str(ports["pageserver"]),
        "NEON_COMPUTE_HTTP_PORT": str(ports["compute"]),
        "NEON_S3_PORT": str(ports["s3"]),
        "NEON_PASSWORD": PASSWORD,
        "NEON_IMAGE_TAG": "latest",
    }
    compose = [*compose_cmd, "-p", project, "-f", str(COMPOSE_DIR / "docker-compose.yml")]
    pg_env = os.environ | {"PGPASSWORD": PASSWORD}
    conn = ["-h", "127.0.0.1", "-p", str(ports["proxy"]), "-U", "neon", "neondb"]

    def psql(sql: str, timeout: float = 60) -> str:
        return run_checked(
            [pg_bin.path("psql"), *conn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env=pg_env, timeout=timeout,
        ).stdout.strip()

    def history_rows() -> int:
        return int(psql("select count(*) from pgbench_history"))

    pgbench: subprocess.Popen | None = None
    try:
        timed("compose up", [*compose, "up", "-d"], timings, env=env, timeout=600)
        # The first connection: the control plane answers once compute_ctl
        # reports `running` (base backup from the pageserver, roles applied).
        started = time.monotonic()
        wait_until("a query through the proxy", lambda: psql("select 1", timeout=30) == "1", timeout=240,
                   interval=0.5)
        timings["first query"] = time.monotonic() - started
        # The compute got /dev/fuse: its data directory is lazy.
        compute_status = http_session().get(f"http://127.0.0.1:{ports['compute']}/status", timeout=10).json()
        assert compute_status["data_directory"] == "lazy", compute_status
        # cloud_admin is trusted from loopback only: through the proxy, from
        # another container, it is refused.
        refused = subprocess.run(
            [pg_bin.path("psql"), "-h", "127.0.0.1", "-p", str(ports["proxy"]), "-U", "cloud_admin",
             "postgres", "-XAtc", "select 1"],
            capture_output=True, text=True, env=os.environ | {"PGPASSWORD": "x"}, timeout=60)
        assert refused.returncode != 0, refused.stdout

        timed("pgbench -i", [pg_bin.path("pgbench"), "-i", "-s", "5", "-q", *conn], timings, env=pg_env,
              timeout=600)

        # pgbench runs while a safekeeper stops: 2 of 3 are a quorum, so
        # commits go on.
        pgbench = subprocess.Popen(
            [pg_bin.path("pgbench"), "-c", "4", "-j", "2", "-T", "30", "-P", "5", *conn],
            env=pg_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        wait_until("pgbench committing", lambda: history_rows() >= 50, timeout=60, interval=0.5)
        run_checked([*compose, "stop", "-t", "10", "safekeeper2"], env=env, timeout=120)
        stopped_at = history_rows()
        wait_until("commits with safekeeper2 stopped", lambda: history_rows() >= stopped_at + 200,
                   timeout=30, interval=0.5)
        assert pgbench.poll() is None, "pgbench ended before the safekeeper stop was seen"
        out, _ = pgbench.communicate(timeout=180)
        (test_output_dir / "pgbench.log").write_text(out)
        assert pgbench.returncode == 0, f"pgbench failed:\n{out}"
        processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
        assert processed > stopped_at, out
        report_figure(f"docker compose: pgbench -c 4 -T 30 through the proxy, safekeeper2 stopped mid-run: "
                      f"{processed} transactions")
        run_checked([*compose, "start", "safekeeper2"], env=env, timeout=120)

        # The pageserver restarts; a fresh compute (base backup from it) sees
        # the same data.
        check = ("select count(*), sum(abalance), (select count(*) from pgbench_history), "
                 "(select sum(delta) from pgbench_history) from pgbench_accounts")
        before = psql(check)
        run_checked([*compose, "restart", "-t", "10", "pageserver"], env=env, timeout=120)
        run_checked([*compose, "restart", "-t", "30", "compute"], env=env, timeout=120)
        after = wait_until("the compute back through the proxy", lambda: psql(check, timeout=60), timeout=240,
                           interval=0.5)
        assert after == before

        # Layers and WAL segments reached the object store.
        import boto3

        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}", region_name="us-east-1",
                          aws_access_key_id="neon", aws_secret_access_key="neon")

        def objects(prefix: str) -> int:
            return s3.list_objects_v2(Bucket="neon", Prefix=prefix).get("KeyCount", 0)

        wait_until("layers in S3", lambda: objects("pageserver/") > 0, timeout=60, interval=0.5)
        wait_until("WAL segments in S3", lambda: objects("safekeeper/") > 0, timeout=60, interval=0.5)
    finally:
        if pgbench is not None and pgbench.poll() is None:
            pgbench.kill()
            pgbench.wait()
        logs = subprocess.run([*compose, "logs", "--no-color"], env=env, capture_output=True, text=True)
        (test_output_dir / "compose.log").write_text(logs.stdout + logs.stderr)
        subprocess.run([*compose, "down", "-v", "--remove-orphans", "-t", "10"], env=env,
                       capture_output=True, timeout=300)
        for what, seconds in timings.items():
            report_figure(f"docker compose: {what}: {seconds:.1f} s")
