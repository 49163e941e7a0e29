"""Folding in the write-behind audit buffer: a flood costs rows per window, not per call."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from lattice.core.audit import AuditLog
from lattice.core.auditbuffer import MAX_TARGETS, BufferedAudit
from lattice.core.auditseal import AuditKey
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from lattice.store.tables import audit_events

INTERVAL = 0.2


@pytest.fixture
def audit(db_url: str) -> Iterator[AuditLog]:
    db = Database(db_url)
    upgrade(db)
    yield AuditLog(db, key=AuditKey(os.urandom(32)))
    db.dispose()


def rows(audit: AuditLog) -> list[dict]:  # type: ignore[type-arg]
    return [e.to_dict() for e in audit.iter_all()]


def count_of(event: dict) -> int:  # type: ignore[type-arg]
    return int(event["detail"].get("count", 1))


def test_a_flood_of_identical_denials_is_folded_and_counted_exactly(audit: AuditLog) -> None:
    buffered = BufferedAudit(audit, interval=INTERVAL)
    threads = 4
    sent = [0] * threads
    started = time.monotonic()
    until = started + 6 * INTERVAL  # the flood spans several windows

    def flood(n: int) -> None:
        i = 0
        while i < 500 or time.monotonic() < until:
            buffered.append(
                actor="plugin:acme.page",
                action="plugin.host.kv.get",
                target=f"site/k{i % 40}",  # 40 distinct targets, more than are listed
                decision="deny",
                reason="rate limited",
                correlation_id=f"cid-{n}-{i}",
                detail={"plugin_id": "acme.page", "capability": "kv:read"},
            )
            i += 1
        sent[n] = i

    workers = [threading.Thread(target=flood, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    buffered.close()
    elapsed = time.monotonic() - started
    events = rows(audit)
    total = sum(sent)
    # one row per flush window at most (plus the final flush), never one per call
    assert len(events) <= elapsed / INTERVAL + 2
    assert len(events) < total / 10
    assert sum(count_of(e) for e in events) == total
    targets: Counter[str] = Counter()
    unlisted = 0
    for e in events:
        assert (e["actor"], e["action"], e["decision"], e["reason"]) == (
            "plugin:acme.page", "plugin.host.kv.get", "deny", "rate limited",
        )  # fmt: skip
        assert e["detail"]["plugin_id"] == "acme.page" and e["correlation_id"].startswith("cid-")
        if "count" in e["detail"]:
            d = e["detail"]
            assert len(d["targets"]) <= MAX_TARGETS
            assert sum(d["targets"].values()) + d["targets_unlisted"] == d["count"]
            assert d["first_ts"] <= d["last_ts"] <= e["ts"]
            targets.update(d["targets"])
            unlisted += d["targets_unlisted"]
        else:
            targets[e["target"]] += 1
    assert sum(targets.values()) + unlisted == total
    assert audit.verify() == len(events)


def test_folds_keep_the_first_event_and_what_differs(audit: AuditLog) -> None:
    buffered = BufferedAudit(audit, interval=3600)  # one window: flushed by hand
    common = {"actor": "plugin:p", "action": "plugin.host.kv.get", "decision": "deny"}
    for i in range(3):
        buffered.append(**common, target="a", reason="rate limited", correlation_id=f"c{i}")
    buffered.append(**common, target="b", reason="rate limited", correlation_id="c3")
    buffered.append(**common, target="a", reason="other reason", correlation_id="c4")
    buffered.append(**common, target="a", reason="rate limited", detail={"n": 1})
    buffered.append(**common, target="a", reason="rate limited", detail={"n": True})
    buffered.append(**common, target="a", reason="x", detail={"nested": {"n": 1}})
    buffered.append(**common, target="a", reason="x", detail={"nested": {"n": 1}})
    buffered.append(**common, target="a", reason="x", detail={"count": 7})
    buffered.append(**common, target="a", reason="x", detail={"count": 7})
    buffered.flush()
    events = rows(audit)
    folded = events[0]
    assert folded["target"] == "*" and folded["correlation_id"] == "c0"
    assert folded["detail"]["count"] == 4
    assert folded["detail"]["targets"] == {"a": 3, "b": 1}
    assert folded["detail"]["targets_unlisted"] == 0
    # a different reason, or a detail of another type, is another event; nested
    # details and details that use the fold's own keys are never folded
    assert [(e["reason"], e["detail"]) for e in events[1:]] == [
        ("other reason", {}),
        ("rate limited", {"n": 1}),
        ("rate limited", {"n": True}),
        ("x", {"nested": {"n": 1}}),
        ("x", {"nested": {"n": 1}}),
        ("x", {"count": 7}),
        ("x", {"count": 7}),
    ]
    # the next window starts afresh, and a lone event is written unchanged
    buffered.append(**common, target="a", reason="rate limited", correlation_id="c9")
    buffered.close()
    last = rows(audit)[-1]
    assert last["target"] == "a" and last["correlation_id"] == "c9" and last["detail"] == {}


def test_a_fold_of_one_target_keeps_it_as_its_target(audit: AuditLog) -> None:
    buffered = BufferedAudit(audit, interval=3600)
    for _ in range(5):
        buffered.append(actor="anon@10.0.0.9", action="auth.login", target="user:admin",
                        decision="deny", reason="rate limited")  # fmt: skip
    buffered.close()
    (event,) = rows(audit)
    assert event["target"] == "user:admin" and event["detail"]["count"] == 5
    assert event["detail"]["targets"] == {"user:admin": 5}


def test_folded_detail_is_stored_canonical(audit: AuditLog) -> None:
    buffered = BufferedAudit(audit, interval=3600)
    for i in range(MAX_TARGETS + 5):
        buffered.append(actor="p", action="a", target=f"t{i}\n" + "x" * 600, decision="deny")
    buffered.close()
    with audit._db.read() as conn:
        (raw,) = conn.execute(select(audit_events.c.detail)).scalars().all()
    detail = json.loads(raw)
    assert detail["count"] == MAX_TARGETS + 5 and detail["targets_unlisted"] == 5
    assert all(len(t) <= 512 for t in detail["targets"])
    assert audit.verify() == 1
