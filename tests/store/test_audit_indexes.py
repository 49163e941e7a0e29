"""Audit filters are served by (column[, decision], seq) indexes (migration 0009).

Assertions are on the query plan, never on time: "the newest N events for a
target" must be an index seek read in ``seq`` order, so its cost does not grow
with the log (``bench/foundation.py`` measures that).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect

from lattice.core.audit import AuditQuery, query_statement
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from lattice.store.tables import audit_events

#: filter -> the index that must serve it
CASES = {
    "target": (AuditQuery(target="bucket/key-7"), "ix_audit_target_seq"),
    "actor": (AuditQuery(actor="user:u3"), "ix_audit_actor_seq"),
    "decision": (AuditQuery(decision="deny"), "ix_audit_decision_seq"),
    "target+decision": (
        AuditQuery(target="bucket/key-7", decision="deny"),
        "ix_audit_target_decision_seq",
    ),
    "actor+decision": (
        AuditQuery(actor="user:u3", decision="allow"),
        "ix_audit_actor_decision_seq",
    ),
}


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


def _sql(db: Database, q: AuditQuery) -> str:
    compiled = query_statement(q).compile(
        dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


def test_the_filter_indexes_exist(db: Database) -> None:
    indexes = {i["name"]: i["column_names"] for i in inspect(db.engine).get_indexes("audit_events")}
    assert indexes["ix_audit_target_seq"] == ["target", "seq"]
    assert indexes["ix_audit_actor_seq"] == ["actor", "seq"]
    assert indexes["ix_audit_decision_seq"] == ["decision", "seq"]
    assert indexes["ix_audit_target_decision_seq"] == ["target", "decision", "seq"]
    assert indexes["ix_audit_actor_decision_seq"] == ["actor", "decision", "seq"]
    assert "ix_audit_actor" not in indexes  # (actor, seq) serves what it did
    assert "ix_audit_action" not in indexes  # no plan could use it (migration 0009)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("page", ["first", "cursor", "ascending"])
def test_sqlite_serves_each_filter_from_its_index_in_seq_order(
    tmp_path: object, case: str, page: str
) -> None:
    db = Database(f"sqlite:///{tmp_path}/plan.db")
    try:
        upgrade(db)
        q, index = CASES[case]
        if page == "cursor":
            q = AuditQuery(**{**q.__dict__, "cursor": 5000})
        elif page == "ascending":
            q = AuditQuery(**{**q.__dict__, "descending": False, "cursor": 10})
        with db.read() as conn:
            plan = [r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {_sql(db, q)}")]
        assert len(plan) == 1, plan
        assert f"USING INDEX {index} (" in plan[0], plan
        if q.cursor is not None:  # the cursor is part of the seek, not a filter
            assert "seq" in plan[0].split("(", 1)[1], plan
        # no sort step: rows come out of the index in seq order, the LIMIT stops it
        assert not any("TEMP B-TREE" in step for step in plan), plan
    finally:
        db.dispose()


@pytest.mark.postgres
def test_postgres_serves_each_filter_from_an_index(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("PostgreSQL plans")
    rng = random.Random(7)
    rows = [
        {
            "seq": seq,
            "ts": f"2026-01-01T00:00:00.{seq % 1000000:06d}Z",
            "actor": f"user:u{rng.randrange(20)}",
            "action": "kv.put",
            "target": f"bucket/key-{rng.randrange(1000)}",
            "decision": "deny" if rng.random() < 0.05 else "allow",
            "reason": "",
            "correlation_id": None,
            "detail": "{}",
            "prev_hash": "0" * 64,
            "hash": "0" * 64,
            "mac": None,
        }
        for seq in range(1, 20_001)
    ]
    with db.write() as conn:
        conn.execute(audit_events.insert(), rows)
    with db.write() as conn:
        conn.exec_driver_sql("ANALYZE audit_events")
    for case, (q, _index) in CASES.items():
        with db.read() as conn:
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {_sql(db, q)}"))
        assert "Seq Scan" not in plan, (case, plan)
        if case.startswith("target"):  # few matches: found through the target's index
            assert "ix_audit_target_" in plan, (case, plan)
        else:  # many matches: PostgreSQL may instead walk seq backwards to the LIMIT,
            # which reads about limit / share rows, also independent of the log's size
            assert "ix_audit_" in plan or (
                "Index Scan Backward using audit_events_pkey" in plan and "Limit" in plan
            ), (case, plan)
