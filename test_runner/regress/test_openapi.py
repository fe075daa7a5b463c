"""The HTTP APIs of the pageserver, the safekeeper, compute_ctl and
neon_local's control plane against their OpenAPI documents
(docs/openapi/*.json), which each daemon serves at ``GET /v1/openapi.json``
without a token.

schemathesis (its Python API, driven by Hypothesis) makes requests from the
document the running daemon serves: valid ones (positive) and invalid ones
(negative), a bounded number per operation.

* With an admin token: no answer is a 5xx or a dropped connection (a
  panic), every answer has a status code, content type and body the
  document describes, and a refused request (4xx) changes nothing: the
  daemon's state as its API shows it (tenants with their generations and
  timelines; safekeeper timelines with their terms and LSNs; the compute's
  status; the endpoints' configs and the branches) is the same after it as
  before. In half of the cases the ids in the path are the fixture's own,
  so that handlers get past the lookup, except on the routes that would
  destroy them (timeline deletion, detach), and bodies are made about its
  objects: branches of its timeline, and the running compute's own spec
  with generated roles, databases, delta operations and settings (applied
  to it). compute_ctl's ``/terminate`` is left out of this run, as it ends
  compute_ctl.
* Without a token: the public routes (status, the document) answer as
  described, every other one answers 401 with a JSON error, and nothing
  changes.
* Afterwards each daemon still runs and answers ``/v1/status``, and what the
  test made before the fuzzing (tenant, timelines, endpoint) is all there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks

from fixtures import auth
from fixtures.neon_fixtures import REPO_ROOT, NeonEnvBuilder
from fixtures.neon_local import NeonLocal, started_endpoint_port
from fixtures.utils import http_session

SPECS = REPO_ROOT / "docs" / "openapi"
# Cases per operation and generation mode, with and without a token: enough
# to reach every documented answer, few enough for the whole file to take
# about two minutes on a debug build. OPENAPI_EXAMPLES=N asks for N with a
# token (a longer hunt).
AUTHORIZED_EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", "30"))
UNAUTHORIZED_EXAMPLES = 10
# Seconds a request may take (a timeline bootstrap runs initdb).
REQUEST_TIMEOUT = 60

load_all_checks()
CHECKS = [getattr(schemathesis.checks, name) for name in (
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")]


@dataclass
class Api:
    """One daemon's API as the fuzzing sees it."""

    name: str  # docs/openapi/<name>.json
    base_url: str
    admin_token: str
    # The state a refused request must leave as it was.
    state: Callable[[], object]
    # Path parameters naming the fixture's own objects.
    own_ids: dict[str, str] = field(default_factory=dict)
    # Operations ("POST /path") whose path parameters stay random: they
    # would destroy the fixture's objects.
    destructive: set[str] = field(default_factory=set)
    # Operations not called with a token (they would end the daemon).
    not_authorized: set[str] = field(default_factory=set)
    # By operation, what makes a generated JSON body about the fixture's
    # own objects (in the cases with its own ids).
    own_body: dict[str, Callable[[dict], dict]] = field(default_factory=dict)

    def get(self, path: str, token: str | None = None) -> requests.Response:
        headers = auth.bearer(token) if token else {}
        return http_session().get(f"{self.base_url}{path}", headers=headers, timeout=REQUEST_TIMEOUT)

    def load(self) -> schemathesis.BaseSchema:
        """The document the daemon serves without a token: the file, valid OpenAPI."""
        response = self.get("/v1/openapi.json")
        assert response.status_code == 200, f"{self.name}: HTTP {response.status_code} {response.text[:500]}"
        assert response.headers["content-type"] == "application/json", response.headers
        served = response.json()
        assert served == json.loads((SPECS / f"{self.name}.json").read_text()), \
            f"{self.name} serves another document than docs/openapi/{self.name}.json"
        # The bearer token is the test's to give, not a generated header.
        config = schemathesis.Config()
        config.projects.default.generation.update(with_security_parameters=False)
        schema = schemathesis.openapi.from_dict(served, config=config)
        schema.validate()
        return schema


def run_cases(label: str, strategy, examples: int, send: Callable) -> str | None:
    """Runs ``send(case, own_ids)`` on ``examples`` generated cases; the
    first failure (shrunk), or None."""
    @settings(max_examples=examples, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=strategy, own_ids=st.booleans())
    def check(case, own_ids):
        send(case, own_ids)

    try:
        check()
    except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - every failure is reported, with its example
        notes = "\n".join(getattr(e, "__notes__", []))
        return f"{label}: {type(e).__name__}: {e}\n{notes}"
    return None


