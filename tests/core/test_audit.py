"""The audit hash chain: appends, queries, and verification catching tampering."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from lattice.core.audit import (
    GENESIS,
    AuditLog,
    AuditQuery,
    PendingEvent,
    canonical_json,
    chain_hash,
)
from lattice.core.auditseal import AuditKey
from lattice.errors import AuditChainBroken, ValidationFailed
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from lattice.store.tables import audit_events


@pytest.fixture
def db(db_url: str):  # type: ignore[no-untyped-def]
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


KEY = AuditKey(os.urandom(32))


@pytest.fixture
def log(db: Database) -> AuditLog:
    audit = AuditLog(db, key=KEY)
    for i in range(5):
        audit.append(actor="user:a", action=f"test.e{i}", target=f"t{i}", detail={"i": i})
    return audit


def test_hash_is_sha256_of_prev_and_canonical_event(log: AuditLog) -> None:
    first = next(iter(log.iter_all()))
    expected = hashlib.sha256(bytes.fromhex(GENESIS) + canonical_json(first.hashed_form()))
    assert first.hash == expected.hexdigest()
    assert first.prev_hash == GENESIS
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_chain_links_and_verifies(log: AuditLog) -> None:
    events = list(log.iter_all())
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    for prev, cur in itertools.pairwise(events):
        assert cur.prev_hash == prev.hash
        assert cur.hash == chain_hash(prev.hash, cur.hashed_form())
    assert log.verify() == 5


def test_verify_catches_an_edited_row(log: AuditLog, db: Database) -> None:
    with db.write() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == 3).values(actor="user:b"))
    with pytest.raises(AuditChainBroken, match="seq 3") as info:
        log.verify()
    assert info.value.seq == 3


def test_verify_catches_an_edited_detail(log: AuditLog, db: Database) -> None:
    with db.write() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == 2).values(detail='{"i":99}'))
    with pytest.raises(AuditChainBroken, match="seq 2"):
        log.verify()


def test_verify_catches_a_deleted_row(log: AuditLog, db: Database) -> None:
    with db.write() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq == 2))
    with pytest.raises(AuditChainBroken, match="seq 2") as info:
        log.verify()
    assert "missing" in info.value.reason


def test_verify_catches_a_deleted_and_renumbered_row(log: AuditLog, db: Database) -> None:
    with db.write() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.seq == 2))
        for seq in (3, 4, 5):
            conn.execute(update(audit_events).where(audit_events.c.seq == seq).values(seq=seq - 1))
    with pytest.raises(AuditChainBroken, match="seq 2"):
        log.verify()


def test_verify_catches_reordered_rows(log: AuditLog, db: Database) -> None:
    with db.write() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == 4).values(seq=-4))
        conn.execute(update(audit_events).where(audit_events.c.seq == 3).values(seq=4))
        conn.execute(update(audit_events).where(audit_events.c.seq == -4).values(seq=3))
    with pytest.raises(AuditChainBroken, match="seq 3"):
        log.verify()


def test_a_new_log_object_continues_the_chain(log: AuditLog, db: Database) -> None:
    again = AuditLog(db, key=KEY)
    event = again.append_event(actor="x", action="test.more")
    assert event.seq == 6
    assert again.verify() == 6


def test_two_writers_on_one_database_keep_one_chain(db: Database) -> None:
    writers = [AuditLog(db, key=KEY), AuditLog(db, key=KEY)]  # like two server processes

    def work(audit: AuditLog, n: int) -> None:
        for i in range(n):
            audit.append(actor="w", action="test.race", detail={"i": i})

    threads = [threading.Thread(target=work, args=(w, 25)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writers[0].verify() == 50


def test_query_filters_and_cursor(log: AuditLog) -> None:
    log.append(actor="user:b", action="other.thing", decision="deny", reason="no")
    page, cursor = log.query(AuditQuery(limit=2))
    assert [e.seq for e in page] == [6, 5] and cursor == 5
    page2, _ = log.query(AuditQuery(limit=2, cursor=cursor))
    assert [e.seq for e in page2] == [4, 3]
    asc, _ = log.query(AuditQuery(limit=10, descending=False, action_prefix="test."))
    assert [e.seq for e in asc] == [1, 2, 3, 4, 5]
    denied, _ = log.query(AuditQuery(decision="deny"))
    assert [e.actor for e in denied] == ["user:b"]
    assert log.query(AuditQuery(actor="user:b", action_prefix="test."))[0] == []
    pct, _ = log.query(AuditQuery(action_prefix="test%"))
    assert pct == []  # LIKE wildcards are escaped


def test_query_rejects_bad_limits() -> None:
    with pytest.raises(ValidationFailed, match="limit"):
        AuditQuery(limit=0)
    with pytest.raises(ValidationFailed, match="decision"):
        AuditQuery(decision="maybe")


def test_stored_detail_is_canonical(log: AuditLog, db: Database) -> None:
    with db.read() as conn:
        raw = conn.execute(select(audit_events.c.detail).where(audit_events.c.seq == 1)).scalar()
    assert raw == canonical_json(json.loads(raw)).decode()


def test_control_characters_in_text_fields_are_made_visible(log: AuditLog) -> None:
    event = log.append_event(actor="a\x00b", action="test.ctl", target="x\ny", reason="r\x7f")
    assert event.actor == "a\\x00b" and event.target == "x\\x0ay" and event.reason == "r\\x7f"
    assert log.verify() == 6


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(
    actor=_TEXT,
    action=_TEXT,
    target=_TEXT,
    decision=st.sampled_from(["allow", "deny"]),
    reason=_TEXT,
    correlation_id=st.none() | _TEXT,
    detail=st.none() | st.dictionaries(_TEXT, _JSON, max_size=5),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_event_bytes_are_the_canonical_json(**kw: Any) -> None:
    """The append path builds the hashed bytes around seq and ts; they must be
    exactly canonical_json of the event, or verify() would reject the chain."""
    seq = kw.pop("seq")
    pending = PendingEvent(**kw)
    base, detail_text = pending.normalized
    ts = now_iso()
    event = {"seq": seq, "ts": ts, **base}
    assert pending.event_bytes(seq, ts) == canonical_json(event)
    assert detail_text == canonical_json(base["detail"]).decode()


def test_detail_with_non_string_keys_is_stored_in_verifiable_form(log: AuditLog) -> None:
    # {1, 2, 10} sort as numbers before encoding and as strings after: only the
    # second text is canonical, and that is the one hashed and stored
    event = log.append_event(actor="a", action="test.keys", detail={1: "a", 10: "b", 2: "c"})
    assert event.detail == {"1": "a", "10": "b", "2": "c"}
    assert log.verify() == 6


def test_two_databases_on_one_file_keep_one_chain(db: Database) -> None:
    # two Database objects are two connection pools (two kept insert
    # connections on SQLite), like two server processes sharing the database
    other = Database(db.url)
    try:
        writers = [AuditLog(db, key=KEY), AuditLog(other, key=KEY)]
        for w in writers:
            w.append(actor="w", action="test.first")  # both now cache a head

        def work(audit: AuditLog, n: int) -> None:
            for i in range(n):
                audit.append(actor="w", action="test.race", detail={"i": i})

        threads = [threading.Thread(target=work, args=(w, 40)) for w in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert writers[1].verify() == 82
    finally:
        other.dispose()


def test_a_batch_is_all_or_nothing(log: AuditLog, db: Database) -> None:
    # another writer took seq 7 behind the log's back, so its cached head (5) is
    # stale: the batch 6..8 fails on 7 as a whole (no row 6 stays), the log
    # reloads its head and appends the batch after the other writer's row
    squat = "ab" * 32
    with db.write() as conn:
        conn.execute(
            audit_events.insert(),
            {"seq": 7, "ts": now_iso(), "actor": "x", "action": "test.squat", "target": "",
             "decision": "allow", "reason": "", "correlation_id": None, "detail": "{}",
             "prev_hash": GENESIS, "hash": squat, "mac": None},
        )  # fmt: skip
    events = log.append_many([PendingEvent(actor="b", action=f"test.b{i}") for i in range(3)])
    assert [e.seq for e in events] == [8, 9, 10]
    assert events[0].prev_hash == squat
    with db.read() as conn:
        seqs = conn.execute(select(audit_events.c.seq).order_by(audit_events.c.seq)).scalars()
        assert list(seqs) == [1, 2, 3, 4, 5, 7, 8, 9, 10]
