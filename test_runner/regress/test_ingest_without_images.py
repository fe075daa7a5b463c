"""A stock PostgreSQL 15 compute with ``wal_consistency_checking`` off
entirely, and only heap tables, B-tree indexes and sequences, is ingested
correctly: its WAL then carries page images only for the first change of
a page after a checkpoint, so nearly every heap, heap2 and B-tree record
must be redone by the pageserver itself (libs/pg_redo). A base backup at
the end of each phase of a deterministic workload (COPY, bulk and single
inserts, HOT and non-HOT updates, deletes, row locks and MultiXacts,
aborted transactions, INSERT ... ON CONFLICT, TOAST, B-tree splits, page
deletion and deduplication, VACUUM with heap truncation, VACUUM FREEZE, an
index build) gives exactly the query results vanilla PostgreSQL gives
after the same phase, read through the heap and through the B-trees
(index and index-only scans), and pg_amcheck finds nothing wrong. No WAL
record is left without an image or a redo, and no read fails. That the
WAL really lacks images is checked too: ``SHOW wal_consistency_checking``
is empty on the compute, and pg_walinspect finds images on under a tenth
of its heap and B-tree records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fixtures.compute import Compute
from fixtures.lsn import lsn_str
from fixtures.neon_fixtures import NeonEnv
from fixtures.pg import VanillaPostgres
from regress.test_pageserver_faults import amcheck, new_timeline, run_script

# Generous: ingest runs while other tests load this machine (~60 s for its
# ~35 MB of WAL in a debug build at load 7).
INGEST_TIMEOUT = 300

# No page images beyond full_page_writes'. No checkpoint in the workload on
# either server (a timed one could fall between two phases on one server
# only): a sequence's WAL then logs the same value ahead on both.
NO_IMAGES = ["wal_consistency_checking = ''", "wal_compression = lz4", "checkpoint_timeout = '1h'"]
VANILLA_SETTINGS = ["fsync = off", "checkpoint_timeout = '1h'"]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def copy_events(first: int, last: int) -> str:
    """COPY of events ``first``..``last`` (heap multi-inserts): 64-byte keys
    in md5 order, so the B-tree on them splits its internal pages too."""
    rows = []
    for i in range(first, last + 1):
        payload = r"\N" if i % 50 == 0 else "p" * (i % 40) + str(i)
        rows.append(f"{i}\t{md5(str(i))}{md5(str(i * 7 + 1))}\t{i % 37}\t{payload}")
    return "COPY events (id, k, grp, payload) FROM STDIN;\n" + "\n".join(rows) + "\n\\.\n"


# Each phase ends with a row in `phases`, committed: the phase's LSN is past it.
PHASES = [
    # 1: tables; single, multi-row and bulk inserts, COPY; TOAST; B-tree splits.
    r"""
CREATE TABLE phases (n int PRIMARY KEY);
CREATE SEQUENCE ticket_seq;
CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL, note text)
  WITH (fillfactor = 80);
CREATE INDEX accounts_owner ON accounts (owner);
INSERT INTO accounts (owner, balance, note)
  SELECT 'owner ' || lpad((g % 1009)::text, 4, '0'), g * 7 % 10007, repeat('n', g % 50)
  FROM generate_series(1, 30000) g;
INSERT INTO accounts (owner, balance) VALUES ('single', 1);
INSERT INTO accounts (owner, balance) VALUES ('single', 2), ('single', 3);
CREATE TABLE events (id int NOT NULL, k text NOT NULL, grp int NOT NULL, payload text);
CREATE INDEX events_k ON events (k);
CREATE INDEX events_grp ON events (grp);
""" + copy_events(1, 20000) + r"""
CREATE TABLE docs (id int PRIMARY KEY, title text, body text, blob text);
ALTER TABLE docs ALTER COLUMN blob SET STORAGE EXTERNAL;
INSERT INTO docs
  SELECT g, 'doc ' || g, repeat('lorem ipsum ' || g || ' ', 400 + g * 10),
         (SELECT string_agg(md5(g || '.' || i), '') FROM generate_series(1, 200 + g * 20) i)
  FROM generate_series(1, 60) g;
