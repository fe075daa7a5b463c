"""Safekeepers offload full WAL segments to a real S3-protocol server (moto
behind a cuttable relay): uploads are byte-identical to the local segments,
local segments go only once offloaded and below the pageserver's remote
consistent LSN, a safekeeper that loses its disk loses no WAL, reads below
the first local segment are served from S3, and an S3 outage delays uploads
without losing anything or removing what is not offloaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from fixtures import auth
from fixtures.compute import Compute
from fixtures.daemons import Safekeeper
from fixtures.lsn import SEGMENT_SIZE, lsn_int, lsn_str, read_segments, segment_name, segment_number
from fixtures.neon_fixtures import NeonEnv, NeonEnvBuilder
from fixtures.pg import PgBin
from fixtures.pq import PqConnection, PqError, error_fields
from fixtures.remote_storage import S3Server
from fixtures.utils import run_checked, wait_until
from fixtures.wal_service import WalService

PREFIX = "sk-offload"


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture
def offload_env(neon_env_builder: NeonEnvBuilder) -> NeonEnv:
    """Three safekeepers offloading to S3, nothing else."""
    neon_env_builder.pageserver = False
    neon_env_builder.enable_remote_storage(pageserver_prefix=None, safekeeper_prefix=PREFIX)
    return neon_env_builder.init_start()


@pytest.fixture
def s3_server(offload_env: NeonEnv) -> S3Server:
    """The S3 server the safekeepers offload to."""
    return offload_env.s3


@pytest.fixture
def offload_service(offload_env: NeonEnv) -> WalService:
    """One timeline on the three safekeepers."""
    return offload_env.wal_service()


@pytest.fixture
def offload_compute(offload_env: NeonEnv, offload_service: WalService) -> Compute:
    """A new compute on the timeline, started, with the tables the tests fill."""
    c = offload_env.new_compute(offload_service)
    c.init()
    c.start()
    c.pg.sql("CREATE TABLE big (i int, s text); CREATE TABLE marker (i int)")
    return c


def timeline_dir(sk: Safekeeper, service: WalService) -> Path:
    return sk.datadir / service.tenant_id / service.timeline_id


def local_segments(sk: Safekeeper, service: WalService) -> list[int]:
    return sorted(segment_number(p.name)
                  for p in timeline_dir(sk, service).iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name))


def persisted_state(sk: Safekeeper, service: WalService) -> dict:
    """The state in the timeline's control file (magic, version, length,
    JSON, CRC)."""
    data = (timeline_dir(sk, service) / "safekeeper.control").read_bytes()
    (length,) = struct.unpack("<I", data[8:12])
    return json.loads(data[12:12 + length])


def remote_prefix(service: WalService) -> str:
    return f"{PREFIX}/wal/{service.tenant_id}/{service.timeline_id}/"


def remote_segments(s3: S3Server, service: WalService) -> list[int]:
    prefix = remote_prefix(service)
    out = []
    for key in s3.keys(prefix):
        name = key[len(prefix):]
        assert re.fullmatch(r"[0-9A-F]{24}", name), f"unexpected object {key}"
        out.append(segment_number(name))
    return out


def write_wal(compute: Compute, megabytes: int) -> int:
    """Commit about `megabytes` MB of WAL; returns where the WAL ends."""
    compute.pg.sql(f"INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, {megabytes * 900}) g")
    compute.pg.sql("INSERT INTO marker VALUES (1)")
    return lsn_int(compute.pg.sql("SELECT pg_current_wal_insert_lsn()"))


def wait_committed(service: WalService, lsn: int, timeout: float = 60) -> int:
    """Wait until every running safekeeper has flushed and committed `lsn`;
    returns the lowest commit LSN."""
    def done():
        statuses = service.statuses()
        if all(lsn_int(s["flush_lsn"]) >= lsn and lsn_int(s["commit_lsn"]) >= lsn for s in statuses):
            return min(lsn_int(s["commit_lsn"]) for s in statuses)
        return None

    return wait_until(f"safekeepers to commit {lsn_str(lsn)}", done, timeout)


def wait_backed_up(service: WalService, lsn: int, timeout: float = 60) -> None:
    wait_until(f"backup_lsn to reach {lsn_str(lsn)}",
               lambda: all(lsn_int(s["backup_lsn"]) >= lsn for s in service.statuses()), timeout)


class ReplicationError(Exception):
    """An ErrorResponse or a closed connection from the safekeeper."""


class ReplicationReader:
    """A minimal `START_REPLICATION` client, speaking the PostgreSQL protocol
    as the pageserver does: it reads XLogData and sends status updates whose
    apply position is the pageserver's remote consistent LSN. It presents
    ``token`` (default: a pageserver's, the only one whose reports move the
    remote consistent LSN)."""

    def __init__(self, sk: Safekeeper, service: WalService, start: int, application_name: str = "pageserver",
                 token: str | None = None):
        params = {"user": "pageserver", "application_name": application_name,
                  "options": f"-c tenant_id={service.tenant_id} -c timeline_id={service.timeline_id}"}
        try:
            self.conn = PqConnection(sk.pg_port, params, token or auth.token("pageserver"), timeout=60)
            tag = self.conn.start_copy(f"START_REPLICATION PHYSICAL {lsn_str(start)}")
        except PqError as e:
            raise ReplicationError(e.message) from None
        assert tag == b"W", tag
        self.position = start

    def _recv(self) -> tuple[bytes, bytes]:
        try:
            tag, payload = self.conn.recv()
        except PqError as e:
            raise ReplicationError(e.message) from None
        if tag == b"E":
            raise ReplicationError(PqError(error_fields(payload)).message)
        return tag, payload

    def read_until(self, end: int) -> bytes:
        """WAL from the current position up to `end`."""
        out = bytearray()
        while self.position < end:
            tag, payload = self._recv()
            assert tag == b"d", tag
            if payload[:1] == b"w":
                wal_start, _, _ = struct.unpack("!QQQ", payload[1:25])
                assert wal_start == self.position, f"got WAL at {lsn_str(wal_start)}, expected {lsn_str(self.position)}"
                data = payload[25:]
                out += data
                self.position += len(data)
        return bytes(out[:len(out) - (self.position - end)])

    def status(self, write: int, flush: int, apply: int) -> None:
        self.conn.send(b"d", b"r" + struct.pack("!QQQqB", write, flush, apply, 0, 0))

    def close(self) -> None:
        try:
            self.conn.send(b"c", b"")
        except OSError:
            pass
        self.conn.close()


def report_remote_consistent(sk: Safekeeper, service: WalService, lsn: int,
                             application_name: str = "pageserver", token: str | None = None) -> None:
    """Connect as a WAL reader (presenting ``token``, default a
    pageserver's), report `lsn` as applied (remote consistent), and
    disconnect; returns once the safekeeper has processed the report (the
    connection is gone, and reports are processed in order)."""
    status = sk.timeline_status(service.tenant_id, service.timeline_id)
    reader = ReplicationReader(sk, service, lsn_int(status["commit_lsn"]), application_name, token)
    reader.status(lsn, lsn, lsn)
    reader.close()
    wait_until("the reader to disconnect",
               lambda: sk.timeline_status(service.tenant_id, service.timeline_id)["walsenders"] == 0, 30)


def check_segments_decode(pg_bin: PgBin, binpath: Path, segments: dict[str, bytes], compute: Compute,
                          first: int, last_full: int) -> None:
    """The segments `first..last_full` hold the compute's WAL from its start
    point to the end of the last one, and decode end to end: pg_waldump (as
    the PostgreSQL OS user) from the second segment on (the first one's
    long page header, before the timeline's start, is zeros, so pg_waldump
    refuses the whole segment), and pg_wal_inspect from the start point."""
    directory = Path(tempfile.mkdtemp(prefix="sk-offload-waldump-"))
    try:
        os.chmod(directory, 0o755)
        for name, data in segments.items():
            (directory / name).write_bytes(data)
            os.chmod(directory / name, 0o644)
        end = last_full * SEGMENT_SIZE
        # The first segment's WAL is the compute's own.
        assert read_segments(directory, compute.start_lsn, (first + 1) * SEGMENT_SIZE) == \
            read_segments(compute.pg.datadir / "pg_wal", compute.start_lsn, (first + 1) * SEGMENT_SIZE)
        result = pg_bin.run(["pg_waldump", "-p", directory, "-s", lsn_str((first + 1) * SEGMENT_SIZE),
                             "-e", lsn_str(end)])
        assert "error" not in result.stderr, result.stderr
        assert result.stdout.count("\n") > 10_000, result.stdout[-2000:]
        summary = json.loads(run_checked([str(binpath / "pg_wal_inspect"), "dump", str(directory), "--summary-only",
                                          "--wal-seg-size", str(SEGMENT_SIZE), "--start",
                                          lsn_str(compute.start_lsn)]).stdout.strip().splitlines()[-1])["summary"]
        assert summary["parse_errors"] == 0 and summary["bad_images"] == 0, summary
        assert summary["end_reason"] == "next segment file is missing", summary
        assert lsn_int(summary["end_lsn"]) > end - 65536, summary
    finally:
        shutil.rmtree(directory)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_full_segments_are_offloaded_identically(offload_compute: Compute, offload_service: WalService,
                                                 s3_server: S3Server):
    service, compute = offload_service, offload_compute
    end = write_wal(compute, 70)
    commit = wait_committed(service, end)
    first, last_full = compute.start_lsn // SEGMENT_SIZE, commit // SEGMENT_SIZE
    assert last_full - first >= 4, "too little WAL"
    wait_backed_up(service, last_full * SEGMENT_SIZE)

    # Exactly the full segments are in S3 (not the one being written) ...
    assert remote_segments(s3_server, service) == list(range(first, last_full))
    # ... each byte-identical to every safekeeper's local segment.
    for segno in range(first, last_full):
        data = s3_server.get(remote_prefix(service) + segment_name(segno))
        assert len(data) == SEGMENT_SIZE
        for sk in service.safekeepers:
            assert data == (timeline_dir(sk, service) / segment_name(segno)).read_bytes(), \
                f"sk{sk.node_id}'s {segment_name(segno)} differs from S3"
    # Without pageserver feedback nothing is removed.
    for sk in service.safekeepers:
        assert local_segments(sk, service) == list(range(first, lsn_int(
            sk.timeline_status(service.tenant_id, service.timeline_id)["flush_lsn"]) // SEGMENT_SIZE + 1))
        assert sk.metric("safekeeper_wal_backup_segments_total") >= last_full - first
        assert sk.metric("safekeeper_wal_backup_bytes_total") >= (last_full - first) * SEGMENT_SIZE
        assert sk.metric("safekeeper_wal_segments_removed_total") == 0

    # backup_lsn is persisted: a crashed safekeeper comes back with it.
    sk1 = service.safekeepers[0]
    before = sk1.timeline_status(service.tenant_id, service.timeline_id)
    sk1.kill()
    sk1.start()
    after = sk1.timeline_status(service.tenant_id, service.timeline_id)
    assert lsn_int(after["backup_lsn"]) >= last_full * SEGMENT_SIZE
    assert after["flush_lsn"] == before["flush_lsn"]


def test_removal_needs_offload_and_pageserver_lsn(offload_compute: Compute, offload_service: WalService,
                                                  s3_server: S3Server):
    service, compute = offload_service, offload_compute
    sk1, sk2, sk3 = service.safekeepers
    tenant, timeline = service.tenant_id, service.timeline_id
    end = write_wal(compute, 80)
    commit = wait_committed(service, end)
    first, last_full = compute.start_lsn // SEGMENT_SIZE, commit // SEGMENT_SIZE
    wait_backed_up(service, last_full * SEGMENT_SIZE)
    all_local = local_segments(sk1, service)
    assert all_local[0] == first

    # A standby's apply position is not a remote consistent LSN (a standby
    # has its tenant's token, not a pageserver's).
    report_remote_consistent(sk1, service, commit, application_name="standby", token=service.token())
    assert lsn_int(sk1.timeline_status(tenant, timeline)["remote_consistent_lsn"]) == 0

    # The pageserver reports a remote consistent LSN in the middle of a
    # segment: the segments entirely below it go, nothing else.
    middle = (first + 3) * SEGMENT_SIZE + 100
    report_remote_consistent(sk1, service, middle)
    wait_until("sk1 to remove the segments below the remote consistent LSN",
               lambda: local_segments(sk1, service)[0] == first + 3, 30)
    assert local_segments(sk1, service) == [s for s in all_local if s >= first + 3]
    assert lsn_int(sk1.timeline_status(tenant, timeline)["remote_consistent_lsn"]) == middle
    # Removal relied on persisted values only.
    state = persisted_state(sk1, service)
    assert lsn_int(state["remote_consistent_lsn"]) == middle
    assert lsn_int(state["backup_lsn"]) >= (first + 3) * SEGMENT_SIZE
    assert lsn_int(state["commit_lsn"]) >= (first + 3) * SEGMENT_SIZE
    for sk in (sk2, sk3):
        assert local_segments(sk, service) == all_local, "removed without feedback"

    # Up to the commit LSN: everything offloaded goes, the segment being
    # written stays.
    report_remote_consistent(sk1, service, commit)
    wait_until("sk1 to remove every offloaded segment",
               lambda: local_segments(sk1, service)[0] == last_full, 30)
    flush = lsn_int(sk1.timeline_status(tenant, timeline)["flush_lsn"])
    assert local_segments(sk1, service) == list(range(last_full, flush // SEGMENT_SIZE + 1))
    # The counter moves after the files are gone.
    wait_until("the removal counter", lambda: sk1.metric("safekeeper_wal_segments_removed_total") == last_full - first, 10)

    # A read below the first local segment is served from S3, byte-exact.
    downloads = sk1.metric("safekeeper_wal_segments_downloaded_total")
    reader = ReplicationReader(sk1, service, compute.start_lsn, application_name="reader")
    wal = reader.read_until(commit)
    reader.close()
    assert wal == sk2.read_wal(tenant, timeline, compute.start_lsn, commit)
    assert sk1.metric("safekeeper_wal_segments_downloaded_total") >= downloads + (last_full - first)

    # A segment switch puts the flush LSN at a segment's end. Reported as
    # remote consistent, everything below may go, except the segment holding
    # the last flushed byte: after a crash sk1 finds its WAL, and its
    # horizons, again and keeps up.
    compute.pg.sql("INSERT INTO marker VALUES (2)")
    compute.pg.sql("SELECT pg_switch_wal()")
    switch_end = lsn_int(compute.pg.sql("SELECT pg_current_wal_insert_lsn()")) // SEGMENT_SIZE * SEGMENT_SIZE
    wait_committed(service, switch_end)
    wait_backed_up(service, switch_end)
    report_remote_consistent(sk1, service, switch_end)
    wait_until("sk1 to persist the remote consistent LSN",
               lambda: lsn_int(persisted_state(sk1, service)["remote_consistent_lsn"]) >= switch_end, 30)
    before = sk1.timeline_status(tenant, timeline)
    assert (lsn_int(before["flush_lsn"]) - 1) // SEGMENT_SIZE in local_segments(sk1, service)
    sk1.kill()
    sk1.start()
    after = sk1.timeline_status(tenant, timeline)
    assert lsn_int(after["flush_lsn"]) >= lsn_int(before["flush_lsn"]) >= switch_end
    assert lsn_int(after["remote_consistent_lsn"]) >= switch_end
    assert lsn_int(after["backup_lsn"]) >= switch_end
    end = write_wal(compute, 5)
    wait_committed(service, end)
    assert sk1.read_wal(tenant, timeline, switch_end, end) == sk2.read_wal(tenant, timeline, switch_end, end)

    # Without remote storage, such a read fails clearly (never wrong bytes).
    assert sk1.stop() == 0
    sk1.extra_args = []
    sk1.start()
    with pytest.raises(ReplicationError, match="no remote storage is configured"):
        reader = ReplicationReader(sk1, service, compute.start_lsn, application_name="reader")
        reader.read_until(commit)
    assert local_segments(sk1, service)[0] > first


def test_lost_disk_loses_no_wal(offload_compute: Compute, offload_service: WalService, s3_server: S3Server,
                                pg_bin: PgBin, neon_binpath: Path):
    service, compute = offload_service, offload_compute
    tenant, timeline = service.tenant_id, service.timeline_id
    # The walproposer's donor loses its disk: the hardest case, as recovery
    # must then read from another safekeeper.
    log = compute.walproposer.log
    donor = re.findall(r'elected term=\d+ donor="([^"]+)"', log)[-1]
    sk3 = next(sk for sk in service.safekeepers if sk.address == donor)
    sk1, sk2 = (sk for sk in service.safekeepers if sk is not sk3)
    end = write_wal(compute, 60)
    commit = wait_committed(service, end)
    first, last_full = compute.start_lsn // SEGMENT_SIZE, commit // SEGMENT_SIZE
    wait_backed_up(service, last_full * SEGMENT_SIZE)

    # sk3 (the donor) loses its disk; the other two still form a quorum.
    sk3.kill()
    shutil.rmtree(sk3.datadir)
    end = write_wal(compute, 2)
    wait_committed(service, end)

    # Every offloaded segment is in S3, and they decode end to end.
    assert remote_segments(s3_server, service) == list(range(first, last_full))
    segments = {segment_name(s): s3_server.get(remote_prefix(service) + segment_name(s)) for s in range(first, last_full)}
    check_segments_decode(pg_bin, neon_binpath, segments, compute, first, last_full)

    # sk1 and sk2 remove what the pageserver has (as the test says).
    for sk in (sk1, sk2):
        report_remote_consistent(sk, service, commit)
    wait_until("early segments to be removed",
               lambda: all(local_segments(sk, service)[0] == last_full for sk in (sk1, sk2)), 30)

    # sk3 comes back empty and recovers the whole timeline from another
    # safekeeper, which reads its removed segments from S3.
    sk3.datadir.mkdir()
    sk3.start()
    response = sk3.http("POST", f"/v1/tenant/{tenant}/timeline",
                        json={"timeline_id": timeline, "pg_version": 150000})
    assert response.status_code == 201, response.text
    end = write_wal(compute, 2)
    wait_committed(service, end, timeout=90)
    assert len(service.statuses()) == 3
    recovered = sk3.read_wal(tenant, timeline, compute.start_lsn, last_full * SEGMENT_SIZE)
    assert recovered == b"".join(segments.values())[compute.start_lsn - first * SEGMENT_SIZE:]
    assert sk3.read_wal(tenant, timeline, last_full * SEGMENT_SIZE, end) == \
        sk2.read_wal(tenant, timeline, last_full * SEGMENT_SIZE, end)
    assert sum(sk.metric("safekeeper_wal_segments_downloaded_total") for sk in (sk1, sk2)) >= last_full - first


def test_s3_outage_delays_uploads_and_removal(offload_compute: Compute, offload_service: WalService,
                                              s3_server: S3Server):
    service, compute = offload_service, offload_compute
    sk1, sk2, sk3 = service.safekeepers
    tenant, timeline = service.tenant_id, service.timeline_id
    end = write_wal(compute, 20)
    commit = wait_committed(service, end)
    first, before_cut = compute.start_lsn // SEGMENT_SIZE, commit // SEGMENT_SIZE
    wait_backed_up(service, before_cut * SEGMENT_SIZE)

    s3_server.relay.cut()
    failures = [sk.metric("safekeeper_wal_backup_failures_total") for sk in service.safekeepers]
    # Commits are still acknowledged.
    end = write_wal(compute, 50)
    commit = wait_committed(service, end)
    last_full = commit // SEGMENT_SIZE
    assert last_full - before_cut >= 3
    wait_until("uploads to fail", lambda: all(
        sk.metric("safekeeper_wal_backup_failures_total") > f for sk, f in zip(service.safekeepers, failures)), 60)
    # The pageserver has it all, but what is not offloaded stays.
    report_remote_consistent(sk1, service, commit)
    wait_until("sk1 to remove what was offloaded before the outage",
               lambda: local_segments(sk1, service)[0] == before_cut, 30)
    flush = lsn_int(sk1.timeline_status(tenant, timeline)["flush_lsn"])
    assert local_segments(sk1, service) == list(range(before_cut, flush // SEGMENT_SIZE + 1))
    for status in service.statuses():
        assert lsn_int(status["backup_lsn"]) == before_cut * SEGMENT_SIZE
    assert remote_segments(s3_server, service) == list(range(first, before_cut))

    # S3 is back: the backlog goes out, nothing is missing, and sk1 removes
    # what is now offloaded.
    s3_server.relay.restore()
    wait_backed_up(service, last_full * SEGMENT_SIZE, timeout=90)
    assert remote_segments(s3_server, service) == list(range(first, last_full))
    for segno in range(before_cut, last_full):
        assert s3_server.get(remote_prefix(service) + segment_name(segno)) == \
            (timeline_dir(sk2, service) / segment_name(segno)).read_bytes()
    wait_until("sk1 to remove the backlog once offloaded",
               lambda: local_segments(sk1, service)[0] == last_full, 30)
    wal = read_segments(timeline_dir(sk2, service), compute.start_lsn, commit)
    reader = ReplicationReader(sk1, service, compute.start_lsn, application_name="reader")
    assert reader.read_until(commit) == wal
    reader.close()