def fuzz(api: Api, schema, authorized: bool, examples: int) -> tuple[list[str], Counter]:
    """Fuzzes every operation of ``schema`` in both generation modes, with
    the admin token or without any; returns the failures and how many
    answers had each status code."""
    session = http_session()
    failures: list[str] = []
    statuses: Counter = Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        public = op.definition.raw.get("security") == []
        declared_headers = {h.name.lower() for h in op.headers}
        if authorized and op.label in api.not_authorized:
            continue

        def send(case, own_ids: bool, op=op, public=public, declared_headers=declared_headers) -> None:
            if own_ids and op.label not in api.destructive and case.path_parameters:
                case.path_parameters = {**case.path_parameters,
                                        **{k: v for k, v in api.own_ids.items() if k in case.path_parameters}}
            if own_ids and op.label in api.own_body and isinstance(case.body, dict):
                case.body = api.own_body[op.label](case.body)
            # Headers the document does not declare (made up by the negative
            # mode) are left out: malformed ones are refused by the HTTP
            # parser, before the API.
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() in declared_headers}
            token = auth.bearer(api.admin_token) if authorized else {}
            before = api.state()
            response = case.call(base_url=api.base_url, session=session, headers=token, timeout=REQUEST_TIMEOUT)
            statuses[response.status_code] += 1
            if authorized or public:
                case.validate_response(response, checks=CHECKS, headers=token)
            else:
                assert response.status_code == 401, \
                    f"{op.label} without a token: HTTP {response.status_code} {response.text[:300]}"
                assert "error" in response.json(), response.text
            if 400 <= response.status_code < 500:
                after = api.state()
                assert after == before, f"{op.label} refused with {response.status_code} " \
                                        f"({response.text[:300]}) but changed the state:\n{before}\n->\n{after}"

        # Invalid requests need something to make invalid.
        inputs = [*op.path_parameters, *op.query, *op.body, *op.headers]
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if inputs else (GenerationMode.POSITIVE,)
        for mode in modes:
            failure = run_cases(f"{op.label} ({mode.value}, {'admin token' if authorized else 'no token'})",
                                op.as_strategy(generation_mode=mode), examples, send)
            if failure:
                failures.append(failure)
    return failures, statuses


def fuzz_all(apis: list[Api], report_figure) -> None:
    """Both runs on each API; fails with every failure found."""
    failures = []
    for api in apis:
        schema = api.load()
        for authorized, examples in ((True, AUTHORIZED_EXAMPLES), (False, UNAUTHORIZED_EXAMPLES)):
            started = time.monotonic()
            found, statuses = fuzz(api, schema, authorized, examples)
            failures += found
            codes = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
            report_figure(f"openapi {api.name}: {statuses.total()} requests {'with' if authorized else 'without'} "
                          f"a token in {time.monotonic() - started:.0f}s ({codes}), {len(found)} failures")
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures)


def assert_alive(api: Api) -> None:
    status = api.get("/v1/status")
    assert status.status_code == 200, f"{api.name}: HTTP {status.status_code} {status.text[:300]}"


