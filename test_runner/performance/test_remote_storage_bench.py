"""Remote storage figures, against the S3-protocol server of the tests (moto,
on loopback):

1. Upload throughput: a pageserver holding the layers of ``pgbench -i`` at
   scales 1 and 10 restarts with remote storage configured and uploads
   them all; bytes (its upload counter) over the time from the restart to
   every remote consistent LSN reaching the disk-consistent one. The
   reference is boto3 ``put_object`` of the same files to the same server,
   one at a time, as a ratio.
2. Attach time against data size: detach, then attach (downloading every
   layer), at scale 1 and at scale 10.

Figures go to the summary and to ``test_output/bench/remote_env.json``.
"""

from __future__ import annotations

import json
import time

import pytest

from fixtures.lsn import lsn_int
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder, output_root
from fixtures.utils import wait_until


@pytest.fixture
def bench_env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """The default cluster and an S3 server, which the pageserver does not use yet."""
    neon_env_builder.enable_remote_storage(pageserver_prefix=None)
    neon_env_builder.pageserver_config = "[background]\ninterval_seconds = 1.0\n"
    return neon_env_builder.init_start()


def attach_seconds(env: NeonEnv, tenant: str) -> float:
    ps = env.pageserver
    r = ps.http("POST", f"/v1/tenant/{tenant}/detach")
    assert r.status_code == 200, r.text
    t0 = time.perf_counter()
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach")
    assert r.status_code == 201, r.text
    return time.perf_counter() - t0


def test_remote_storage_bench(bench_env: NeonEnv, report_figure):
    env, s3 = bench_env, bench_env.s3
    ps = env.pageserver
    result: dict = {"server": "moto (Python S3-protocol server) on loopback"}
    # Data first, with no remote storage configured.
    tenants = {}
    for scale in (1, 10):
        tenant = ps.create_tenant()
        timeline = ps.create_timeline(tenant)["timeline_id"]
        env.wal_service(tenant, timeline)
        compute = env.compute(f"c{scale}", tenant, timeline)
        compute.pg.pgbench("-i", "-s", str(scale), "-q")
        ps.wait_for_lsn(tenant, timeline, compute.insert_lsn(), timeout=600)
        compute.stop()
        r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
        assert r.ok, r.text
        tenants[scale] = (tenant, timeline)
    files = [p for p in (ps.workdir / "tenants").rglob("*")
             if p.is_file() and p.name != "metadata" and "timelines" in p.parts]
    total = sum(p.stat().st_size for p in files)

    # Restart with remote storage: the uploaders find no index and upload
    # every layer.
    assert ps.stop() == 0
    ps.config_path.write_text(f"remote_storage = {s3.config_toml('bench')}\n[background]\ninterval_seconds = 1.0\n")
    t0 = time.perf_counter()
    ps.start()

    def uploaded() -> bool:
        for tenant, timeline in tenants.values():
            info = ps.timeline(tenant, timeline)
            if lsn_int(info["remote_consistent_lsn"]) < lsn_int(info["disk_consistent_lsn"]):
                return False
        return True

    wait_until("every layer uploaded", uploaded, 600, 0.05)
    seconds = time.perf_counter() - t0
    sent = ps.metric("pageserver_remote_bytes_uploaded_total")
    assert sent >= total * 0.9, (sent, total)
    t0 = time.perf_counter()
    for p in files:
        s3.client.put_object(Bucket=s3.bucket, Key=f"reference/{p.name}", Body=p.read_bytes())
    ref = time.perf_counter() - t0
    result.update({
        "upload_mb": round(sent / 1e6, 1),
        "upload_seconds_including_restart": round(seconds, 2),
        "upload_mb_per_s": round(sent / 1e6 / seconds, 1),
        "boto3_put_mb_per_s": round(total / 1e6 / ref, 1),
        "upload_ratio_to_boto3": round((sent / seconds) / (total / ref), 2),
    })
    attach = {}
    for scale, (tenant, timeline) in tenants.items():
        layer_dir = ps.workdir / "tenants" / tenant / "timelines" / timeline
        size = sum(p.stat().st_size for p in layer_dir.iterdir() if p.name != "metadata")
        attach[scale] = {"layer_mb": round(size / 1e6, 1), "attach_seconds": round(attach_seconds(env, tenant), 2)}
        assert ps.http("GET", f"/v1/tenant/{tenant}").json()["state"] == "active"
    result["attach"] = attach
    out = output_root() / "bench"
    out.mkdir(exist_ok=True)
    (out / "remote_env.json").write_text(json.dumps(result, indent=2))
    report_figure(f"remote storage: upload {result['upload_mb']} MB of layers in {result['upload_seconds_including_restart']} s "
                  f"(pageserver restart included) = {result['upload_mb_per_s']} MB/s; boto3 put_object of the same files, "
                  f"one at a time, {result['boto3_put_mb_per_s']} MB/s ({result['upload_ratio_to_boto3']}x)")
    report_figure("remote storage: attach " + ", ".join(
        f"{v['layer_mb']} MB of layers in {v['attach_seconds']} s" for v in attach.values()))