CREATE TABLE counters (name text PRIMARY KEY, n bigint NOT NULL, touched int NOT NULL DEFAULT 0);
INSERT INTO counters (name, n) SELECT 'c' || g, 0 FROM generate_series(1, 500) g;
SELECT setval('ticket_seq', 1000);
INSERT INTO phases VALUES (1);
""",
    # 2: HOT and non-HOT updates, deletes, row locks, MultiXacts, an abort.
    r"""
UPDATE accounts SET balance = balance + 100 WHERE id % 4 = 0;
UPDATE accounts SET note = 'hot ' || id WHERE id % 10 = 1;
UPDATE accounts SET owner = owner || '/moved' WHERE id % 9 = 0;
DELETE FROM accounts WHERE id % 11 = 0;
DELETE FROM accounts WHERE id BETWEEN 20001 AND 26000;
UPDATE events SET payload = upper(payload) WHERE id % 5 = 0;
UPDATE events SET grp = grp + 100 WHERE id % 13 = 0;
DELETE FROM events WHERE id % 17 = 0;
BEGIN;
SELECT id FROM accounts WHERE id BETWEEN 100 AND 140 ORDER BY id FOR UPDATE;
UPDATE accounts SET balance = -balance WHERE id BETWEEN 100 AND 140;
COMMIT;
-- Rows locked, then updated by a subtransaction: MultiXacts.
BEGIN;
SELECT id FROM accounts WHERE id BETWEEN 200 AND 260 ORDER BY id FOR SHARE;
SAVEPOINT s1;
UPDATE accounts SET balance = balance * 3 WHERE id BETWEEN 200 AND 230;
RELEASE SAVEPOINT s1;
SAVEPOINT s2;
SELECT id FROM accounts WHERE id BETWEEN 231 AND 260 ORDER BY id FOR KEY SHARE;
UPDATE accounts SET note = 'rolled back' WHERE id BETWEEN 231 AND 260;
ROLLBACK TO SAVEPOINT s2;
UPDATE counters SET n = n + 1 WHERE name = 'c1';
COMMIT;
BEGIN;
INSERT INTO accounts (owner, balance) SELECT 'aborted', g FROM generate_series(1, 500) g;
DELETE FROM docs WHERE id < 30;
UPDATE events SET grp = -1 WHERE id < 1000;
ROLLBACK;
INSERT INTO phases VALUES (2);
""",
    # 3: VACUUM (pruning, B-tree page deletion, visibility map); an index
    # build; INSERT ... ON CONFLICT; TOAST values replaced and deleted.
    r"""
VACUUM accounts;
VACUUM events;
CREATE INDEX accounts_balance ON accounts (balance);
INSERT INTO counters (name, n) SELECT 'c' || g, g FROM generate_series(250, 750) g
  ON CONFLICT (name) DO UPDATE SET n = counters.n + excluded.n, touched = counters.touched + 1;
INSERT INTO counters (name, n) SELECT 'c' || g, -g FROM generate_series(1, 1000, 3) g ON CONFLICT DO NOTHING;
INSERT INTO accounts (owner, balance, note) SELECT 'refill ' || g, g, 'after vacuum' FROM generate_series(1, 8000) g;
UPDATE docs SET blob = blob || md5(id::text) WHERE id % 3 = 0;
UPDATE docs SET title = title || ' (retitled)' WHERE id % 3 = 1;
DELETE FROM docs WHERE id % 7 = 0;
INSERT INTO docs SELECT g, 'late doc ' || g, repeat('x', 100), repeat(md5(g::text), 300) FROM generate_series(100, 120) g;
INSERT INTO phases VALUES (3);
""",
    # 4: VACUUM FREEZE, then changes on all-frozen pages; more COPY; a
    # sequence used by a bulk insert.
    r"""
VACUUM FREEZE accounts;
VACUUM FREEZE events;
VACUUM FREEZE docs;
UPDATE accounts SET balance = balance - 1 WHERE id % 97 = 0;
DELETE FROM events WHERE id % 101 = 0;
""" + copy_events(20001, 28000) + r"""
CREATE TABLE scratch (id int PRIMARY KEY, v text);
INSERT INTO scratch SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
INSERT INTO counters (name, n) SELECT 'ticket ' || nextval('ticket_seq'), 1 FROM generate_series(1, 50);
UPDATE counters SET touched = touched + 10 WHERE n % 2 = 0;
INSERT INTO phases VALUES (4);
""",
    # 5: the end of a heap emptied and truncated by VACUUM, then extended
    # again; row locks; more upserts; VACUUM sets visibility map bits that
    # index-only scans then trust.
    r"""
