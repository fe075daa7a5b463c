"""The Docker Compose cluster (docker-compose/): images built by the
Dockerfile from base images made locally, then pgbench through the proxy
with a safekeeper stopped under load, and a pageserver restart that keeps
the data. Authentication is on: only the proxy is published and it
requires TLS; the other ports are probed from inside the cluster's network
(docs/authentication.md). Skipped when no Docker engine is reachable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from fixtures.neon_fixtures import REPO_ROOT
from fixtures.pg import PgBin
from fixtures.port_distributor import PortDistributor
from fixtures.utils import run_checked, wait_until

COMPOSE_DIR = REPO_ROOT / "docker-compose"
PASSWORD = "compose-test-password"
# docker-compose/tools/setup.py's tenant.
TENANT = "de200bd42b49cc1814412c7e592dd6e9"
OTHER_TENANT = "0123456789abcdef0123456789abcdef"

# Run with `python3 -c` in the control-plane container (the tools image,
# with the `auth` volume): HTTP calls given as [method, url, token], where
# token is None, a token file's scope ("admin": /auth/admin.token) or
# "tenant:<id>" (minted with the private key); prints [[status, body], ...].
HTTP_PROBE = """
import json, sys
sys.path.insert(0, "/usr/local/lib/neon-tools")
import requests, neon_auth

def token(name):
    if name.startswith("tenant:"):
        key = neon_auth.load_private_key("/auth/auth_private_key.pem")
        return neon_auth.mint(key, "tenant", name.split(":", 1)[1])
    return neon_auth.read_token(f"/auth/{name}.token")

out = []
for method, url, name in json.loads(sys.argv[1]):
    headers = {"Authorization": f"Bearer {token(name)}"} if name else {}
    r = requests.request(method, url, headers=headers, json={} if method == "POST" else None, timeout=30)
    out.append([r.status_code, r.text])
