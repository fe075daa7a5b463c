"""The Rust redo (``libs/pg_redo``) against PostgreSQL's own page images.

A stock PostgreSQL 15 runs with ``wal_consistency_checking = all``: every
record that modifies a page carries an image of the page as it is after the
record. The workload below reaches every record type of the heap, heap2,
B-tree and sequence resource managers that a pageserver meets (plus XLOG
full-page images), and keeps all of its WAL. ``redo_oracle`` then replays
the WAL: for every imaged block it runs the Rust redo on the page as the
previous record left it, masks both pages as PostgreSQL's
``verifyBackupPageConsistency`` does and compares them.

Settings: ``wal_level = replica``, ``full_page_writes = on``, ``wal_log_hints
= on`` (for XLOG/FPI_FOR_HINT), ``wal_compression = lz4`` (about 1 GB of WAL
instead of 2.5), autovacuum off (the workload vacuums where it wants), and
``wal_keep_size`` large enough that no segment is recycled: the oracle reads
all WAL from initdb on. Heap ``TRUNCATE`` and heap2 ``NEW_CID``/``REWRITE``
need ``wal_level = logical`` and are not reached.

The test asserts: no mismatch, at least 200,000 records redone and compared,
and every listed record type reached (and redone, where it has blocks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

# Record types the workload must reach. Those in BLOCKLESS reference no
# page: there is nothing to redo and compare.
REQUIRED_TYPES = [
    "Heap/INSERT", "Heap/INSERT+INIT", "Heap/DELETE", "Heap/UPDATE", "Heap/UPDATE+INIT",
    "Heap/HOT_UPDATE", "Heap/LOCK", "Heap/CONFIRM", "Heap/INPLACE",
    "Heap2/PRUNE", "Heap2/VACUUM", "Heap2/FREEZE_PAGE", "Heap2/VISIBLE", "Heap2/MULTI_INSERT",
    "Heap2/MULTI_INSERT+INIT", "Heap2/LOCK_UPDATED",
    "Btree/INSERT_LEAF", "Btree/INSERT_UPPER", "Btree/INSERT_META", "Btree/SPLIT_L",
    "Btree/SPLIT_R", "Btree/INSERT_POST", "Btree/DEDUP", "Btree/DELETE", "Btree/VACUUM",
    "Btree/MARK_PAGE_HALFDEAD", "Btree/UNLINK_PAGE", "Btree/UNLINK_PAGE_META",
    "Btree/NEWROOT", "Btree/META_CLEANUP", "Btree/REUSE_PAGE",
    "Sequence/LOG", "XLOG/FPI", "XLOG/FPI_FOR_HINT",
]
BLOCKLESS = {"Btree/REUSE_PAGE"}
MIN_REDONE = 200_000

# Run in one session, in order. Comments say which records each part is for.
WORKLOAD = r"""
-- B-tree growth with wide keys in random order: leaf and inner page
-- splits (SPLIT_L, SPLIT_R), downlinks (INSERT_UPPER), new roots (NEWROOT).
CREATE TABLE wide (id int, k text);
CREATE INDEX wide_k ON wide (k);
INSERT INTO wide SELECT i, repeat(md5(i::text), 6) FROM generate_series(1, 12000) i ORDER BY random();

-- Duplicates: deduplication (DEDUP); after vacuum, new rows land in freed
-- heap slots, inside existing posting lists (INSERT_POST).
CREATE TABLE dup (id serial, k int, pad text);
CREATE INDEX dup_k ON dup (k);
INSERT INTO dup (k, pad) SELECT i % 10, 'x' FROM generate_series(1, 20000) i;
DELETE FROM dup WHERE id % 3 = 0;
VACUUM dup;
INSERT INTO dup (k, pad) SELECT i % 10, 'y' FROM generate_series(1, 4000) i;

-- Version churn on an unchanged key: bottom-up deletion (Btree/DELETE);
-- non-HOT updates onto new pages (UPDATE, UPDATE+INIT).
CREATE TABLE bu (id int PRIMARY KEY, v int, w int);
CREATE INDEX bu_v ON bu (v);
INSERT INTO bu SELECT i, i, 0 FROM generate_series(1, 4000) i;
UPDATE bu SET v = v + 1;
UPDATE bu SET v = v + 1;
UPDATE bu SET v = v + 1;
UPDATE bu SET v = v + 1;