def test_openapi_storage(neon_env_builder: NeonEnvBuilder, report_figure):
    """The pageserver (with remote storage, for attach and detach) and a
    safekeeper."""
    neon_env_builder.num_safekeepers = 1
    neon_env_builder.enable_remote_storage(pageserver_prefix="pageserver")
    env = neon_env_builder.init_start()
    ps, sk = env.pageserver, env.safekeepers[0]
    tenant, timeline = secrets.token_hex(16), secrets.token_hex(16)
    r = ps.http("POST", "/v1/tenant", json={"tenant_id": tenant})
    assert r.status_code == 201, r.text
    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline", json={"new_timeline_id": timeline}, timeout=120)
    assert r.status_code == 201, r.text
    env.wal_service(tenant, timeline, [sk])

    def ps_state():
        tenants = ps.get("/v1/tenant").json()
        timelines = ps.get(f"/v1/tenant/{tenant}/timeline").json()
        return sorted(tenants, key=lambda t: t["tenant_id"]), sorted(t["timeline_id"] for t in timelines)

    def sk_state():
        return sorted((t["tenant_id"], t["timeline_id"], t["term"], t["flush_lsn"], t["commit_lsn"])
                      for t in sk.get("/v1/timeline").json())

    timeline_path = "DELETE /v1/tenant/{tenant_id}/timeline/{timeline_id}"
    pageserver = Api("pageserver", f"http://127.0.0.1:{ps.http_port}", auth.admin_token(), ps_state,
                     {"tenant_id": tenant, "timeline_id": timeline},
                     {timeline_path, "POST /v1/tenant/{tenant_id}/detach"},
                     # Branches of the fixture's timeline, at generated LSNs.
                     own_body={"POST /v1/tenant/{tenant_id}/timeline":
                               lambda body: {**body, "ancestor_timeline_id": timeline}})
    safekeeper = Api("safekeeper", f"http://127.0.0.1:{sk.http_port}", auth.admin_token(), sk_state,
                     {"tenant_id": tenant, "timeline_id": timeline}, {timeline_path})
    try:
        fuzz_all([pageserver, safekeeper], report_figure)
    finally:
        assert ps.running, f"the pageserver exited:\n{ps.log[-5000:]}"
        assert sk.running, f"the safekeeper exited:\n{sk.log[-5000:]}"
    for api in (pageserver, safekeeper):
        assert_alive(api)
        # What no generated case sends: a path segment that is not UTF-8.
        r = http_session().get(f"{api.base_url}/v1/tenant/%FF/timeline/{timeline}",
                               headers=auth.bearer(api.admin_token), timeout=10)
        assert r.status_code == 400 and "UTF-8" in r.json()["error"], (api.name, r.status_code, r.text)
    assert ps.get(f"/v1/tenant/{tenant}/timeline/{timeline}").status_code == 200
    assert sk.get(f"/v1/tenant/{tenant}/timeline/{timeline}").status_code == 200
    for line in ps.log.splitlines() + sk.log.splitlines():
        assert "panicked" not in line, line


def endpoint_http_port(nl: NeonLocal, name: str) -> int:
    conf = (nl.repo_dir / "endpoints" / name / "endpoint.toml").read_text()
    m = re.search(r"^http_port = (\d+)", conf, re.M)
    assert m, conf
    return int(m[1])


def test_openapi_compute_and_control_plane(neon_env_builder: NeonEnvBuilder, report_figure):
    """compute_ctl of a running endpoint and neon_local's control plane,
    with neon_local's tokens."""
    neon_env_builder.num_safekeepers = 1
    nl = neon_env_builder.neon_local()
    nl.run("start")
    nl.run("tenant", "create", "--set-default")
    nl.run("endpoint", "create", "main")
    pg_port = started_endpoint_port(nl.run("endpoint", "start", "main").stdout)
    admin = nl.token()
    compute_url = f"http://127.0.0.1:{endpoint_http_port(nl, 'main')}"
    cp_url = f"http://{nl.http['control_plane']}"

    def compute_state():
        s = http_session().get(f"{compute_url}/status", headers=auth.bearer(admin), timeout=10).json()
        keep = ("status", "tenant_id", "timeline_id", "mode", "pg_port", "postgres_pid", "start_time", "start_lsn",
                "error")
        return {k: s[k] for k in keep}

    def endpoints_state():
        endpoints = {p.parent.name: p.read_text() for p in sorted(nl.repo_dir.glob("endpoints/*/endpoint.toml"))}
        return endpoints, (nl.repo_dir / "state.toml").read_text(), compute_state()

    # The running compute's own spec with generated roles, databases,
    # delta operations and settings: applied to it.
    spec = http_session().get(f"{cp_url}/v1/computes/main/spec", headers=auth.bearer(admin), timeout=60).json()
    changes = ("roles", "databases", "delta_operations", "settings")
    compute = Api("compute_ctl", compute_url, admin, compute_state, not_authorized={"POST /terminate"},
                  own_body={"POST /configure": lambda body: {**spec, **{k: body[k] for k in changes if k in body}}})
    control_plane = Api("control_plane", cp_url, admin, endpoints_state, {"compute_id": "main"})
    before = compute_state()
    assert before["status"] == "running", before
    try:
        fuzz_all([compute, control_plane], report_figure)
    finally:
        for log in (nl.repo_dir / "control_plane" / "control_plane.log",
                    nl.repo_dir / "endpoints" / "main" / "compute_ctl.log"):
            text = log.read_text()
            assert "panicked" not in text, f"{log}:\n{text[-5000:]}"

    for api in (compute, control_plane):
        assert_alive(api)
    assert compute_state() == before
    assert pg_port == before["pg_port"]
    nl.run("stop")