print(json.dumps(out))
"""

# Run with `python3 -c` in the s3 container: the number of objects under a
# prefix of the bucket.
S3_COUNT = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:5000", region_name="us-east-1",
                  aws_access_key_id="neon", aws_secret_access_key="neon")
print(s3.list_objects_v2(Bucket="neon", Prefix=sys.argv[1]).get("KeyCount", 0))
"""


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
    proxy_port = port_distributor.get()
    serverless_port = port_distributor.get()
    env = os.environ | {
        "NEON_PROXY_PORT": str(proxy_port),
        "NEON_SERVERLESS_PORT": str(serverless_port),
        "NEON_PASSWORD": PASSWORD,
        "NEON_IMAGE_TAG": "latest",
    }
    compose = [*compose_cmd, "-p", project, "-f", str(COMPOSE_DIR / "docker-compose.yml")]
    # The proxy requires TLS (its certificate is self-signed: `require`
    # encrypts without verifying it).
    pg_env = os.environ | {"PGPASSWORD": PASSWORD, "PGSSLMODE": "require"}
    conn = ["-h", "127.0.0.1", "-p", str(proxy_port), "-U", "neon", "neondb"]

    def psql(sql: str, timeout: float = 60) -> str:
        return run_checked(
            [pg_bin.path("psql"), *conn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env=pg_env, timeout=timeout,
        ).stdout.strip()

    def history_rows() -> int:
        return int(psql("select count(*) from pgbench_history"))

    def exec_python(service: str, code: str, *args: str) -> str:
        """Python in a tools container of the cluster: inside its network."""
        return run_checked([*compose, "exec", "-T", service, "python3", "-c", code, *args], env=env,
                           timeout=120).stdout

    def http_probe(calls: list[tuple[str, str, str | None]]) -> list[tuple[int, str]]:
        return [tuple(r) for r in json.loads(exec_python("control-plane", HTTP_PROBE, json.dumps(calls)))]

    def refused_by_proxy(user: str, sslmode: str) -> None:
        """A connection through the proxy that must fail."""
        result = subprocess.run(
            [pg_bin.path("psql"), "-h", "127.0.0.1", "-p", str(proxy_port), "-U", user, "neondb",
             "-XAtc", "select 1"],
            capture_output=True, text=True, timeout=60,
            env=pg_env | {"PGSSLMODE": sslmode, "PGPASSWORD": PASSWORD if user == "neon" else "x"})
        assert result.returncode != 0, f"{user} with sslmode={sslmode} got in: {result.stdout}"
        # Refused by the server (an ErrorResponse), not a failed connection.
        assert "FATAL" in result.stderr, result.stderr

    pgbench: subprocess.Popen | None = None
    try:
        timed("compose up", [*compose, "up", "-d"], timings, env=env, timeout=600)
        # The first connection: the control plane answers once compute_ctl
        # reports `running` (base backup from the pageserver, roles applied).
        started = time.monotonic()
        wait_until("a query through the proxy", lambda: psql("select 1", timeout=30) == "1", timeout=240,
                   interval=0.5)
        timings["first query"] = time.monotonic() - started
        # Over TLS to the proxy.
        assert "SSL connection" in psql("\\conninfo"), "not a TLS connection"

        # The proxy is the only service published on the host.
        published = run_checked(
            ["docker", "ps", "--filter", f"label=com.docker.compose.project={project}",
             "--format", '{{.Label "com.docker.compose.service"}} {{.Ports}}'], timeout=60).stdout
        services = {line.split()[0] for line in published.splitlines() if "->" in line}
        assert services == {"proxy"}, published
        # SQL over HTTPS on the proxy's serverless port (its certificate is
        # self-signed: not verified, as with sslmode=require); plain HTTP
        # refused, as TLS is required.
        sql_headers = {"Neon-Connection-String": f"postgresql://neon:{PASSWORD}@127.0.0.1/neondb"}
        over_https = requests.post(f"https://127.0.0.1:{serverless_port}/sql", verify=False, timeout=120,
                                   headers=sql_headers, json={"query": "SELECT $1::int + 1 AS n", "params": [41]})
        assert over_https.status_code == 200 and over_https.json()["rows"] == [{"n": 42}], over_https.text
        over_http = requests.post(f"http://127.0.0.1:{serverless_port}/sql", timeout=60, headers=sql_headers,
                                  json={"query": "SELECT 1"})
        assert over_http.status_code == 403, over_http.text
        # Without TLS the proxy refuses; cloud_admin is refused whatever its
        # password.
        refused_by_proxy("neon", "disable")
        refused_by_proxy("cloud_admin", "require")

        # Every HTTP port inside the network: no token 401, the wrong scope
        # or tenant 403, the right one 200; health checks stay open.
        checks = [
            ("GET", "http://compute:3080/status", None, 401),
            ("GET", "http://compute:3080/status", "proxy", 403),
            ("GET", "http://compute:3080/status", "compute", 200),
            ("GET", "http://compute:3080/v1/status", None, 200),
            ("GET", "http://pageserver:9898/v1/tenant", None, 401),
            ("GET", "http://pageserver:9898/v1/tenant", "compute", 403),
            ("GET", "http://pageserver:9898/v1/tenant", "admin", 200),
            ("GET", f"http://pageserver:9898/v1/tenant/{TENANT}", f"tenant:{OTHER_TENANT}", 403),
            ("GET", f"http://pageserver:9898/v1/tenant/{TENANT}", f"tenant:{TENANT}", 200),
            ("GET", "http://pageserver:9898/v1/status", None, 200),
            ("GET", "http://safekeeper1:7676/v1/timeline", None, 401),
            ("GET", "http://safekeeper1:7676/v1/timeline", "pageserver", 403),
            ("GET", "http://safekeeper1:7676/v1/timeline", "admin", 200),
            ("GET", "http://storage-broker:50051/metrics", None, 401),
            ("GET", "http://storage-broker:50051/metrics", "safekeeper", 403),
            ("GET", "http://storage-broker:50051/metrics", "admin", 200),
            ("POST", "http://control-plane:1234/v1/wake_compute", None, 401),
            ("POST", "http://control-plane:1234/v1/wake_compute", "compute", 403),
            ("POST", "http://control-plane:1234/v1/wake_compute", "proxy", 200),
        ]
        answers = http_probe([(method, url, token) for method, url, token, _ in checks])
        bodies = {}
        for (method, url, token, expected), (status, body) in zip(checks, answers):
            assert status == expected, f"{method} {url} with {token or 'no'} token: HTTP {status} {body}"
            if status in (401, 403):
                assert "error" in json.loads(body), body
            bodies[(url, token)] = body
        # The compute got /dev/fuse: its data directory is lazy.
        compute_status = json.loads(bodies[("http://compute:3080/status", "compute")])
        assert compute_status["data_directory"] == "lazy", compute_status
        # The page service and the WAL service take a token as the password.
        for name, port in (("pageserver", 64000), ("safekeeper1", 5454)):
            login = subprocess.run(
                [*compose, "exec", "-T", "-e", "PGPASSWORD=not-a-token", "control-plane", "psql", "-w", "-h",
                 name, "-p", str(port), "-U", "cloud_admin", "-XAtc", "", "postgres"],
                env=env, capture_output=True, text=True, timeout=60)
            assert login.returncode != 0 and "FATAL" in login.stderr, f"{name}: {login.stderr}"

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

        # Layers and WAL segments reached the object store (not published:
        # asked from inside the s3 container).
        def objects(prefix: str) -> int:
            return int(exec_python("s3", S3_COUNT, prefix))

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
