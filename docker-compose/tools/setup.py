"""One-shot setup of the compose cluster, run before the compute starts.

Creates the tenant and its timeline on the pageserver (initdb, the first
time only) and the timeline on every safekeeper, then writes the compute
spec compute_ctl starts from. Idempotent: on a cluster that already has
them (a second `docker compose up`) it only writes the spec again. Exits 0
when done, 1 with the reason otherwise.

Authentication (docs/authentication.md): every call to the pageserver and
the safekeepers carries the admin token made by auth-setup; the spec gets a
token for the tenant (`storage_auth_token`), signed here with the cluster's
private key, which compute_ctl presents to the pageserver and the
safekeepers. The public key file is copied beside the spec (the compute
mounts the spec volume only, not the keys and tokens).

Environment (defaults in docker-compose.yml): TENANT_ID, TIMELINE_ID,
PAGESERVER_HTTP, PAGESERVER_PG, SAFEKEEPERS (libpq host:port list),
SAFEKEEPERS_HTTP, COMPUTE_PG_PORT, NEON_USER, NEON_PASSWORD, NEON_DB,
SPEC_PATH, AUTH_DIR (/auth), SETUP_TIMEOUT (seconds).
"""

import json
import os
import sys
import time

import requests

import neon_auth

env = os.environ.get
TENANT = env("TENANT_ID", "de200bd42b49cc1814412c7e592dd6e9")
TIMELINE = env("TIMELINE_ID", "9ef87a5bf0d92544f6fafeeb3239695c")
PAGESERVER_HTTP = env("PAGESERVER_HTTP", "pageserver:9898")
PAGESERVER_PG = env("PAGESERVER_PG", "pageserver:64000")
SAFEKEEPERS = env("SAFEKEEPERS", "safekeeper1:5454,safekeeper2:5454,safekeeper3:5454").split(",")
SAFEKEEPERS_HTTP = env("SAFEKEEPERS_HTTP", "safekeeper1:7676,safekeeper2:7676,safekeeper3:7676").split(",")
AUTH_DIR = env("AUTH_DIR", "/auth")
DEADLINE = time.monotonic() + float(env("SETUP_TIMEOUT", "120"))
session = requests.Session()


def log(message: str) -> None:
    print(f"setup: {message}", flush=True)


def fail(message: str) -> None:
    print(f"setup: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def wait_for(name: str, url: str) -> None:
    """Until GET url answers 200, or the deadline."""
    last = None
    while time.monotonic() < DEADLINE:
        try:
            r = requests.get(url, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text.strip()}"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.2)
    fail(f"{name} did not answer at {url}: {last}")


def call(method: str, url: str, body: dict | None = None, ok=(200, 201)) -> requests.Response:
    """A request retried on connection errors until the deadline; an
    answer outside `ok` is fatal."""
    while True:
        try:
            r = session.request(method, url, json=body, timeout=60)
            break
        except requests.RequestException as e:
            if time.monotonic() > DEADLINE:
                fail(f"{method} {url}: {e}")
            time.sleep(0.2)
    if r.status_code not in ok:
        fail(f"{method} {url}: HTTP {r.status_code}: {r.text.strip()}")
    return r


def main() -> None:
    try:
        admin_token = neon_auth.read_token(os.path.join(AUTH_DIR, "admin.token"))
        tenant_token = neon_auth.mint(neon_auth.load_private_key(os.path.join(AUTH_DIR, "auth_private_key.pem")),
                                      "tenant", TENANT)
        with open(os.path.join(AUTH_DIR, "auth_public_key.pem"), "rb") as f:
            public_keys = f.read()
    except (OSError, ValueError) as e:
        fail(f"the keys and tokens of auth-setup: {e}")
    session.headers["Authorization"] = f"Bearer {admin_token}"

    ps = f"http://{PAGESERVER_HTTP}"
    wait_for("the pageserver", f"{ps}/v1/status")
    for sk in SAFEKEEPERS_HTTP:
        wait_for(f"safekeeper {sk}", f"http://{sk}/v1/status")

    r = call("POST", f"{ps}/v1/tenant", {"tenant_id": TENANT}, ok=(201, 409))
    log(f"tenant {TENANT}: {'created' if r.status_code == 201 else 'exists'}")
    r = call("GET", f"{ps}/v1/tenant/{TENANT}/timeline/{TIMELINE}", ok=(200, 404))
    if r.status_code == 404:
        call("POST", f"{ps}/v1/tenant/{TENANT}/timeline",
             {"new_timeline_id": TIMELINE, "pg_version": 15}, ok=(201, 409))
        log(f"timeline {TIMELINE}: created on the pageserver (initdb)")
    else:
        log(f"timeline {TIMELINE}: exists on the pageserver")
    for sk in SAFEKEEPERS_HTTP:
        r = call("GET", f"http://{sk}/v1/tenant/{TENANT}/timeline/{TIMELINE}", ok=(200, 404))
        if r.status_code == 404:
            call("POST", f"http://{sk}/v1/tenant/{TENANT}/timeline",
                 {"timeline_id": TIMELINE, "pg_version": 150000}, ok=(201, 409))
            log(f"timeline created on safekeeper {sk}")

    spec = {
        "format_version": 1,
        "tenant_id": TENANT,
        "timeline_id": TIMELINE,
        "pageserver_connstring": f"postgresql://cloud_admin@{PAGESERVER_PG}",
        "pageserver_http": PAGESERVER_HTTP,
        "safekeepers": SAFEKEEPERS,
        # compute_ctl's password at the pageserver and the safekeepers.
        "storage_auth_token": tenant_token,
        "pg_port": int(env("COMPUTE_PG_PORT", "55432")),
        "listen_addresses": "*",
        "pg_version": 15,
        "mode": "primary",
        # Clients come through the proxy, from another host: they need a
        # password (cloud_admin is trusted from loopback only).
        "roles": [{"name": env("NEON_USER", "neon"), "password": env("NEON_PASSWORD", "neon")}],
        "databases": [{"name": env("NEON_DB", "neondb"), "owner": env("NEON_USER", "neon")}],
        "settings": {"shared_buffers": "128MB"},
    }
    path = env("SPEC_PATH", "/spec/spec.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # The spec holds a token: readable by root (compute_ctl) only.
    neon_auth.write_file(path, (json.dumps(spec, indent=2) + "\n").encode(), 0o600)
    log(f"wrote {path}")
    keys = os.path.join(os.path.dirname(path), "auth_public_key.pem")
    if neon_auth.write_file(keys, public_keys, 0o644):
        log(f"wrote {keys} (compute_ctl's --auth-public-key)")


if __name__ == "__main__":
    main()