DELETE FROM scratch WHERE id > 5000;
VACUUM scratch;
INSERT INTO scratch SELECT g, 'again ' || g FROM generate_series(5001, 5500) g;
BEGIN;
SELECT id FROM accounts WHERE owner = 'owner 0007' ORDER BY id FOR NO KEY UPDATE;
UPDATE accounts SET owner = 'owner 0000', note = NULL WHERE owner = 'owner 0007';
COMMIT;
INSERT INTO accounts (owner, balance) SELECT 'tail ' || g, g FROM generate_series(1, 300) g;
INSERT INTO counters (name, n) SELECT 'c' || g, 1 FROM generate_series(700, 900) g
  ON CONFLICT (name) DO UPDATE SET n = counters.n * 2;
UPDATE events SET k = 'z' || k WHERE id % 23 = 0;
VACUUM accounts;
VACUUM events;
INSERT INTO phases VALUES (5);
""",
]

TABLES = {
    "phases": "string_agg(n::text, ',' ORDER BY n)",
    "accounts": "sum(id), sum(balance), sum(length(note))",
    "events": "sum(id), sum(grp), sum(length(payload))",
    "docs": "sum(id), sum(length(body)), sum(length(blob))",
    "counters": "sum(n), sum(touched)",
    "scratch": "sum(id)",
}
SEQUENCES = ["accounts_id_seq", "ticket_seq"]
# Read through the B-trees (index scans, index-only scans that trust the
# visibility map), never a heap scan.
INDEX_SCANS_ONLY = "SET enable_seqscan = off; SET enable_bitmapscan = off; "
INDEX_QUERIES = {
    "accounts pkey": ("accounts", "SELECT count(*), sum(id) FROM accounts WHERE id BETWEEN 5000 AND 28000"),
    "accounts owner": ("accounts", "SELECT count(*), md5(string_agg(id::text, ',' ORDER BY id)) FROM accounts "
                                   "WHERE owner >= 'owner 05' AND owner < 'owner 07'"),
    "accounts balance": ("accounts", "SELECT count(*), sum(id) FROM accounts WHERE balance BETWEEN 1000 AND 2000"),
    "events k": ("events", "SELECT count(*), sum(id), sum(length(payload)) FROM events WHERE k >= '8' AND k < 'c'"),
    "events grp": ("events", "SELECT count(*), sum(id) FROM events WHERE grp IN (3, 7, 113)"),
    "docs pkey": ("docs", "SELECT count(*), md5(string_agg(blob, '' ORDER BY id)) FROM docs WHERE id BETWEEN 10 AND 50"),
    "counters pkey": ("counters", "SELECT count(*), sum(n), sum(touched) FROM counters WHERE name >= 'c5'"),
    "scratch pkey": ("scratch", "SELECT count(*), sum(id) FROM scratch WHERE id BETWEEN 100 AND 9000"),
}


def snapshot(pg: VanillaPostgres) -> dict:
    """Per table: row count, sums, md5 of its rows in order; the index
    queries; each sequence's last WAL-logged value (in vanilla's memory,
    last_value + log_cnt; a compute from a base backup has what the WAL
    logged, with log_cnt 0)."""
    tables = pg.sql("SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace")
    present = set(tables.split(","))
    out = {"relations": tables}
    for table, sums in TABLES.items():
        if table in present:
            out[table] = pg.sql(f"SELECT count(*), {sums}, md5(string_agg(t::text, '|' ORDER BY t::text "
                                f"COLLATE \"C\")) FROM {table} t")
    for name, (table, query) in INDEX_QUERIES.items():
        if table in present:
            out[name] = pg.sql(INDEX_SCANS_ONLY + query).splitlines()[-1]
    for seq in SEQUENCES:
        if seq in present:
            out[seq] = pg.sql(f"SELECT last_value + log_cnt, is_called FROM {seq}")
    return out


def assert_plans_use_indexes(pg: VanillaPostgres) -> None:
    for name, (_, query) in INDEX_QUERIES.items():
        plan = pg.sql(INDEX_SCANS_ONLY + "EXPLAIN (COSTS OFF) " + query)
        assert "Index" in plan and "Seq Scan" not in plan, f"{name} reads no index:\n{plan}"


def wal_records(compute: Compute, start: int, end: int) -> dict[str, tuple[int, int]]:
    """Per resource manager, (records, records without a page image) in the
    compute's WAL [start, end)."""
    rows = compute.pg.sql(
        "SELECT resource_manager, count(*), count(*) FILTER (WHERE fpi_length = 0) "
        f"FROM pg_get_wal_records_info('{lsn_str(start)}', '{lsn_str(end)}') GROUP BY 1 ORDER BY 1")
    return {rmgr: (int(n), int(no_image)) for rmgr, n, no_image in (r.split("|") for r in rows.splitlines())}


