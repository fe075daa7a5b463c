"""Stock PostgreSQL starts from a fabricated start point.

A cleanly shut down cluster gets its pg_wal and pg_control replaced by a
segment that holds one fabricated shutdown-checkpoint record and a control
file pointing at it; unmodified postgres must start without recovery, keep
its data and accept writes. This is how computes start from base backups.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from fixtures.lsn import SEGMENT_SIZE, lsn_int, lsn_str
from fixtures.pg import PgBin, VanillaPostgres
from fixtures.utils import run_checked


def controldata(pg_bin: PgBin, datadir: Path) -> dict[str, str]:
    out = pg_bin.run(["pg_controldata", "-D", datadir]).stdout
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.mark.parametrize("placement", ["after_last_record", "across_pages", "across_segments"])
def test_postgres_starts_from_fabricated_checkpoint(
    placement: str, vanilla_pg: VanillaPostgres, pg_bin: PgBin, neon_binpath: Path
):
    pg = vanilla_pg
    pg.initdb()
    pg.configure(["fsync = off"])
    pg.start()
    pg.sql("CREATE TABLE t (key int PRIMARY KEY, value text)")
    pg.sql("INSERT INTO t SELECT i, 'value ' || i FROM generate_series(1, 1000) i")
    pg.stop()

    before = controldata(pg_bin, pg.datadir)
    assert before["Database cluster state"] == "shut down"
    old_checkpoint = lsn_int(before["Latest checkpoint location"])

    args = [str(neon_binpath / "pg_wal_inspect"), "fabricate-start", "-D", str(pg.datadir)]
    if placement == "across_pages":
        # The 114-byte record starts 40 bytes before a page ends.
        page_end = (old_checkpoint // 8192 + 2) * 8192
        args += ["--after", lsn_str(page_end - 40)]
    elif placement == "across_segments":
        segment_end = (old_checkpoint // SEGMENT_SIZE + 2) * SEGMENT_SIZE
        args += ["--after", lsn_str(segment_end - 48)]
    out = run_checked(args).stdout
    m = re.search(r"fabricated shutdown checkpoint at (\S+) \(previous record at (\S+), ending at \S+\); new WAL starts at (\S+)", out)
    assert m, out
    checkpoint, prev, end = lsn_int(m[1]), lsn_int(m[2]), lsn_int(m[3])
    assert prev == old_checkpoint
    if placement == "across_pages":
        assert checkpoint // 8192 != (end - 1) // 8192, "record does not cross a page boundary"
    if placement == "across_segments":
        assert checkpoint // SEGMENT_SIZE != (end - 1) // SEGMENT_SIZE, "record does not cross a segment"
        assert len([p for p in (pg.datadir / "pg_wal").iterdir() if p.is_file()]) == 2

    after = controldata(pg_bin, pg.datadir)
    assert after["Database cluster state"] == "shut down"
    assert lsn_int(after["Latest checkpoint location"]) == checkpoint
    assert lsn_int(after["Latest checkpoint's REDO location"]) == checkpoint
    for field in ["Database system identifier", "Latest checkpoint's NextXID",
                  "Latest checkpoint's NextOID", "Latest checkpoint's NextMultiXactId"]:
        assert after[field] == before[field], field

    # PostgreSQL's own reader accepts the fabricated record.
    wal = sorted(p.name for p in (pg.datadir / "pg_wal").iterdir() if p.is_file())
    dump = subprocess.run([pg_bin.path("pg_waldump"), "-p", str(pg.datadir / "pg_wal"),
                           "-s", lsn_str(checkpoint), wal[0], wal[-1]],
                          capture_output=True, text=True)
    assert "desc: CHECKPOINT_SHUTDOWN" in dump.stdout, dump.stdout + dump.stderr
    assert len(dump.stdout.strip().splitlines()) == 1, dump.stdout

    pg.start()
    log = (pg.datadir.parent / f"{pg.datadir.name}.log").read_text()
    assert "database system was shut down at" in log
    assert "redo starts" not in log, "postgres ran recovery"
    assert pg.sql("SELECT count(*), sum(key) FROM t") == "1000|500500"
    pg.sql("INSERT INTO t VALUES (1001, 'after fabricated start')")
    assert pg.sql("SELECT value FROM t WHERE key = 1001") == "after fabricated start"
    # New WAL follows the fabricated record.
    assert lsn_int(pg.sql("SELECT pg_current_wal_lsn()")) > end
    pg.stop()
    pg.start()
    assert pg.sql("SELECT count(*) FROM t") == "1001"


def test_fabricate_refuses_running_cluster(vanilla_pg: VanillaPostgres, neon_binpath: Path):
    pg = vanilla_pg
    pg.initdb()
    pg.start()
    control = (pg.datadir / "global" / "pg_control").read_bytes()
    result = subprocess.run(
        [str(neon_binpath / "pg_wal_inspect"), "fabricate-start", "-D", str(pg.datadir)],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "shut the cluster down cleanly first" in result.stderr
    assert (pg.datadir / "global" / "pg_control").read_bytes() == control
    assert pg.sql("SELECT 1") == "1"
