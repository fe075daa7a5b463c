"""The WAL decoder against PostgreSQL's own: pg_waldump.

A real PostgreSQL 15 runs a workload over the common resource managers with
``wal_consistency_checking = all`` (every page-modifying record carries page
images), once per ``wal_compression`` method. Every record of the resulting
pg_wal is decoded by ``pg_wal_inspect`` and compared with pg_waldump's
``--bkp-details`` output: LSN, prev-link, resource manager, lengths, xid and
every block reference with its image. Images must decompress into sane
pages, and the records the pageserver applies itself are checked against
pg_waldump's descriptions.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures.lsn import lsn_int, lsn_str
from fixtures.pg import PgBin, VanillaPostgres
from fixtures.utils import run_checked

WORKLOAD = r"""
CREATE TABLE docs (id serial PRIMARY KEY, body text, tags text[], pt point, doc tsvector, n int);
INSERT INTO docs (body, tags, pt, doc, n)
  SELECT md5(i::text), ARRAY[md5(i::text), (i % 10)::text], point(i % 97, i % 89),
         to_tsvector('english', 'row number ' || i || ' of many rows'), i
  FROM generate_series(1, 3000) i;
CREATE INDEX docs_hash ON docs USING hash (body);
CREATE INDEX docs_tags ON docs USING gin (tags);
CREATE INDEX docs_doc ON docs USING gin (doc);
CREATE INDEX docs_gist ON docs USING gist (pt);
CREATE INDEX docs_spgist ON docs USING spgist (pt);
CREATE INDEX docs_brin ON docs USING brin (n);
CREATE INDEX docs_btree ON docs USING btree (n, body);
UPDATE docs SET n = n + 1, tags = tags || 'x'::text WHERE id % 7 = 0;
DELETE FROM docs WHERE id % 11 = 0;
INSERT INTO docs (body, tags, pt, doc, n)
  SELECT md5(i::text), ARRAY['y'], point(i, i), to_tsvector('more'), i FROM generate_series(1, 500) i;
CREATE SEQUENCE seq1;
SELECT count(nextval('seq1')) FROM generate_series(1, 200);
VACUUM docs;
VACUUM FREEZE pgbench_accounts;
SELECT * FROM docs WHERE id < 50 FOR SHARE;
CREATE TABLE trunc_me AS SELECT i FROM generate_series(1, 1000) i;
TRUNCATE trunc_me;
TRUNCATE pgbench_history;
CREATE TABLE shrink AS SELECT i FROM generate_series(1, 5000) i;
DELETE FROM shrink;
VACUUM shrink;
CREATE DATABASE db_wal_log;
CREATE DATABASE db_file_copy STRATEGY file_copy;
DROP DATABASE db_wal_log;
DROP DATABASE db_file_copy;
BEGIN;
INSERT INTO docs (body, n) VALUES ('prepared', 1);
PREPARE TRANSACTION 'p1';
COMMIT PREPARED 'p1';
BEGIN;
INSERT INTO docs (body, n) VALUES ('prepared and rolled back', 2);
PREPARE TRANSACTION 'p2';
ROLLBACK PREPARED 'p2';
CREATE TABLE sub (i int);
DO $$
BEGIN
  FOR i IN 1..300 LOOP
    BEGIN
      INSERT INTO sub VALUES (i);
      IF i % 50 = 0 THEN RAISE EXCEPTION 'roll back this one'; END IF;
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
  END LOOP;
