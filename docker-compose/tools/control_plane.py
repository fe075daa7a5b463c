"""A static control plane for the proxy: the wake API of docs/proxy.md for
the compose cluster's one compute, which always runs (no scale to zero).

POST /v1/wake_compute with {}, {"branch": "main"} or {"endpoint": NAME}
waits (up to WAKE_TIMEOUT s) until compute_ctl reports `running` and
answers {"endpoint", "address"}; other names are 404, a failed compute is
500 with compute_ctl's reason. It needs `Authorization: Bearer <jwt>` with
a proxy or admin token (401 without a valid token, 403 with another scope;
docs/authentication.md). GET /v1/status answers anyone when it is up.
compute_ctl's API is called with the compute token.

Environment: LISTEN (0.0.0.0:1234), ENDPOINT_NAME (main), COMPUTE_PG
(compute:55432), COMPUTE_HTTP (compute:3080), WAKE_TIMEOUT (120),
AUTH_PUBLIC_KEY (/auth/auth_public_key.pem: the keys tokens are verified
with, read at start), COMPUTE_TOKEN_FILE (/auth/compute.token).
"""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

import neon_auth

env = os.environ.get
host, port = env("LISTEN", "0.0.0.0:1234").rsplit(":", 1)
ENDPOINT = env("ENDPOINT_NAME", "main")
COMPUTE_PG = env("COMPUTE_PG", "compute:55432")
COMPUTE_HTTP = env("COMPUTE_HTTP", "compute:3080")
WAKE_TIMEOUT = float(env("WAKE_TIMEOUT", "120"))
PUBLIC_KEYS = neon_auth.load_public_keys(env("AUTH_PUBLIC_KEY", "/auth/auth_public_key.pem"))
COMPUTE_TOKEN = neon_auth.read_token(env("COMPUTE_TOKEN_FILE", "/auth/compute.token"))
STARTED = time.time()
wakes = 0


def compute_status() -> dict:
    r = requests.get(f"http://{COMPUTE_HTTP}/status", timeout=5,
                     headers={"Authorization": f"Bearer {COMPUTE_TOKEN}"})
    if r.status_code in (401, 403):
        raise neon_auth.AuthError(r.status_code, f"compute_ctl refused the compute token: HTTP {r.status_code}: "
                                  f"{r.text.strip()}")
    return r.json()


class Handler(BaseHTTPRequestHandler):
    def answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v1/status":
            self.answer(200, {"service": "control_plane", "status": "ok", "pid": os.getpid(),
                              "uptime_seconds": int(time.time() - STARTED), "wakes": wakes})
        else:
            self.answer(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        global wakes
        if self.path != "/v1/wake_compute":
            return self.answer(404, {"error": f"no route {self.path}"})
        try:
            neon_auth.authorize(self.headers.get("Authorization"), PUBLIC_KEYS, ("proxy",))
        except neon_auth.AuthError as e:
            return self.answer(e.status, {"error": str(e)})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(request, dict) or set(request) - {"endpoint", "branch"}:
                raise ValueError("expected {\"endpoint\"} or {\"branch\"}")
        except ValueError as e:
            return self.answer(400, {"error": f"bad request: {e}"})
        if request.get("endpoint") not in (None, ENDPOINT):
            return self.answer(404, {"error": f"unknown endpoint '{request['endpoint']}' (this cluster has one: {ENDPOINT})"})
        if request.get("branch") not in (None, "main"):
            return self.answer(404, {"error": f"unknown branch '{request['branch']}' (the branches are: main)"})
        wakes += 1
        deadline = time.monotonic() + WAKE_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status = compute_status()
                if status.get("status") == "running":
                    return self.answer(200, {"endpoint": ENDPOINT, "address": COMPUTE_PG})
                if status.get("status") in ("failed", "terminated"):
                    return self.answer(500, {"error": f"the compute is {status['status']}: {status.get('error')}"})
                last = f"status {status.get('status')}"
            except neon_auth.AuthError as e:
                return self.answer(500, {"error": str(e)})
            except (requests.RequestException, ValueError) as e:
                last = str(e)
            time.sleep(0.2)
        self.answer(500, {"error": f"the compute is not running after {WAKE_TIMEOUT:.0f} s: {last}"})

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        print(f"control_plane: {self.address_string()} {format % args}", flush=True)


if __name__ == "__main__":
    print(f"control_plane: wake API on {host}:{port} (proxy or admin token; {len(PUBLIC_KEYS)} public "
          f"key{'s' if len(PUBLIC_KEYS) > 1 else ''}), endpoint {ENDPOINT} at {COMPUTE_PG}", flush=True)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