def pageserver_errors(env: NeonEnv) -> str:
    lines = [line for line in env.pageserver.log.splitlines() if "ERROR" in line or "WARN" in line]
    return "\n".join(lines[-40:])


def test_ingest_without_images(neon_env: NeonEnv, vanilla_pg: VanillaPostgres, test_output_dir: Path,
                               report_figure):
    scripts = []
    for n, phase in enumerate(PHASES, 1):
        scripts.append(test_output_dir / f"phase{n}.sql")
        scripts[-1].write_text(phase)

    vanilla_pg.initdb()
    vanilla_pg.configure(VANILLA_SETTINGS)
    vanilla_pg.start()
    expected = []
    for script in scripts:
        run_script(vanilla_pg, script)
        expected.append(snapshot(vanilla_pg))
    vanilla_pg.stop()
    # Every phase changes what the queries see; the last sees every table.
    for n in range(1, len(expected)):
        assert expected[n]["phases"] != expected[n - 1]["phases"]
        assert expected[n]["accounts"] != expected[n - 1]["accounts"]
    assert set(expected[-1]) == {"relations", *TABLES, *INDEX_QUERIES, *SEQUENCES}, expected[-1].keys()
    assert expected[-1]["phases"].startswith("5|1,2,3,4,5|"), expected[-1]["phases"]

    env = neon_env
    tenant, timeline = new_timeline(env)
    main = env.compute("main", tenant, timeline, settings=NO_IMAGES)
    # Else the WAL would carry images and this would prove nothing.
    assert main.pg.sql("SHOW wal_consistency_checking") == ""
    main.pg.sql("CREATE EXTENSION pg_walinspect")
    start = main.flush_lsn()
    lsns = []
    for script in scripts:
        run_script(main.pg, script)
        # Past the phase's last commit (synchronous: flushed before it returned).
        lsns.append(main.flush_lsn())

    # Nearly all heap and B-tree records carry no image: the pageserver
    # must redo them.
    records = wal_records(main, start, lsns[-1])
    report_figure(f"test_ingest_without_images: WAL records (all, without image): {records}")
    for rmgr in ["Heap", "Heap2", "Btree"]:
        total, no_image = records.get(rmgr, (0, 0))
        assert no_image >= 1000 and no_image >= 0.9 * total, (rmgr, records)
    assert set(records) <= {"Heap", "Heap2", "Btree", "Sequence", "XLOG", "Transaction", "Storage", "Standby",
                            "CLOG", "MultiXact", "RelMap"}, records
    assert records.get("MultiXact", (0, 0))[0] > 0, records
    env.pageserver.wait_for_lsn(tenant, timeline, lsns[-1], INGEST_TIMEOUT)

    for n, (lsn, want) in enumerate(zip(lsns, expected), 1):
        at = env.compute(f"phase{n}", tenant, timeline, lsn=lsn, walproposer=False, settings=NO_IMAGES)
        got = snapshot(at.pg)
        diff = {k: (want.get(k), got.get(k)) for k in {*want, *got} if want.get(k) != got.get(k)}
        assert not diff, (f"phase {n} at {lsn_str(lsn)}: (vanilla, base backup) differ: {diff}\n"
                          f"pageserver log:\n{pageserver_errors(env)}")
        if n == len(lsns):
            assert_plans_use_indexes(at.pg)
        amcheck(at)
        at.stop()

    ps = env.pageserver
    assert ps.metric("pageserver_unhandled_wal_records_total") == 0, pageserver_errors(env)
    assert ps.metric("pageserver_unreadable_page_reads_total") == 0, pageserver_errors(env)