END $$;
BEGIN;
CREATE TABLE dropped_at_commit (i int);
INSERT INTO dropped_at_commit SELECT generate_series(1, 100);
DROP TABLE dropped_at_commit;
COMMIT;
CHECKPOINT;
SELECT pg_switch_wal();
INSERT INTO docs (body, n) VALUES ('after switch', 3);
"""


@dataclass
class Block:
    """A block reference of a record, as both decoders print it."""

    id: int
    rel: str
    fork: str
    blk: int
    image: tuple | None  # (apply, hole_offset, hole_length, method, saved)


@dataclass
class Record:
    """A WAL record, as both decoders print it (``desc``: pg_waldump's only)."""

    lsn: str
    prev: str
    rmgr: str
    rec_len: int
    tot_len: int
    xid: int
    desc: str = ""
    blocks: list[Block] = field(default_factory=list)

    def key(self):
        return (self.lsn, self.prev, self.rmgr, self.rec_len, self.tot_len, self.xid,
                [(b.id, b.rel, b.fork, b.blk, b.image) for b in self.blocks])


RMGR_LINE = re.compile(
    r"^rmgr: (\S+)\s+len \(rec/tot\):\s+(\d+)/\s*(\d+), tx:\s+(\d+), "
    r"lsn: ([0-9A-F]+/[0-9A-F]+), prev ([0-9A-F]+/[0-9A-F]+), desc: (.*)$"
)
BLOCK_LINE = re.compile(
    r"^\tblkref #(\d+): rel (\d+/\d+/\d+) fork (\w+) blk (\d+)"
    r"(?: \(FPW( for WAL verification)?\); hole: offset: (\d+), length: (\d+)"
    r"(?:, compression saved: (\d+), method: (\w+))?)?$"
)


def parse_waldump(output: str) -> list[Record]:
    records: list[Record] = []
    for line in output.splitlines():
        if m := RMGR_LINE.match(line):
            records.append(Record(
                lsn=lsn_str(lsn_int(m[5])), prev=lsn_str(lsn_int(m[6])), rmgr=m[1],
                rec_len=int(m[2]), tot_len=int(m[3]), xid=int(m[4]), desc=m[7],
            ))
        elif m := BLOCK_LINE.match(line):
            image = None
            if m[6] is not None:
                apply = m[5] is None
                saved = int(m[8]) if m[8] is not None else None
                image = (apply, int(m[6]), int(m[7]), m[9], saved)
            records[-1].blocks.append(Block(int(m[1]), m[2], m[3], int(m[4]), image))
        elif line.strip():
            raise AssertionError(f"unexpected pg_waldump line: {line!r}")
    return records


def parse_ours(output: str) -> tuple[list[Record], list[dict], dict]:
    records, raw, summary = [], [], None
    for line in output.splitlines():
        obj = json.loads(line)
        if "summary" in obj:
            summary = obj["summary"]
            continue
        raw.append(obj)
        blocks = []
        for b in obj["blocks"]:
            image = None
            if img := b.get("image"):
                saved = None
                if img["compression"] is not None:
                    saved = 8192 - img["hole_length"] - img["length"]
                image = (img["apply"], img["hole_offset"], img["hole_length"], img["compression"], saved)
            blocks.append(Block(b["id"], b["rel"], b["fork"], b["blk"], image))
        records.append(Record(
            lsn=obj["lsn"], prev=obj["prev"], rmgr=obj["rmgr"], rec_len=obj["rec_len"],
            tot_len=obj["tot_len"], xid=obj["xid"], blocks=blocks,
        ))
    assert summary is not None, "pg_wal_inspect printed no summary"
    return records, raw, summary


def rel_path(rel: dict) -> str:
    if rel["spc_oid"] == 1664:
        return f"global/{rel['rel_node']}"
    return f"base/{rel['db_oid']}/{rel['rel_node']}"


def check_parsed(theirs: Record, ours: dict) -> str | None:
    """Compare what we parsed from a record with pg_waldump's description of
    it; returns a mismatch description or None."""
    parsed, desc = ours["parsed"], theirs.desc
    kind = parsed.get("kind")
    if "error" in parsed:
        return f"parse error: {parsed['error']}"
    if kind == "transaction" and "finish" in parsed:
        fin = parsed["finish"]
        m = re.search(r"; subxacts:((?: \d+)+)", desc)
        theirs_sub = [int(x) for x in m[1].split()] if m else []
        if fin["subxacts"] != theirs_sub:
            return f"subxacts {fin['subxacts']} != {theirs_sub}"
        m = re.search(r"; rels:((?: [^ ;]+)+)", desc)
        theirs_rels = m[1].split() if m else []
        ours_rels = [rel_path(r) for r in fin["dropped_rels"]]
        if ours_rels != theirs_rels:
            return f"dropped rels {ours_rels} != {theirs_rels}"
        if fin["twophase_gid"] is not None and f"gid {fin['twophase_gid']}:" not in desc:
            return f"gid {fin['twophase_gid']} not in {desc!r}"
    elif kind == "transaction" and "prepare" in parsed:
        if not desc.startswith(f"PREPARE gid {parsed['prepare']['gid']}:"):
            return f"prepare gid {parsed['prepare']['gid']} vs {desc!r}"
    elif kind == "smgr_create":
        rel = parsed["rel"]
        path = f"base/{rel['db_oid']}/{rel['rel_node']}"
        if parsed["fork"] != "main":
            path += "_" + {"fsm": "fsm", "visibilitymap": "vm", "init": "init"}[parsed["fork"]]
        if not desc.startswith("CREATE " + path):
            return f"create {path} vs {desc!r}"
    elif kind == "smgr_truncate":
        rel = parsed["rel"]
        flags = parsed["heap"] * 1 + parsed["visibility_map"] * 2 + parsed["fsm"] * 4
        expected = f"TRUNCATE base/{rel['db_oid']}/{rel['rel_node']} to {parsed['blocks']} blocks flags {flags}"
        if not desc.startswith(expected):
            return f"{expected!r} vs {desc!r}"
    elif kind == "heap":
        m = re.search(r"flags 0x([0-9A-F]{2})", desc)
        if m and int(m[1], 16) != parsed["flags"]:
            return f"heap flags {parsed['flags']:#x} vs {desc!r}"
    elif kind == "checkpoint":
        c = parsed["checkpoint"]
        epoch, xid = c["next_xid"] >> 32, c["next_xid"] & 0xFFFFFFFF
        for part in [
            f"redo {c['redo']}".replace("redo ", "redo "),
            f"xid {epoch}:{xid};",
            f"oid {c['next_oid']};",
            f"multi {c['next_multi']};",
            f"oldest xid {c['oldest_xid']} in DB {c['oldest_xid_db']};",
            f"oldest running xid {c['oldest_active_xid']};",
        ]:
            normalized = re.sub(r"redo ([0-9A-F]+)/([0-9A-F]+)",
                                lambda m: f"redo {lsn_str(lsn_int(m[1] + '/' + m[2]))}", desc)
            if part not in normalized:
                return f"{part!r} not in {desc!r}"
    elif kind == "next_oid":
        if desc.strip() != f"NEXTOID {parsed['oid']}":
            return f"next oid {parsed['oid']} vs {desc!r}"
    elif kind == "database_create_file_copy":
        expected = (f"copy dir {parsed['src_spc_oid']}/{parsed['src_db_oid']} to "
                    f"{parsed['spc_oid']}/{parsed['db_oid']}")
        if expected not in desc:
            return f"{expected!r} not in {desc!r}"
    elif kind == "database_create_wal_log":
        expected = f"create dir {parsed['spc_oid']}/{parsed['db_oid']}"
        if expected not in desc:
            return f"{expected!r} not in {desc!r}"
    elif kind == "database_drop":
        expected = "dir" + "".join(f" {s}/{parsed['db_oid']}" for s in parsed["spc_oids"])
        if expected not in desc:
            return f"{expected!r} not in {desc!r}"
    elif kind == "running_xacts":
        expected = (f"nextXid {parsed['next_xid']} latestCompletedXid {parsed['latest_completed_xid']} "
                    f"oldestRunningXid {parsed['oldest_running_xid']}")
        if expected not in desc:
            return f"{expected!r} not in {desc!r}"
    return None


def run_workload(pg: VanillaPostgres, compression: str) -> None:
    pg.initdb()
    pg.configure([
        "wal_consistency_checking = 'all'",
        f"wal_compression = {compression}",
        "max_wal_size = 4GB",
        "wal_keep_size = 4GB",
        "checkpoint_timeout = 1h",
        "max_prepared_transactions = 5",
        "fsync = off",
    ])
    pg.start()
    pg.pgbench("-i", "-s", "1", "-q")
    pg.pgbench("-c", "2", "-t", "400")
    workload = pg.datadir.parent / "workload.sql"
    workload.write_text(WORKLOAD)
    pg.pg_bin.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.connstr(), "-f", workload],
        as_pg_user=False,
    )
    pg.stop()


