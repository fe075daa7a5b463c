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

Figures go to the summary and to ``test_output/bench/remote_storage.json``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from fixtures.daemons import daemon_metric as metric
from fixtures.neon_fixtures import PortDistributor, output_root, wait_until
from fixtures.pg import PgBin
from fixtures.remote_storage import S3Server
from fixtures.storage import Storage
from fixtures.wal_service import lsn_int


@pytest.fixture
def bench_storage_no_remote(neon_binpath: Path, pg_bin: PgBin, port_distributor: PortDistributor, test_output_dir: Path):
    s = Storage(neon_binpath, pg_bin, port_distributor, test_output_dir,
                pageserver_config="[background]\ninterval_seconds = 1.0\n")
    s.start()
    yield s
    s.stop()


def attach_seconds(storage: Storage, tenant: str) -> float:
    ps = storage.pageserver
    r = ps.http("POST", f"/v1/tenant/{tenant}/detach")
    assert r.status_code == 200, r.text
    t0 = time.perf_counter()
    r = ps.http("POST", f"/v1/tenant/{tenant}/attach")
    assert r.status_code == 201, r.text
    return time.perf_counter() - t0


def test_remote_storage_bench(bench_storage_no_remote: Storage, s3_server: S3Server, report_figure):
    storage, s3 = bench_storage_no_remote, s3_server
    ps = storage.pageserver
    result: dict = {"server": "moto (Python S3-protocol server) on loopback"}
    # Data first, with no remote storage configured.
    tenants = {}
    for scale in (1, 10):
        tenant = ps.create_tenant()
        timeline = ps.create_timeline(tenant)["timeline_id"]
        storage.wal_service(tenant, timeline)
        compute = storage.compute(f"c{scale}", tenant, timeline)
        compute.pg.pgbench("-i", "-s", str(scale), "-q")
        ps.wait_for_lsn(tenant, timeline, compute.insert_lsn(), timeout=600)
        compute.stop()
        r = ps.http("POST", f"/v1/tenant/{tenant}/timeline/{timeline}/checkpoint")
        assert r.ok, r.text
        tenants[scale] = (tenant, timeline)
    files = [p for p in (storage.out / "pageserver" / "tenants").rglob("*")
             if p.is_file() and p.name != "metadata" and "timelines" in p.parts]
    total = sum(p.stat().st_size for p in files)

    # Restart with remote storage: the uploaders find no index and upload
    # every layer.
    ps.proc.send_signal(signal.SIGTERM)
    assert ps.proc.wait(timeout=120) == 0
    config = ps.args[ps.args.index("--config") + 1]
    Path(config).write_text(f"remote_storage = {s3.config_toml('bench')}\n[background]\ninterval_seconds = 1.0\n")
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
    sent = metric(ps, "pageserver_remote_bytes_uploaded_total")
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
        layer_dir = storage.out / "pageserver" / "tenants" / tenant / "timelines" / timeline
        size = sum(p.stat().st_size for p in layer_dir.iterdir() if p.name != "metadata")
        attach[scale] = {"layer_mb": round(size / 1e6, 1), "attach_seconds": round(attach_seconds(storage, tenant), 2)}
        assert ps.http("GET", f"/v1/tenant/{tenant}").json()["state"] == "active"
    result["attach"] = attach
    out = output_root() / "bench"
    out.mkdir(exist_ok=True)
    (out / "remote_storage.json").write_text(json.dumps(result, indent=2))
    report_figure(f"remote storage: upload {result['upload_mb']} MB of layers in {result['upload_seconds_including_restart']} s "
                  f"(pageserver restart included) = {result['upload_mb_per_s']} MB/s; boto3 put_object of the same files, "
                  f"one at a time, {result['boto3_put_mb_per_s']} MB/s ({result['upload_ratio_to_boto3']}x)")
    report_figure("remote storage: attach " + ", ".join(
        f"{v['layer_mb']} MB of layers in {v['attach_seconds']} s" for v in attach.values()))