-- HOT updates and pruning.
CREATE TABLE hot (id int PRIMARY KEY, v int) WITH (fillfactor = 50);
INSERT INTO hot SELECT i, 0 FROM generate_series(1, 3000) i;
UPDATE hot SET v = v + 1;
UPDATE hot SET v = v + 1;
UPDATE hot SET v = v + 1;

-- Page deletion: empty leaves become half-dead and are unlinked, the last
-- one beside the rightmost leaf with a metapage update; vacuum cleanup.
CREATE TABLE del (id int PRIMARY KEY, pad text);
INSERT INTO del SELECT i, 'p' FROM generate_series(1, 20000) i;
DELETE FROM del WHERE id <= 19900;
VACUUM del;

-- TOAST: external values, updated and deleted.
CREATE TABLE toasty (id int PRIMARY KEY, t text);
ALTER TABLE toasty ALTER t SET STORAGE EXTERNAL;
INSERT INTO toasty SELECT i, repeat(md5(i::text), 150) FROM generate_series(1, 400) i;
UPDATE toasty SET t = t || 'x' WHERE id % 4 = 0;
DELETE FROM toasty WHERE id % 5 = 0;

-- COPY into a table with an index: buffered multi-inserts.
CREATE TABLE copied (n int, m text);
CREATE INDEX copied_n ON copied (n);
COPY copied (n) FROM PROGRAM 'seq 1 20000';
-- Hint bits set on pages not logged since the checkpoint (wal_log_hints):
-- XLOG/FPI_FOR_HINT.
CHECKPOINT;
SELECT count(*) FROM copied;

-- Speculative insertion: INSERT ... ON CONFLICT (CONFIRM), with conflicts.
CREATE TABLE upsert (k int PRIMARY KEY, n int);
INSERT INTO upsert SELECT i, 0 FROM generate_series(1, 2000) i
  ON CONFLICT (k) DO UPDATE SET n = upsert.n + 1;
INSERT INTO upsert SELECT i, 0 FROM generate_series(1500, 3000) i
  ON CONFLICT (k) DO UPDATE SET n = upsert.n + 1;
INSERT INTO upsert SELECT i, 0 FROM generate_series(2500, 3500) i ON CONFLICT DO NOTHING;

-- Sequences.
CREATE SEQUENCE seq1 CACHE 1;
SELECT count(nextval('seq1')) FROM generate_series(1, 500);
SELECT setval('seq1', 10000);
ALTER SEQUENCE seq1 INCREMENT BY 7;
SELECT nextval('seq1');

-- SELECT ... FOR UPDATE, then update.
BEGIN;
SELECT count(*) FROM (SELECT * FROM hot WHERE id <= 300 FOR UPDATE) s;
UPDATE hot SET v = v + 100 WHERE id <= 300;
COMMIT;

