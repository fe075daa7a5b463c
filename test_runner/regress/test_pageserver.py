"""The pageserver with real PostgreSQL: computes start from its base
backups, their WAL reaches it through the safekeepers, and branches at any
LSN see exactly what was committed before it."""

from __future__ import annotations

from fixtures.lsn import lsn_int, lsn_str
from fixtures.neon_fixtures import NeonEnv


def test_compute_restarts_from_pageserver(neon_env: NeonEnv):
    ps = neon_env.pageserver
    tenant = ps.create_tenant()
    timeline = ps.create_timeline(tenant)["timeline_id"]
    neon_env.wal_service(tenant, timeline)

    main = neon_env.compute("main", tenant, timeline)
    main.pg.sql("CREATE TABLE t (key int PRIMARY KEY, value text)")
    points = []
    for i in range(1, 6):
        main.pg.sql(f"INSERT INTO t SELECT g, 'row ' || g FROM generate_series({(i - 1) * 100 + 1}, {i * 100}) g")
        points.append((main.insert_lsn(), i * 100))
    last = main.insert_lsn()
    ps.wait_for_lsn(tenant, timeline, last)
    main.stop()

    # A new compute starts where the safekeepers' WAL ends (as compute_ctl
    # will: sync, then a base backup at that LSN) and has every committed row.
    synced = neon_env.sync_safekeepers(tenant, timeline)
    again = neon_env.compute("again", tenant, timeline, lsn=synced)
    assert again.pg.sql("SELECT count(*), sum(key) FROM t") == "500|125250"
    again.pg.sql("INSERT INTO t VALUES (1000, 'after restart')")
    ps.wait_for_lsn(tenant, timeline, again.insert_lsn())

    # A branch at each recorded LSN sees exactly the rows committed up to it.
    for n, (lsn, rows) in enumerate(points):
        branch = ps.create_timeline(tenant, ancestor_timeline_id=timeline, ancestor_start_lsn=lsn_str(lsn))
        assert lsn_int(branch["ancestor_lsn"]) == lsn
        c = neon_env.compute(f"branch{n}", tenant, branch["timeline_id"], walproposer=False)
        assert c.pg.sql("SELECT count(*) FROM t") == str(rows)
        c.stop()

    # Branching beyond the end of WAL is refused and creates nothing.
    before = ps.http("GET", f"/v1/tenant/{tenant}/timeline").json()
    r = ps.http("POST", f"/v1/tenant/{tenant}/timeline", json={"ancestor_timeline_id": timeline, "ancestor_start_lsn": "FF/0"})
    assert r.status_code == 400, r.text
    assert "beyond" in r.json()["error"] or "ends at" in r.json()["error"]
    assert len(ps.http("GET", f"/v1/tenant/{tenant}/timeline").json()) == len(before)