@pytest.mark.parametrize("compression", ["pglz", "lz4", "zstd"])
def test_wal_decoder_matches_pg_waldump(
    compression: str, vanilla_pg: VanillaPostgres, pg_bin: PgBin, neon_binpath: Path,
    test_output_dir: Path, report_figure,
):
    run_workload(vanilla_pg, compression)
    wal_dir = vanilla_pg.datadir / "pg_wal"
    segments = sorted(p.name for p in wal_dir.iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name))

    waldump = subprocess.run(
        [pg_bin.path("pg_waldump"), "--bkp-details", "-p", str(wal_dir), segments[0], segments[-1]],
        capture_output=True, text=True,
    )
    theirs = parse_waldump(waldump.stdout)
    (test_output_dir / "waldump.txt").write_text(waldump.stdout)

    ours_out = run_checked([str(neon_binpath / "pg_wal_inspect"), "dump", str(wal_dir),
                            "--chunk-size", "3001"]).stdout
    (test_output_dir / "ours.jsonl").write_text(ours_out)
    ours, raw, summary = parse_ours(ours_out)

    # Both stop at the same place: the end of valid WAL.
    m = re.search(r"invalid record length at ([0-9A-F]+/[0-9A-F]+): wanted 24, got 0", waldump.stderr)
    assert m, f"pg_waldump did not stop at the end of WAL: {waldump.stderr}"
    assert summary["end_of_wal"], summary
    assert summary["end_lsn"] == lsn_str(lsn_int(m[1])), (summary, waldump.stderr)

    mismatches = []
    for index, (a, b) in enumerate(zip(theirs, ours)):
        if a.key() != b.key():
            mismatches.append(f"record {index} at {a.lsn}:\n  pg_waldump: {a.key()}\n  ours:       {b.key()}")
    if len(theirs) != len(ours):
        mismatches.append(f"pg_waldump printed {len(theirs)} records, we decoded {len(ours)}")

    parse_mismatches = []
    checked = {}
    for a, r in zip(theirs, raw):
        problem = check_parsed(a, r)
        kind = r["parsed"].get("kind")
        checked[kind] = checked.get(kind, 0) + 1
        if problem:
            parse_mismatches.append(f"{a.lsn} {a.rmgr} {kind}: {problem}")

    rmgrs = {r.rmgr for r in theirs}
    images = sum(1 for r in theirs for b in r.blocks if b.image)
    report_figure(
        f"wal oracle [{compression}]: {len(ours)} records, {images} images, "
        f"{len(mismatches)} mismatches, {len(parse_mismatches)} parse mismatches; "
        f"rmgrs: {', '.join(sorted(rmgrs))}"
    )
    assert not mismatches, "\n".join(mismatches[:20])
    assert not parse_mismatches, "\n".join(parse_mismatches[:20])
    assert summary["bad_images"] == 0 and summary["parse_errors"] == 0, summary
    assert summary["records"] == len(theirs)
    # The workload reached every resource manager it is meant to exercise.
    for rmgr in ["XLOG", "Transaction", "Storage", "CLOG", "Database", "Standby", "Heap2",
                 "Heap", "Btree", "Hash", "Gin", "Gist", "Sequence", "SPGist", "BRIN"]:
        assert rmgr in rmgrs, f"workload produced no {rmgr} record"
    assert images > 10000
    # Records the pageserver parses itself were compared with pg_waldump.
    for kind in ["transaction", "smgr_create", "smgr_truncate", "heap", "checkpoint",
                 "database_create_file_copy", "database_create_wal_log", "database_drop",
                 "running_xacts", "next_oid"]:
        assert checked.get(kind), f"no {kind} record was checked"
    # pg_switch_wal(): decoding continued in the next segment.
    assert any(r.rmgr == "XLOG" and a.desc.startswith("SWITCH") for a, r in zip(theirs, ours))
