"""Throughput of the Rust redo alone (``libs/pg_redo``), outside the
pageserver.

The redo oracle's workload (``regress/test_redo_oracle.py``: pgbench,
B-tree splits and deletions, TOAST, COPY, row locks, VACUUM, sequences)
runs on a vanilla PostgreSQL 15 with ``wal_consistency_checking = all``;
``redo_oracle`` then replays all of its WAL, applying the Rust redo to the
page each record's block had before it. Only the time inside the redo
routine is counted (decoding, image restoring and comparison are not),
over the records redone; their bytes are the records without their page
images, i.e. the WAL a pageserver stores and applies for them. Reported:
records per second and MB of WAL per second, and the number of records
and block applications they come from. Figures go to the summary and to
``test_output/bench/redo.json``; timings are never asserted, correctness
is (zero mismatches, as in the oracle test).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from fixtures.neon_fixtures import output_root
from fixtures.pg import VanillaPostgres
from regress.test_redo_oracle import run_workload


def test_redo_throughput(vanilla_pg: VanillaPostgres, neon_binpath: Path, test_output_dir: Path,
                         report_figure):
    run_workload(vanilla_pg, test_output_dir)
    wal_dir = vanilla_pg.datadir / "pg_wal"
    proc = subprocess.run([str(neon_binpath / "redo_oracle"), str(wal_dir), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"redo_oracle failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout[-2000:]}"
    report = json.loads(proc.stdout)
    redo = report["redo"]
    assert report["total"]["mismatched"] == 0 and redo["records"] > 0, report["total"]
    result = {
        "records_redone": redo["records"],
        "block_applications": redo["blocks"],
        "wal_mb_without_images": round(redo["bytes"] / 1e6, 1),
        "redo_seconds": round(redo["seconds"], 3),
        "records_per_second": round(redo["records_per_second"]),
        "mb_per_second": round(redo["megabytes_per_second"], 1),
        "oracle_seconds_total": round(report["elapsed_s"], 1),
    }
    out = output_root() / "bench"
    out.mkdir(exist_ok=True)
    (out / "redo.json").write_text(json.dumps(result, indent=2))
    report_figure(f"redo alone: {result['records_per_second']:,} records/s, {result['mb_per_second']} MB/s "
                  f"of WAL without images ({result['records_redone']:,} records, "
                  f"{result['block_applications']:,} blocks, {result['redo_seconds']} s)")
    shutil.rmtree(wal_dir, ignore_errors=True)
