"""WAL decoding throughput: pg_wal_inspect against pg_waldump on the same WAL.

pgbench writes WAL with page images on every record (as computes run, see
docs/design.md). Both tools then read all of it; each is timed over several
runs and the median is reported. pg_waldump prints every record with block
details (its output discarded); pg_wal_inspect decodes every record and parses
the records the pageserver applies, once also restoring and checking every
page image (which pg_waldump does not do), once without. Figures go to the summary and to
``test_output/bench/wal_decode.json``.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from pathlib import Path

from fixtures.lsn import SEGMENT_SIZE, lsn_int, segment_number
from fixtures.neon_fixtures import output_root
from fixtures.pg import PgBin, VanillaPostgres

RUNS = 5


def timed(cmd: list[str], check: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def test_wal_decode_throughput(vanilla_pg: VanillaPostgres, pg_bin: PgBin, neon_binpath: Path, report_figure):
    pg = vanilla_pg
    pg.initdb()
    pg.configure([
        "wal_consistency_checking = 'all'", "wal_compression = lz4", "max_wal_size = 4GB",
        "wal_keep_size = 4GB", "fsync = off",
    ])
    pg.start()
    pg.pgbench("-i", "-s", "5", "-q")
    pg.pgbench("-c", "4", "-T", "20")
    pg.stop()

    wal_dir = pg.datadir / "pg_wal"
    segments = sorted(p for p in wal_dir.iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name))
    summary = json.loads(subprocess.run(
        [str(neon_binpath / "pg_wal_inspect"), "dump", "--summary-only", str(wal_dir)],
        check=True, capture_output=True, text=True).stdout)["summary"]
    first_lsn = segment_number(segments[0].name) * SEGMENT_SIZE
    wal_bytes = lsn_int(summary["end_lsn"]) - first_lsn

    inspect = [str(neon_binpath / "pg_wal_inspect"), "dump", "--summary-only", str(wal_dir)]
    ours = [timed(inspect) for _ in range(RUNS)]
    ours_no_images = [timed(inspect + ["--no-image-check"]) for _ in range(RUNS)]
    theirs = [timed([pg_bin.path("pg_waldump"), "-b", "-p", str(wal_dir), segments[0].name,
                     segments[-1].name], check=False)  # exits 1 at the end of WAL
              for _ in range(RUNS)]
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    ours_no_images_s = statistics.median(ours_no_images)
    result = {
        "records": summary["records"],
        "images": summary["images"],
        "wal_mb": round(wal_bytes / 1e6, 1),
        "pg_wal_inspect_mb_per_s": round(wal_bytes / 1e6 / ours_s, 1),
        "pg_wal_inspect_no_image_check_mb_per_s": round(wal_bytes / 1e6 / ours_no_images_s, 1),
        "pg_waldump_mb_per_s": round(wal_bytes / 1e6 / theirs_s, 1),
        "speed_ratio_to_pg_waldump": round(theirs_s / ours_s, 2),
        "speed_ratio_to_pg_waldump_no_image_check": round(theirs_s / ours_no_images_s, 2),
    }
    out = output_root() / "bench"
    out.mkdir(exist_ok=True)
    (out / "wal_decode.json").write_text(json.dumps(result, indent=2))
    report_figure(f"wal decode: {json.dumps(result)}")
    assert summary["bad_images"] == 0 and summary["end_of_wal"]
