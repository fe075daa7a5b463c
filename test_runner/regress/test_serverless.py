"""The proxy's serverless listener (docs: the contract of issue 18): SQL
over HTTP (``POST /sql``, the shape of Neon's serverless driver) and the
PostgreSQL protocol over a WebSocket, on ``NeonLocal.serverless_port``.

Real daemons through neon_local, started as regress/test_proxy.py does
(``start_serverless``: a TLS certificate, suspend timeout ``SUSPEND``, the
role ``ROLE``). To keep the suite short, one cluster serves the whole
module (``cluster``, module scope): its tests use their own tables and
branches and do not disturb each other. Most requests go to ``STEADY``, an
endpoint on the default branch made by hand (so never suspended); the
tests of waking and routing make branches of their own. Only the
statement timeout needs its own cluster (a proxy setting); its test comes
first, so that the two clusters never run at once: two cluster starts in
all.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest
import requests

from fixtures.neon_fixtures import NeonEnvBuilder, fresh_output_dir
from fixtures.pg import PgBin
from fixtures.pg_websocket import PgWebSocket, StatementResult, ws_url
from fixtures.port_distributor import PortDistributor
from fixtures.pq import PqError, query_message
from fixtures.utils import http_session
from regress.test_proxy import ROLE, ROLE_PASSWORD, SUSPEND, Serverless, start_serverless

# An endpoint on the default branch, created and started by hand: no
# suspend timeout, and the running endpoint the default route finds.
STEADY = "steady"
MIB = 1024 * 1024
# Every error response has all of these keys (absent ones null).
ERROR_KEYS = {"message", "code", "detail", "hint", "position", "severity", "where", "table", "column",
              "constraint", "schema", "dataType", "internalPosition", "internalQuery", "file", "line", "routine"}
# The headers OPTIONS /sql must allow.
CORS_HEADERS = {"neon-connection-string", "neon-raw-text-output", "neon-array-mode", "neon-batch-isolation-level",
                "neon-batch-read-only", "neon-batch-deferrable", "neon-pool-opt-in", "authorization",
                "content-type"}


def conn_string(route: str | None = f"endpoint={STEADY}", user: str = ROLE, password: str | None = ROLE_PASSWORD,
                host: str = "127.0.0.1", dbname: str = "postgres", scheme: str = "postgresql") -> str:
    """A Neon-Connection-String; ``route`` (e.g. ``branch=b``) goes,
    percent-encoded, into ``options``; user and password are
    percent-encoded too."""
    userinfo = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    url = f"{scheme}://{userinfo}@{host}/{dbname}"
    if route is not None:
        url += "?options=" + quote(route, safe="")
    return url


def describe(resp: requests.Response) -> str:
    """The response, for assertion messages."""
    return (f"{resp.request.method} {resp.url} -> HTTP {resp.status_code} "
            f"headers {dict(resp.headers)} body {resp.text[:3000]!r}")


def same(value: object, expected: object) -> bool:
    """Equal, and of the same JSON kind (a bool is not a number, 1 is not "1")."""
    if isinstance(expected, bool) or isinstance(value, bool):
        return type(value) is type(expected) and value == expected
    if isinstance(expected, (int, float)):
        return isinstance(value, (int, float)) and value == expected
    if isinstance(expected, list):
        return isinstance(value, list) and len(value) == len(expected) and all(map(same, value, expected))
    if isinstance(expected, dict):
        return isinstance(value, dict) and value.keys() == expected.keys() and all(
            same(value[k], expected[k]) for k in expected)
    return type(value) is type(expected) and value == expected


def metric_total(metrics: str, name: str) -> float:
    """The sum of every sample of ``name`` (whatever its labels); fails
    if there is none."""
    values = [float(m[1]) for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", metrics, re.M)]
    assert values, f"metric {name} missing from the proxy's /metrics:\n" + "\n".join(
        line for line in metrics.splitlines() if "serverless" in line)
    return sum(values)


class Sql:
    """SQL over HTTP to the serverless listener of ``s``: requests carry
    ``conn_string()`` (endpoint ``STEADY``) unless told otherwise."""

    def __init__(self, s: Serverless):
        self.s = s
        self.port = s.nl.serverless_port
        assert self.port, "NeonLocal.serverless_port is not set"
        self.url = f"http://127.0.0.1:{self.port}/sql"
        self.session = http_session()

    def post(self, body: object, conn: str | None = None, headers: dict[str, str] | None = None,
             timeout: float = 180, data: bytes | None = None) -> requests.Response:
        """POST /sql with ``body`` as JSON (or the raw ``data``); ``conn``
        None means ``conn_string()``, "" means no Neon-Connection-String."""
        conn = conn_string() if conn is None else conn
        all_headers = {"Neon-Connection-String": conn} if conn else {}
        all_headers.update(headers or {})
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
            return self.session.post(self.url, data=data, headers=all_headers, timeout=timeout)
        return self.session.post(self.url, json=body, headers=all_headers, timeout=timeout)

    @staticmethod
    def ok(resp: requests.Response) -> dict:
        assert resp.status_code == 200, describe(resp)
        assert resp.headers.get("Access-Control-Allow-Origin") == "*", describe(resp)
        try:
            return resp.json()
        except ValueError:
            raise AssertionError(f"not JSON: {describe(resp)}") from None

    def query(self, sql: str, params: list | None = None, conn: str | None = None,
              headers: dict[str, str] | None = None) -> dict:
        """One statement; its result (status 200 checked)."""
        body: dict = {"query": sql}
        if params is not None:
            body["params"] = params
        result = self.ok(self.post(body, conn, headers))
        for key in ("command", "rowCount", "rows", "fields", "rowAsArray"):
            assert key in result, f"{key!r} missing from the result of {sql!r}: {result}"
        return result

    def rows(self, sql: str, params: list | None = None, conn: str | None = None,
             headers: dict[str, str] | None = None) -> list:
        return self.query(sql, params, conn, headers)["rows"]

    def batch(self, queries: list[dict], conn: str | None = None, headers: dict[str, str] | None = None
              ) -> list[dict]:
        """A batch (one transaction): the results, one per query."""
        result = self.ok(self.post({"queries": queries}, conn, headers))
        assert "results" in result and len(result["results"]) == len(queries), f"batch {queries}: {result}"
        return result["results"]

    @staticmethod
    def error(resp: requests.Response, status: int | None = 400, code: str | None = None) -> dict:
        """The JSON error of ``resp``: ``status`` (None: any 4xx), every
        error key present, SQLSTATE ``code`` if given."""
        if status is None:
            assert 400 <= resp.status_code < 500, describe(resp)
        else:
            assert resp.status_code == status, describe(resp)
        assert resp.headers.get("Access-Control-Allow-Origin") == "*", describe(resp)
        try:
            err = resp.json()
        except ValueError:
            raise AssertionError(f"the error is not JSON: {describe(resp)}") from None
        assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], describe(resp)
        if code is not None:
            assert err.get("code") == code, f"expected SQLSTATE {code}: {describe(resp)}"
            missing = ERROR_KEYS - err.keys()
            assert not missing, f"error keys {sorted(missing)} missing: {describe(resp)}"
        return err

    def fails(self, sql: str, code: str, params: list | None = None, status: int | None = 400,
              conn: str | None = None, headers: dict[str, str] | None = None) -> dict:
        body: dict = {"query": sql}
        if params is not None:
            body["params"] = params
        return self.error(self.post(body, conn, headers), status, code)


@pytest.fixture(scope="module")
def cluster(neon_binpath: Path, pg_bin: PgBin, port_distributor: PortDistributor) -> Iterator[Serverless]:
    """One cluster for the module, with endpoint ``STEADY`` running."""
    builder = NeonEnvBuilder(neon_binpath, pg_bin, port_distributor, fresh_output_dir("test_serverless"))
    try:
        s = start_serverless(builder, pg_bin)
        s.run("endpoint", "create", STEADY)
        s.run("endpoint", "start", STEADY)
        yield s
    finally:
        builder.cleanup()


@pytest.fixture
def sql(cluster: Serverless) -> Sql:
    return Sql(cluster)


# ---- a cluster of its own (first: before the module's cluster is made) -------------

def test_statement_timeout(neon_env_builder: NeonEnvBuilder, pg_bin: PgBin):
    neon_env_builder.serverless_statement_timeout = "2s"
    s = start_serverless(neon_env_builder, pg_bin)
    s.run("endpoint", "create", STEADY)
    s.run("endpoint", "start", STEADY)
    sql = Sql(s)
    assert sql.rows("SELECT 1 AS warm") == [{"warm": 1}]
    assert sql.rows("SELECT 1 AS slept FROM pg_sleep(0.5)") == [{"slept": 1}]
    for body in [{"query": "SELECT pg_sleep(10)"},
                 {"queries": [{"query": "SELECT 1"}, {"query": "SELECT pg_sleep(10)"}]}]:
        started = time.monotonic()
        resp = sql.post(body)
        elapsed = time.monotonic() - started
        sql.error(resp, None, "57014")
        assert elapsed < 8, f"the statement ran {elapsed:.1f}s despite the 2s timeout"
    for _ in range(3):
        assert sql.rows("SELECT 'still fine' AS s") == [{"s": "still fine"}]


# ---- types, fields, command tags, parameters -----------------------------------

# (column, SQL expression, JSON value, dataTypeID, dataTypeSize)
TYPE_CASES = [
    ("i2", "1::int2", 1, 21, 2),
    ("i4", "-2::int4", -2, 23, 4),
    ("i8", "9007199254740993::int8", "9007199254740993", 20, 8),
    ("f4", "1.5::float4", 1.5, 700, 4),
    ("f8", "2.25::float8", 2.25, 701, 8),
    ("nan", "'NaN'::float8", "NaN", 701, 8),
    ("inf", "'Infinity'::float8", "Infinity", 701, 8),
    ("ninf", "'-Infinity'::float4", "-Infinity", 700, 4),
    ("num", "12.345::numeric", "12.345", 1700, -1),
    ("t", "true", True, 16, 1),
    ("f", "false", False, 16, 1),
    ("n", "NULL::int4", None, 23, 4),
    ("txt", "'héllo ✓'::text", "héllo ✓", 25, -1),
    ("js", "'{\"a\":  [1, 2.5, \"x\"]}'::json", {"a": [1, 2.5, "x"]}, 114, -1),
    ("jb", "'{\"b\": {\"c\": null, \"d\": true}}'::jsonb", {"b": {"c": None, "d": True}}, 3802, -1),
    ("jscalar", "'\"s\"'::jsonb", "s", 3802, -1),
    ("ia", "ARRAY[1, 2, NULL]::int4[]", [1, 2, None], 1007, -1),
    ("ta", "ARRAY['a\"b', NULL, 'c,d', 'NULL', '', 'x y']::text[]", ['a"b', None, "c,d", "NULL", "", "x y"], 1009, -1),
    ("i2d", "ARRAY[[1, 2], [3, 4]]", [[1, 2], [3, 4]], 1007, -1),
    ("empty", "'{}'::int4[]", [], 1007, -1),
    ("jba", "ARRAY['{\"x\": 1}'::jsonb, '[2]'::jsonb]", [{"x": 1}, [2]], 3807, -1),
    ("ba", "ARRAY[true, false]", [True, False], 1000, -1),
    ("i8a", "ARRAY[1, 2]::int8[]", ["1", "2"], 1016, -1),
    ("f8a", "ARRAY['NaN'::float8, 1.5]", ["NaN", 1.5], 1022, -1),
    ("d", "'2024-01-02'::date", "2024-01-02", 1082, 4),
    ("ts", "'2024-01-02 03:04:05.5'::timestamp", "2024-01-02 03:04:05.5", 1114, 8),
    ("u", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", 2950, 16),
    ("b", "'\\x0102ff'::bytea", "\\x0102ff", 17, -1),
]


def test_type_mapping_and_fields(sql: Sql):
    """Each type of the contract's mapping, and each column's field."""
    query = "SELECT " + ", ".join(f"{expr} AS {name}" for name, expr, *_ in TYPE_CASES)
    result = sql.query(query)
    assert result["command"] == "SELECT" and result["rowCount"] == 1 and result["rowAsArray"] is False, result
    row = result["rows"][0]
    wrong = {name: {"got": row.get(name, "<missing>"), "expected": value}
             for name, _, value, *_ in TYPE_CASES if not same(row.get(name, "<missing>"), value)}
    assert not wrong, f"values mapped wrongly: {wrong}"
    fields = result["fields"]
    assert [f["name"] for f in fields] == [c[0] for c in TYPE_CASES], fields
    for (name, _, _, oid, size), field in zip(TYPE_CASES, fields):
        expected = {"name": name, "dataTypeID": oid, "tableID": 0, "columnID": 0, "dataTypeSize": size,
                    "dataTypeModifier": -1, "format": "text"}
        assert field == expected, f"field of {name}: {field}, expected {expected}"

    # Columns of a real table: their table and column, the type modifiers.
    sql.query("CREATE TABLE typed(id int8 PRIMARY KEY, name varchar(10), price numeric(8,2), at date)")
    sql.query("INSERT INTO typed VALUES (1, 'ab', 1.5, '2024-02-29')")
    table_oid = sql.rows("SELECT 'typed'::regclass::oid::int4 AS oid")[0]["oid"]
    result = sql.query("SELECT id, name, price, at, 1 AS one FROM typed")
    assert result["rows"] == [{"id": "1", "name": "ab", "price": "1.50", "at": "2024-02-29", "one": 1}], result
    expected_fields = [
        ("id", 20, table_oid, 1, 8, -1),
        ("name", 1043, table_oid, 2, -1, 14),           # varchar(10): 10 + 4
        ("price", 1700, table_oid, 3, -1, (8 << 16 | 2) + 4),
        ("at", 1082, table_oid, 4, 4, -1),
        ("one", 23, 0, 0, 4, -1),
    ]
    for (name, oid, table, column, size, modifier), field in zip(expected_fields, result["fields"]):
        expected = {"name": name, "dataTypeID": oid, "tableID": table, "columnID": column, "dataTypeSize": size,
                    "dataTypeModifier": modifier, "format": "text"}
        assert field == expected, f"field of typed.{name}: {field}, expected {expected}"


def test_command_tags(sql: Sql):
    created = sql.query("CREATE TABLE tags(id int PRIMARY KEY, v text)")
    # The driver's "command" is the tag's first word; accept the whole tag too.
    assert created["command"] in ("CREATE", "CREATE TABLE") and created["rowCount"] is None, created
    assert created["rows"] == [] and created["fields"] == [], created
    cases = [
        ("INSERT INTO tags VALUES (1, 'a'), (2, 'b'), (3, 'c')", "INSERT", 3, []),
        ("UPDATE tags SET v = v || '!' WHERE id <= 2", "UPDATE", 2, []),
        ("DELETE FROM tags WHERE id = 3", "DELETE", 1, []),
        ("SELECT id, v FROM tags ORDER BY id", "SELECT", 2, [{"id": 1, "v": "a!"}, {"id": 2, "v": "b!"}]),
        ("SELECT id FROM tags WHERE false", "SELECT", 0, []),
        ("INSERT INTO tags VALUES (4, 'd') RETURNING id, v", "INSERT", 1, [{"id": 4, "v": "d"}]),
        ("UPDATE tags SET v = 'z' WHERE false", "UPDATE", 0, []),
    ]
    for query, command, count, rows in cases:
        result = sql.query(query)
        assert (result["command"], result["rowCount"], result["rows"]) == (command, count, rows), \
            f"{query!r}: {result}"
    assert [f["name"] for f in sql.query("SELECT id FROM tags WHERE false")["fields"]] == ["id"]
    # A statement without a count.
    result = sql.query("SET LOCAL work_mem = '8MB'")
    assert result["command"] == "SET" and result["rowCount"] is None, result


def test_parameters(sql: Sql):
    """$1..$n: strings as is, numbers and bools as their text, null as
    NULL, arrays as array literals, objects as JSON."""
    text = "it's \"quoted\" \\ text, {braces} ✓"
    obj = {"k": [1, "two", None], "n": {"m": True}}
    params = [text, 42, 2.5, True, None, [1, 2, 3], obj, 7, False, ["a,b", 'c"d', None, "e f", "\\", "NULL"],
              [[1, 2], [3, 4]], "123456789012345678901234567890.5", -0.125]
    row = sql.rows(
        "SELECT $1::text AS s, $2::int AS i, $3::float8 AS f, $4::bool AS b, $5::text AS n, $6::int[] AS arr, "
        "$7::jsonb AS obj, $8::text AS num_text, $9::text AS bool_text, $10::text[] AS tarr, $11::int[] AS arr2d, "
        "$12::numeric AS big, $13::text AS float_text, $5 IS NULL AS is_null", params)[0]
    expected = {"s": text, "i": 42, "f": 2.5, "b": True, "n": None, "arr": [1, 2, 3], "obj": obj, "num_text": "7",
                "bool_text": "false", "tarr": ["a,b", 'c"d', None, "e f", "\\", "NULL"], "arr2d": [[1, 2], [3, 4]],
                "big": "123456789012345678901234567890.5", "float_text": "-0.125", "is_null": True}
    wrong = {k: {"got": row.get(k, "<missing>"), "expected": v} for k, v in expected.items()
             if not same(row.get(k, "<missing>"), v)}
    assert not wrong, f"parameters passed wrongly: {wrong}"

    # Into a table: a JSON object into jsonb, an array into int[].
    sql.query("CREATE TABLE docs(id int, doc jsonb, nums int[], note text)")
    inserted = sql.query("INSERT INTO docs VALUES ($1, $2, $3, $4)", [1, {"a": [1, 2], "b": "c"}, [5, 6], None])
    assert inserted["rowCount"] == 1, inserted
    assert sql.rows("SELECT id, doc, nums, note FROM docs WHERE id = $1", [1]) == [
        {"id": 1, "doc": {"a": [1, 2], "b": "c"}, "nums": [5, 6], "note": None}]
    assert sql.rows("SELECT count(*) AS n FROM docs WHERE doc @> $1", [{"b": "c"}]) == [{"n": "1"}]
    # Too few parameters: an error, not a crash.
    err = sql.error(sql.post({"query": "SELECT $1::int AS x"}), 400)
    assert "parameter" in err["message"].lower(), err


# ---- batches and their transaction ---------------------------------------------

def test_batches(sql: Sql):
    sql.query("CREATE TABLE batch(x int PRIMARY KEY)")
    results = sql.batch([
        {"query": "INSERT INTO batch VALUES ($1)", "params": [1]},
        {"query": "INSERT INTO batch VALUES (2)"},
        {"query": "SELECT count(*) AS n FROM batch"},
        {"query": "SELECT txid_current() AS a"},
        {"query": "SELECT txid_current() AS b"},
    ])
    assert [(r["command"], r["rowCount"]) for r in results[:3]] == [("INSERT", 1), ("INSERT", 1), ("SELECT", 1)], \
        results
    assert results[2]["rows"] == [{"n": "2"}], results
    assert results[3]["rows"][0]["a"] == results[4]["rows"][0]["b"], f"not one transaction: {results}"
    assert sql.rows("SELECT array_agg(x ORDER BY x) AS xs FROM batch") == [{"xs": [1, 2]}]

    # An error in the 2nd statement rolls the 1st back.
    for bad in [{"query": "INSERT INTO batch VALUES ($1)", "params": ["not a number"]},
                {"query": "INSERT INTO batch VALUES (1)"}]:
        resp = sql.post({"queries": [{"query": "INSERT INTO batch VALUES (3)"}, bad,
                                     {"query": "INSERT INTO batch VALUES (4)"}]})
        err = sql.error(resp, None)
        assert err["code"] in ("22P02", "23505"), describe(resp)
        assert sql.rows("SELECT array_agg(x ORDER BY x) AS xs FROM batch") == [{"xs": [1, 2]}], \
            f"the batch was not rolled back after {bad}"
    # The pooled connections are not left inside a (failed) transaction.
    for _ in range(5):
        assert sql.rows("SELECT current_setting('transaction_isolation') AS level") == [{"level": "read committed"}]
    assert sql.query("INSERT INTO batch VALUES (5)")["rowCount"] == 1


def test_batch_isolation_headers(sql: Sql):
    for header, level in [("ReadUncommitted", "read uncommitted"), ("ReadCommitted", "read committed"),
                          ("RepeatableRead", "repeatable read"), ("Serializable", "serializable")]:
        results = sql.batch([{"query": "SHOW transaction_isolation"}, {"query": "SHOW transaction_read_only"}],
                            headers={"Neon-Batch-Isolation-Level": header})
        assert results[0]["rows"] == [{"transaction_isolation": level}], f"{header}: {results}"
        assert results[1]["rows"] == [{"transaction_read_only": "off"}], f"{header}: {results}"

    sql.query("CREATE TABLE readonly(x int)")
    read_only = {"Neon-Batch-Read-Only": "true"}
    assert sql.batch([{"query": "SHOW transaction_read_only"}], headers=read_only)[0]["rows"] == [
        {"transaction_read_only": "on"}]
    resp = sql.post({"queries": [{"query": "INSERT INTO readonly VALUES (1)"}]}, headers=read_only)
    sql.error(resp, None, "25006")

    deferrable = {"Neon-Batch-Isolation-Level": "Serializable", "Neon-Batch-Read-Only": "true",
                  "Neon-Batch-Deferrable": "true"}
    results = sql.batch([{"query": "SHOW transaction_deferrable"}, {"query": "SHOW transaction_read_only"},
                         {"query": "SHOW transaction_isolation"}], headers=deferrable)
    assert [r["rows"][0] for r in results] == [{"transaction_deferrable": "on"}, {"transaction_read_only": "on"},
                                               {"transaction_isolation": "serializable"}], results
    assert sql.batch([{"query": "SHOW transaction_deferrable"}])[0]["rows"] == [{"transaction_deferrable": "off"}]

    # Nothing of it stays on the pooled connections.
    assert sql.rows("SHOW transaction_isolation") == [{"transaction_isolation": "read committed"}]
    assert sql.query("INSERT INTO readonly VALUES (2)")["rowCount"] == 1


# ---- output modes --------------------------------------------------------------

def test_array_mode_and_raw_text(sql: Sql):
    array_mode = {"Neon-Array-Mode": "true"}
    result = sql.query("SELECT 1 AS a, 'x' AS b, NULL AS c", headers=array_mode)
    assert result["rowAsArray"] is True and result["rows"] == [[1, "x", None]], result
    assert [f["name"] for f in result["fields"]] == ["a", "b", "c"], result
    # Duplicate names: arrays keep both.
    assert sql.rows("SELECT 1 AS a, 2 AS a", headers=array_mode) == [[1, 2]]
    assert sql.rows("SELECT x FROM generate_series(1, 3) x", headers=array_mode) == [[1], [2], [3]]
    default = sql.query("SELECT 1 AS a")
    assert default["rowAsArray"] is False and default["rows"] == [{"a": 1}], default

    raw = {"Neon-Raw-Text-Output": "true"}
    row = sql.rows("SELECT 1::int4 AS i, true AS b, '{\"a\": 1}'::json AS j, NULL::int AS n, ARRAY[1, 2] AS arr, "
                   "1.5::float8 AS f, 'NaN'::float8 AS nan, 5::int8 AS big", headers=raw)[0]
    assert row == {"i": "1", "b": "t", "j": '{"a": 1}', "n": None, "arr": "{1,2}", "f": "1.5", "nan": "NaN",
                   "big": "5"}, row
    both = sql.query("SELECT 1 AS i, false AS b", headers={**raw, **array_mode})
    assert both["rowAsArray"] is True and both["rows"] == [["1", "f"]], both
    # Headers of one request do not stick to the pooled connection.
    assert sql.rows("SELECT 1 AS i, false AS b") == [{"i": 1, "b": False}]


# ---- errors --------------------------------------------------------------------

def test_sql_errors(sql: Sql):
    sql.query("CREATE TABLE uniq(id int PRIMARY KEY)")
    sql.query("INSERT INTO uniq VALUES (1)")
    err = sql.fails("INSERT INTO uniq VALUES (1)", "23505")
    expected = {"severity": "ERROR", "constraint": "uniq_pkey", "table": "uniq", "schema": "public",
                "detail": "Key (id)=(1) already exists.",
                "message": 'duplicate key value violates unique constraint "uniq_pkey"'}
    assert {k: err[k] for k in expected} == expected, err
    assert err["routine"] and err["file"], f"file and routine come from PostgreSQL: {err}"
    assert err["hint"] is None and err["column"] is None and err["position"] is None, err

    err = sql.fails("SELEC 1", "42601")
    assert str(err["position"]) == "1" and 'syntax error at or near "SELEC"' in err["message"], err

    err = sql.fails("SELECT 1/0 AS x", "22012")
    assert err["message"] == "division by zero" and err["constraint"] is None, err

    sql.query("CREATE TABLE required(id int, v text NOT NULL)")
    err = sql.fails("INSERT INTO required(id) VALUES (1)", "23502")
    assert (err["column"], err["table"], err["schema"]) == ("v", "required", "public"), err

    err = sql.fails("SELECT no_such_function(1)", "42883")
    assert err["hint"] and "No function matches" in err["hint"], err

    err = sql.fails("DO $$ BEGIN RAISE EXCEPTION 'boom' USING DETAIL = 'a detail', HINT = 'a hint'; END $$",
                    "P0001")
    assert (err["message"], err["detail"], err["hint"]) == ("boom", "a detail", "a hint"), err
    assert err["where"] and "PL/pgSQL" in err["where"], err

    # The session that failed is usable again.
    assert sql.rows("SELECT 1 AS ok") == [{"ok": 1}]


# ---- the HTTP side: CORS, TLS, bad requests, limits ------------------------------

def test_cors_tls_and_bad_requests(sql: Sql, cluster: Serverless):
    resp = sql.session.options(sql.url, headers={
        "Origin": "https://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "neon-connection-string, content-type"}, timeout=30)
    assert resp.status_code == 200, describe(resp)
    assert resp.headers.get("Access-Control-Allow-Origin") == "*", describe(resp)
    methods = {m.strip().upper() for m in resp.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"POST", "OPTIONS"} <= methods, describe(resp)
    allowed = {h.strip().lower() for h in resp.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert CORS_HEADERS <= allowed, f"not allowed: {sorted(CORS_HEADERS - allowed)}; {describe(resp)}"
    assert resp.headers.get("Access-Control-Max-Age") == "86400", describe(resp)

    # A POST (Sql.ok checks Access-Control-Allow-Origin).
    assert sql.rows("SELECT 1 AS one") == [{"one": 1}]
    # postgres:// works as postgresql:// does.
    assert sql.rows("SELECT 2 AS two", conn=conn_string(scheme="postgres")) == [{"two": 2}]

    # HTTPS on the same port (the proxy has a certificate).
    resp = sql.session.post(f"https://127.0.0.1:{sql.port}/sql", json={"query": "SELECT 3 AS three"},
                            headers={"Neon-Connection-String": conn_string()}, verify=str(cluster.cert), timeout=120)
    assert Sql.ok(resp)["rows"] == [{"three": 3}], describe(resp)

    # Bad requests: 400 with a JSON message.
    sql.error(sql.post({"query": "SELECT 1"}, conn=""), 400)
    sql.error(sql.post({"query": "SELECT 1"}, conn="mysql://app:pw@127.0.0.1/postgres"), 400)
    sql.error(sql.post(None, data=b'{"query": "SELECT 1"'), 400)
    sql.error(sql.post(None, data=b"not json at all"), 400)
    sql.error(sql.post({"nothing": "here"}), 400)
    # The driver's streaming formats (opt-in) are refused, not misanswered.
    sql.error(sql.post({"query": "SELECT 1"}, headers={"Accept": "application/vnd.neon.sql.v1+json"}), 406)
    assert Sql.ok(sql.post({"query": "SELECT 1"}, headers={"Accept": "application/json"}))["rows"] == [{"?column?": 1}]


def post_oversized(port: int, size: int) -> tuple[int, str, bytes]:
    """POST /sql with a body of about ``size`` bytes, read the answer even
    if the proxy stops reading (or closes) before the end of the body;
    (status, Access-Control-Allow-Origin, body)."""
    body = b'{"query": "SELECT length($1) AS n", "params": ["' + b"x" * size + b'"]}'
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        try:
            conn.request("POST", "/sql", body=body, headers={
                "Neon-Connection-String": conn_string(), "Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # refused before the whole body was sent: the answer is there
        try:
            resp = conn.getresponse()
            return resp.status, resp.getheader("Access-Control-Allow-Origin", ""), resp.read()
        except (ConnectionResetError, http.client.RemoteDisconnected) as e:
            raise AssertionError(f"no HTTP answer to a body of {len(body)} bytes, the connection was cut: {e!r}") \
                from None
    finally:
        conn.close()


def test_size_limits(sql: Sql):
    # Request bodies: 9 MiB pass, over 10 MiB are refused with 413.
    assert sql.rows("SELECT length($1) AS n", ["x" * (9 * MIB)]) == [{"n": 9 * MIB}]
    status, allow_origin, body = post_oversized(sql.port, 10 * MIB + 1024)
    assert status == 413, f"HTTP {status}: {body[:2000]!r}"
    assert allow_origin == "*", f"Access-Control-Allow-Origin {allow_origin!r} on the 413"
    assert b'"message"' in body, f"the 413 has no JSON message: {body[:2000]!r}"

    # Responses: 5 MiB pass, over 10 MiB fail with 54000.
    assert sql.rows("SELECT length(repeat('x', 5 * 1024 * 1024)) AS n, repeat('x', 5 * 1024 * 1024) AS big")[0][
        "n"] == 5 * MIB
    sql.fails("SELECT repeat('x', 11 * 1024 * 1024) AS big", "54000", status=None)
    sql.fails("SELECT repeat('x', 1024 * 1024) AS big FROM generate_series(1, 11)", "54000", status=None)
    # The connection whose answer was cut off is not handed out half-read.
    for _ in range(5):
        assert sql.rows("SELECT 'after' AS a") == [{"a": "after"}]


# ---- authentication, routing, waking ---------------------------------------------

def test_authentication_and_routing(sql: Sql, cluster: Serverless):
    s = cluster
    steady_port = str(s.pg_port(STEADY))
    err = sql.error(sql.post({"query": "SELECT 1"}, conn=conn_string(password="wrong")), 401, "28P01")
    assert "password" in err["message"], err
    sql.error(sql.post({"query": "SELECT 1"}, conn=conn_string(user="cloud_admin", password="whatever")), 401)
    err = sql.error(sql.post({"query": "SELECT 1"}, conn=conn_string("branch=nope")), 404)
    assert "nope" in err["message"], err
    err = sql.error(sql.post({"query": "SELECT 1"}, conn=conn_string(None, host="nope.localtest.me")), 404)
    assert "nope" in err["message"], err

    # Percent-decoded user and password (`role create` applies the role
    # to the running endpoints before it returns).
    special_user, special_password = "special user", "p@ss w:rd/%?#&="
    s.nl.create_role(special_user, special_password)
    special = conn_string(user=special_user, password=special_password)
    resp = sql.post({"query": "SELECT current_user AS u"}, conn=special)
    assert Sql.ok(resp)["rows"] == [{"u": special_user}], describe(resp)

    # Routes: options (percent-decoded, also as -c), host label, default branch.
    port_query = "SELECT current_setting('port') AS port, current_user AS u"
    expected = [{"port": steady_port, "u": ROLE}]
    # What Neon's console hands out, and what tools add (Prisma's pgbouncer): ignored.
    neon_style = conn_string(f"endpoint={STEADY}") + "&sslmode=require&channel_binding=require&pgbouncer=true"
    for conn in [conn_string(f"endpoint={STEADY}"), conn_string(f"-c endpoint={STEADY}"), neon_style,
                 conn_string(None, host=f"{STEADY}.localtest.me"),
                 conn_string(None, host=f"{STEADY}.localtest.me:5432"),
                 conn_string(f"endpoint={STEADY}", host="nope.localtest.me"),  # options win
                 conn_string("branch=main"),
                 conn_string(None), conn_string(None, host="localhost")]:       # the default branch
        assert sql.rows(port_query, conn=conn) == expected, conn
    # Pooled connections say who they are.
    assert sql.rows("SELECT current_setting('application_name') AS a") == [{"a": "neon_serverless_pool"}]


def wait_suspended(s: Serverless, name: str, timeout: float = 60) -> None:
    try:
        s.wait_status(name, "suspended", timeout)
    except TimeoutError as e:
        idle = [line for line in s.proxy_metrics().splitlines() if line.startswith("proxy_serverless_pool_idle")]
        raise AssertionError(f"{name} was not suspended within {timeout}s (suspend timeout {SUSPEND}s); idle "
                             f"pooled connections must not keep it awake. Status {s.status(name)}, {idle}: {e}") \
            from None


def test_suspended_branch_woken_by_http(sql: Sql, cluster: Serverless):
    s = cluster
    s.run("timeline", "branch", "--branch-name", "b")
    by_options = conn_string("branch=b")          # options=branch%3Db
    by_host = conn_string(None, host="b.localtest.me")
    sql.query("CREATE TABLE wake(x int)", conn=by_options)
    assert sql.query("INSERT INTO wake VALUES (1)", conn=by_options)["rowCount"] == 1
    assert s.status("b") == "running"
    assert sql.rows("SELECT sum(x) AS total FROM wake", conn=by_host) == [{"total": "1"}]

    for total, conn in [(3, by_host), (6, by_options)]:
        wait_suspended(s, "b")
        starts = s.starts("b")
        # Each wake inserts what brings the sum to `total`.
        inserted = sql.query("INSERT INTO wake SELECT $1::int - sum(x) FROM wake", [total], conn=conn)
        assert inserted["rowCount"] == 1, inserted
        assert s.status("b") == "running"
        assert s.starts("b") == starts + 1, "the request should have started the compute once"
        assert sql.rows("SELECT sum(x) AS total FROM wake", conn=by_host) == [{"total": str(total)}]
    assert s.control_plane()["endpoints"]["b"]["suspends"] >= 2


def test_concurrency_and_pool_reuse(sql: Sql, cluster: Serverless):
    s = cluster
    sql.query("SELECT 1")  # the pool has a connection for this key
    results: list[object] = [None] * 50

    def one(i: int) -> None:
        try:
            session = http_session()
            resp = session.post(sql.url, json={"query": "SELECT $1::int AS i, pg_backend_pid() AS pid",
                                               "params": [i]},
                                headers={"Neon-Connection-String": conn_string()}, timeout=180)
            results[i] = (resp.status_code, resp.text)
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    failed = {i: r for i, r in enumerate(results) if not (isinstance(r, tuple) and r[0] == 200)}
    assert not failed, f"{len(failed)} of 50 concurrent requests failed: {failed}"
    for i, (_, text) in enumerate(results):
        rows = json.loads(text)["rows"]
        assert len(rows) == 1 and rows[0]["i"] == i, f"request {i} got {text}"

    before = s.proxy_metrics()
    for i in range(50):
        assert sql.rows("SELECT $1::int AS i", [i]) == [{"i": i}]
    after = s.proxy_metrics()
    opened = metric_total(after, "proxy_serverless_pool_opened_total") - metric_total(
        before, "proxy_serverless_pool_opened_total")
    reused = metric_total(after, "proxy_serverless_pool_reused_total") - metric_total(
        before, "proxy_serverless_pool_reused_total")
    requests_made = metric_total(after, "proxy_serverless_requests_total") - metric_total(
        before, "proxy_serverless_requests_total")
    assert opened == 0, f"50 sequential requests after the burst opened {opened} server connections"
    assert reused >= 50, f"proxy_serverless_pool_reused_total grew by {reused}, expected >= 50"
    assert requests_made >= 50, f"proxy_serverless_requests_total grew by {requests_made}"
    assert metric_total(after, "proxy_serverless_pool_idle") >= 1


# ---- PostgreSQL over WebSocket ------------------------------------------------------

def test_websocket_sessions(sql: Sql, cluster: Serverless):
    s = cluster
    url = ws_url(sql.port)
    route = f"endpoint={STEADY}"
    with PgWebSocket.login(url, ROLE, ROLE_PASSWORD, options=route) as ws:
        assert ws.asked_password, "the proxy should ask for a cleartext password"
        assert "server_version" in ws.parameters and ws.backend_key is not None, \
            f"parameters {ws.parameters}, backend key {ws.backend_key}"
        assert ws.rows("SELECT current_user, current_setting('port')") == [[ROLE, str(s.pg_port(STEADY))]]
        ws.query("CREATE TABLE wst(x int)")
        # A transaction rolled back.
        assert ws.query("BEGIN").tag == "BEGIN" and ws.transaction_status == "T"
        assert ws.query("INSERT INTO wst VALUES (1)").tag == "INSERT 0 1"
        assert ws.rows("SELECT count(*) FROM wst") == [["1"]]
        assert ws.query("ROLLBACK").tag == "ROLLBACK" and ws.transaction_status == "I"
        assert ws.rows("SELECT count(*) FROM wst") == [["0"]]
        # One committed: visible over HTTP.
        tags = [r.tag for r in ws.simple_query("BEGIN; INSERT INTO wst VALUES (2); COMMIT")]
        assert tags == ["BEGIN", "INSERT 0 1", "COMMIT"], tags
        assert sql.rows("SELECT array_agg(x) AS xs FROM wst") == [{"xs": [2]}]
        # An error, in and out of a transaction.
        with pytest.raises(PqError) as error:
            ws.query("SELECT 1/0")
        assert error.value.code == "22012" and ws.transaction_status == "I"
        ws.query("BEGIN")
        with pytest.raises(PqError) as error:
            ws.query("INSERT INTO wst VALUES ('x')")
        assert error.value.code == "22P02" and ws.transaction_status == "E"
        ws.query("ROLLBACK")
        # A message split over three frames; two messages in one frame.
        split = query_message("SELECT 'split' AS s")
        for part in (split[:3], split[3:9], split[9:]):
            ws.send_frame(part)
        assert [r.rows for r in ws.read_results()] == [[["split"]]]
        ws.send_frame(query_message("SELECT 1") + query_message("SELECT 2"))
        assert [r.rows for r in ws.read_results()] == [[["1"]]]
        assert [r.rows for r in ws.read_results()] == [[["2"]]]
        # Answers larger than a frame.
        big = ws.query("SELECT repeat('y', 300000) AS big, x FROM generate_series(1, 3) x")
        assert [len(r[0]) for r in big.rows] == [300000] * 3 and big.tag == "SELECT 3"

    # Pipelined: startup, password and a query in one frame.
    with PgWebSocket.open(url) as ws:
        results = ws.pipelined_startup(ROLE, ROLE_PASSWORD, "SELECT 'pipelined', current_user", options=route)
        assert [r.rows for r in results] == [[["pipelined", ROLE]]], results
        assert ws.rows("SELECT count(*) FROM wst") == [["1"]]

    # TLS on the same port.
    context = ssl.create_default_context(cafile=str(s.cert))
    with PgWebSocket.open(ws_url(sql.port, scheme="wss"), ssl_context=context) as ws:
        ws.startup(ROLE, ROLE_PASSWORD, options=route)
        assert ws.rows("SELECT 'over tls'") == [["over tls"]]


def ws_login_error(url: str, user: str, password: str, options: str | None, pipelined: bool = False) -> PqError:
    """The error a WebSocket login fails with."""
    ws = PgWebSocket.open(url)
    try:
        if pipelined:
            results: list[StatementResult] | None = ws.pipelined_startup(user, password, "SELECT 1", options=options)
        else:
            ws.startup(user, password, options=options)
            results = None
    except PqError as e:
        return e
    finally:
        ws.close()
    raise AssertionError(f"the login of {user!r} over the WebSocket succeeded (results {results})")


def test_websocket_routing_and_refusals(sql: Sql, cluster: Serverless):
    s = cluster
    url = ws_url(sql.port)
    for pipelined in (False, True):
        err = ws_login_error(url, ROLE, "wrong", f"endpoint={STEADY}", pipelined)
        assert err.code == "28P01", f"a wrong password (pipelined: {pipelined}): {err!r} {err.fields}"
    refused = ws_login_error(url, "cloud_admin", "whatever", f"endpoint={STEADY}")
    assert "cloud_admin" in str(refused) or refused.code.startswith("28"), f"{refused!r} {refused.fields}"
    unknown = ws_login_error(url, ROLE, ROLE_PASSWORD, "branch=nope")
    assert "nope" in str(unknown), f"{unknown!r} {unknown.fields}"

    s.run("timeline", "branch", "--branch-name", "wsbranch")
    with PgWebSocket.login(url, ROLE, ROLE_PASSWORD, options="branch=wsbranch") as ws:
        ws.simple_query("CREATE TABLE only_in_wsbranch(x int); INSERT INTO only_in_wsbranch VALUES (7)")
    # The host label of the driver's `address` parameter.
    by_address = ws_url(sql.port, address="wsbranch.localtest.me:5432")
    with PgWebSocket.login(by_address, ROLE, ROLE_PASSWORD) as ws:
        assert ws.rows("SELECT x FROM only_in_wsbranch") == [["7"]]
    # Without `address`: the Host header's first label.
    sock = socket.create_connection(("127.0.0.1", sql.port), timeout=60)
    sock.settimeout(None)  # as websockets wants it (PgWebSocket has its own timeouts)
    with PgWebSocket.open(ws_url(sql.port, address=None, host="wsbranch.localtest.me"), sock=sock) as ws:
        ws.startup(ROLE, ROLE_PASSWORD)
        assert ws.rows("SELECT x FROM only_in_wsbranch") == [["7"]]
    # Options win over `address`; no route at all is the default branch.
    with PgWebSocket.login(by_address, ROLE, ROLE_PASSWORD, options=f"endpoint={STEADY}") as ws:
        assert ws.rows("SELECT to_regclass('only_in_wsbranch') IS NULL") == [["t"]]
    with PgWebSocket.login(url, ROLE, ROLE_PASSWORD) as ws:
        assert ws.rows("SELECT current_setting('port')") == [[str(s.pg_port(STEADY))]]