-- Index builds (log_newpage: XLOG/FPI).
CREATE INDEX wide_id ON wide (id);
CREATE INDEX dup_pad ON dup (pad, id);
"""

# After the concurrent row locks: vacuum everything, freeze, and grow the
# emptied index again (recycled pages: REUSE_PAGE; a split of the fast
# root: INSERT_META).
WORKLOAD_END = r"""
VACUUM;
VACUUM del;
INSERT INTO del SELECT i, 'q' FROM generate_series(1, 12000) i;
DELETE FROM bu WHERE id % 2 = 0;
VACUUM bu;
VACUUM FREEZE;
CHECKPOINT;
"""

# pgbench scripts on a small table, four clients: shared and key-share
# locks meeting (multixacts), locks then updates, key-share locks meeting
# non-key updates in progress (LOCK_UPDATED).
LOCK_SCRIPTS = {
    "share.sql": "\\set id random(1, 40)\nBEGIN;\nSELECT v FROM locks WHERE id = :id FOR SHARE;\n"
                 "\\sleep 1 ms\nCOMMIT;\n",
    "keyshare.sql": "\\set id random(1, 40)\nBEGIN;\nSELECT v FROM locks WHERE id = :id FOR KEY SHARE;\n"
                    "\\sleep 1 ms\nCOMMIT;\n",
    "forupdate.sql": "\\set id random(1, 40)\nBEGIN;\nSELECT v FROM locks WHERE id = :id FOR UPDATE;\n"
                     "UPDATE locks SET v = v + 1 WHERE id = :id;\nCOMMIT;\n",
    "nokeyupdate.sql": "\\set id random(1, 40)\nBEGIN;\nUPDATE locks SET w = w + 1 WHERE id = :id;\n"
                       "\\sleep 2 ms\nCOMMIT;\n",
}


def psql(pg, *args: str, background: bool = False):
    """Run psql on the server; in the background, return its process."""
    args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.connstr(), *args]
    if background:
        return subprocess.Popen([pg.pg_bin.path("psql"), *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    return pg.pg_bin.run(["psql", *args], as_pg_user=False)


def wait_for_sleepers(pg, count: int, timeout: float = 30.0) -> None:
    """Wait until `count` other sessions sit in pg_sleep (holding their locks)."""
    deadline = time.monotonic() + timeout
    query = ("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
             "AND query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()")
    while int(pg.sql(query)) < count:
        assert time.monotonic() < deadline, f"sessions did not reach pg_sleep: {pg.sql(query)}"
        time.sleep(0.05)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def row_locks(pg, scripts_dir: Path) -> None:
    """Row locks from several sessions: multixacts, locks on updated tuples."""
    pg.sql("CREATE TABLE locks (id int PRIMARY KEY, v int, w int); "
           "INSERT INTO locks SELECT i, 0, 0 FROM generate_series(1, 300) i")
    # Deterministic: a non-key update in progress, met by key-share lockers
    # (the new versions get locked: LOCK_UPDATED) and by shared lockers.
    updater = psql(pg, "-c", "BEGIN", "-c", "UPDATE locks SET w = w + 1 WHERE id > 200",
                   "-c", "SELECT pg_sleep(1)", "-c", "COMMIT", background=True)
    wait_for_sleepers(pg, 1)
    pg.sql("SELECT count(*) FROM (SELECT * FROM locks WHERE id > 200 FOR KEY SHARE) s")
    finish(updater)
    # Two sessions share-lock the same rows (a multixact), a third adds key
    # share locks, a fourth updates once they are gone.
    holders = [
        psql(pg, "-c", "BEGIN", "-c", f"SELECT count(*) FROM (SELECT * FROM locks WHERE id <= 200 {mode}) s",
             "-c", "SELECT pg_sleep(1)", "-c", "COMMIT", background=True)
        for mode in ["FOR SHARE", "FOR SHARE", "FOR KEY SHARE"]
    ]
    wait_for_sleepers(pg, 3)
    pg.sql("UPDATE locks SET v = v + 1 WHERE id <= 200")
    for proc in holders:
        finish(proc)
    # Random contention from four clients.
    args = []
    for name, text in LOCK_SCRIPTS.items():
        (scripts_dir / name).write_text(text)
        args += ["-f", str(scripts_dir / name)]
    pg.pgbench("-n", "-c", "4", "-j", "2", "-t", "150", *args)


def run_workload(pg, out: Path) -> dict[str, float]:
    timings = {}
    start = time.monotonic()
    pg.initdb()
    pg.configure([
        "wal_consistency_checking = 'all'",
        "full_page_writes = on",
        "wal_level = replica",
        # Smaller WAL: lz4 images decompress fast in the oracle.
        "wal_compression = lz4",
        "wal_log_hints = on",
        # Keep every segment: the oracle needs all WAL from the start.
        "max_wal_size = 20GB",
        "wal_keep_size = 20GB",
        "checkpoint_timeout = 1h",
        "autovacuum = off",
        "fsync = off",
        "synchronous_commit = off",
        "shared_buffers = 128MB",
    ])
    pg.start()
    timings["start"] = time.monotonic() - start
    pg.pgbench("-i", "-s", "1", "-q")
    pg.pgbench("-n", "-c", "2", "-j", "2", "-t", "1000")
    timings["pgbench"] = time.monotonic() - start
    (out / "workload.sql").write_text(WORKLOAD)
    psql(pg, "-f", str(out / "workload.sql"))
    timings["workload"] = time.monotonic() - start
    row_locks(pg, out)
    timings["row_locks"] = time.monotonic() - start
    (out / "workload_end.sql").write_text(WORKLOAD_END)
    psql(pg, "-f", str(out / "workload_end.sql"))
    pg.stop()
    timings["done"] = time.monotonic() - start
    return timings


def format_table(result: dict) -> str:
    lines = [f"{'record type':<28} {'records':>8} {'redone':>8} {'matched':>8} {'mismatch':>8} "
             f"{'no redo':>8} {'unchkd':>8}"]
    rows = list(result["types"].items()) + [("TOTAL", result["total"])]
    for name, s in rows:
        lines.append(f"{name:<28} {s['records']:>8} {s['redone']:>8} {s['matched']:>8} "
                     f"{s['mismatched']:>8} {s['no_redo']:>8} {s['unchecked']:>8}")
    return "\n".join(lines)


def test_redo_matches_postgres(vanilla_pg, neon_binpath: Path, test_output_dir: Path, report_figure):
    timings = run_workload(vanilla_pg, test_output_dir)
    wal_dir = vanilla_pg.datadir / "pg_wal"

    oracle = neon_binpath / "redo_oracle"
    assert oracle.exists(), f"{oracle} not found: run `cargo build --bins`"
    started = time.monotonic()
    proc = subprocess.run([str(oracle), str(wal_dir), "--json"],
                          capture_output=True, text=True)
    timings["oracle"] = time.monotonic() - started
    assert proc.returncode in (0, 1), f"redo_oracle failed ({proc.returncode}):\n{proc.stderr}"
    result = json.loads(proc.stdout)
    (test_output_dir / "oracle.json").write_text(proc.stdout)
    table = format_table(result)
    (test_output_dir / "oracle.txt").write_text(table + "\n")
    print(table)
    print("timings (cumulative s):", {k: round(v, 1) for k, v in timings.items()})

    assert result["end_of_wal"], f"WAL reading stopped early: {result['end_error']}"
    assert result["decode_errors"] == 0 and result["bad_images"] == 0, result

    types, total = result["types"], result["total"]
    report_figure(f"redo oracle: {total['redone']} records redone and compared with PostgreSQL's images, "
                  f"{total['mismatched']} mismatched, over {len(types)} record types")
    redo = result["redo"]
    report_figure(f"redo alone (this build): {redo['records_per_second']:,.0f} records/s, "
                  f"{redo['megabytes_per_second']:.1f} MB/s of WAL without images "
                  f"({redo['records']} records, {redo['seconds']:.2f} s)")
    problems = []
    missing = [t for t in REQUIRED_TYPES if types.get(t, {}).get("records", 0) == 0]
    if missing:
        problems.append(f"the workload reached no record of: {', '.join(missing)}")
    if total["mismatched"] > 0:
        by_type = {n: s["mismatched"] for n, s in types.items() if s["mismatched"]}
        shown = "\n  ".join(m["description"] for m in result["mismatches"][:20])
        problems.append(f"{total['mismatched']} records mismatched {by_type}; the first:\n  {shown}")
    not_redone = [t for t in REQUIRED_TYPES
                  if t not in BLOCKLESS and types.get(t, {}).get("redone", 0) == 0]
    if not_redone:
        problems.append(f"no record redone and compared of: {', '.join(not_redone)}")
    if total["redone"] < MIN_REDONE:
        no_redo = {n: s["no_redo"] for n, s in types.items() if s["no_redo"]}
        problems.append(f"only {total['redone']} records redone and compared, wanted {MIN_REDONE}; "
                        f"without redo: {no_redo}")
    assert not problems, "\n".join(problems) + "\n" + table
    # Passed: drop the WAL (about 1 GB); a failed run keeps it for inspection.
    shutil.rmtree(wal_dir, ignore_errors=True)
