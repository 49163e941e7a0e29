"""The append-only, hash-chained audit log.

Each event is ``{seq, ts, actor, action, target, decision, reason,
correlation_id, detail}``; its hash is
``sha256(bytes.fromhex(prev_hash) || canonical_json(event))`` with the genesis
``prev_hash`` of 64 zeros.  ``canonical_json`` is UTF-8 JSON with sorted keys
and no insignificant whitespace.  ``detail`` is stored exactly as hashed.

Keyed and checkpointed (``core.auditseal``): each row also stores
``mac = HMAC-SHA256(chain key, hash)`` with a key derived from the secret key
file, and the server writes the signed head to a checkpoint file outside the
database.  :meth:`AuditLog.verify` needs the key; it refuses a row without a
valid MAC, detail JSON with duplicate keys or not in canonical form, and a log
that ends before the latest checkpoint.  Rows from before the chain was keyed
get their MAC once, at the first start with the key (only while the data
directory has no checkpoint yet, so clearing MACs later is no way back).

Evolution rule: the event shape is versioned by its field set.  A new field
may only be added with a default that is left out of the canonical form when
it holds that default, so every old row still hashes the same.

Concurrency: appends in one process are serialized by a lock and use a cached
chain head; ``seq`` is the primary key, so an append racing another *process*
on the same database fails its insert, reloads the head and retries.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, select, update

from lattice.core.auditseal import AuditKey, Checkpoint, CheckpointFile
from lattice.core.auditsink import Decision
from lattice.errors import (
    AuditChainBroken,
    AuditChainTruncated,
    AuditCheckpointInvalid,
    ConfigError,
    Conflict,
    StoreError,
    ValidationFailed,
)
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import audit_events

__all__ = [
    "GENESIS",
    "AuditEvent",
    "AuditLog",
    "AuditQuery",
    "PendingEvent",
    "canonical_json",
    "chain_hash",
]

log = logging.getLogger("lattice.audit")

GENESIS = "0" * 64
#: column order of the row dicts built in append_many (and of the batch INSERT)
_ROW_ORDER = (
    "seq", "ts", "actor", "action", "target", "decision", "reason", "correlation_id",
    "detail", "prev_hash", "hash", "mac",
)  # fmt: skip
MAX_PAGE = 500
_FIELDS = ("seq", "ts", "actor", "action", "target", "decision", "reason", "correlation_id")
_SET_MAC = (
    update(audit_events)
    .where(audit_events.c.seq == bindparam("b_seq"), audit_events.c.mac.is_(None))
    .values(mac=bindparam("b_mac"))
)


#: the string encoder json.dumps(ensure_ascii=False) uses (the C one when present)
_enc = json.encoder.encode_basestring


#: one encoder for canonical JSON (json.dumps would build one per call)
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode("utf-8")


def chain_hash(prev_hash: str, event: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(event)).hexdigest()


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    decision: str
    reason: str
    correlation_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def hashed_form(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "decision": self.decision,
            "reason": self.reason,
            "correlation_id": self.correlation_id,
            "detail": self.detail,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.hashed_form(), "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class AuditQuery:
    action_prefix: str | None = None
    actor: str | None = None
    decision: str | None = None
    target: str | None = None
    since: str | None = None
    until: str | None = None
    cursor: int | None = None
    limit: int = 100
    descending: bool = True

    def __post_init__(self) -> None:
        for name in ("action_prefix", "actor", "target", "since", "until"):
            value = getattr(self, name)
            if value is not None and any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
                raise ValidationFailed(f"{name} must not contain control characters")
        if not 1 <= self.limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE}")
        if self.decision not in (None, "allow", "deny"):
            raise ValidationFailed("decision must be 'allow' or 'deny'")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clip(text: str, limit: int) -> str:
    """Bound a text field and make control characters visible (``\\x00``):
    they are meaningless in an audit line and PostgreSQL refuses NUL."""
    if _CONTROL.search(text):
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class PendingEvent:
    """An event not yet in the chain (no seq, ts or hash)."""

    actor: str
    action: str
    target: str = ""
    decision: str = "allow"
    reason: str = ""
    correlation_id: str | None = None
    detail: dict[str, Any] | None = None

    @functools.cached_property
    def normalized(self) -> tuple[dict[str, Any], str]:
        if self.decision not in ("allow", "deny"):
            raise ValueError(f"decision must be allow or deny, not {self.decision!r}")
        # Round-trip the detail through canonical JSON so what we hash is what
        # we store and what a verifier will read back.  The text is encoded again
        # from what it parses to: a dict with non-string keys ({1: .., 10: .., 2: ..})
        # sorts differently once its keys are strings, and only the second text
        # is a fixed point that verify() accepts as canonical.
        detail_text = canonical_json(self.detail or {}).decode("utf-8")
        detail = json.loads(detail_text)
        again = canonical_json(detail).decode("utf-8")
        base = {
            "actor": _clip(self.actor, 128),
            "action": _clip(self.action, 128),
            "target": _clip(self.target, 512),
            "decision": self.decision,
            "reason": _clip(self.reason, 2000),
            "correlation_id": _clip(self.correlation_id, 64) if self.correlation_id else None,
            "detail": detail,
        }
        return base, again

    @functools.cached_property
    def hash_parts(self) -> tuple[bytes, bytes]:
        """The canonical JSON of the event around its ``seq`` and ``ts``.

        The canonical form of ``{seq, ts, actor, action, target, decision,
        reason, correlation_id, detail}`` is, keys sorted::

            {"action":..,"actor":..,"correlation_id":..,"decision":..,"detail":..,
             "reason":..,"seq":N,"target":..,"ts":"T"}

        so everything but ``N`` and ``T`` is fixed once the event is normalized.
        Each string is encoded by the same encoder ``json.dumps`` uses and the
        detail is its canonical text, so ``head + N + mid + T + '"}'`` equals
        ``canonical_json(event)`` byte for byte (pinned by
        ``tests/core/test_audit.py::test_event_bytes_are_the_canonical_json``)."""
        base, detail_text = self.normalized
        corr = base["correlation_id"]
        head = (
            f'{{"action":{_enc(base["action"])},"actor":{_enc(base["actor"])},'
            f'"correlation_id":{"null" if corr is None else _enc(corr)},'
            f'"decision":{_enc(base["decision"])},"detail":{detail_text},'
            f'"reason":{_enc(base["reason"])},"seq":'
        )
        mid = f',"target":{_enc(base["target"])},"ts":"'
        return head.encode("utf-8"), mid.encode("utf-8")

    def event_bytes(self, seq: int, ts: str) -> bytes:
        """``canonical_json`` of this event at ``seq`` and ``ts`` (a fixed-width
        timestamp, which needs no escaping), without encoding it as a whole."""
        head, mid = self.hash_parts
        return b'%s%d%s%s"}' % (head, seq, mid, ts.encode("ascii"))


class AuditLog:
    """Concrete :class:`~lattice.core.auditsink.AuditSink` over the store."""

    def __init__(
        self,
        db: Database,
        *,
        key: AuditKey | None = None,
        checkpoints: CheckpointFile | None = None,
        on_append: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._db = db
        self._key = key
        self._checkpoints = checkpoints
        self._checkpointed: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._head: tuple[int, str] | None = None
        self._on_append = on_append
        mark = "?" if db.engine.dialect.paramstyle == "qmark" else "%s"
        self._insert_sql = (
            f"INSERT INTO audit_events ({', '.join(_ROW_ORDER)}) "  # noqa: S608 - constants only
            f"VALUES ({', '.join([mark] * len(_ROW_ORDER))})"
        )

    def _load_head(self) -> tuple[int, str]:
        with self._db.read() as conn:
            row = conn.execute(
                select(audit_events.c.seq, audit_events.c.hash)
                .order_by(audit_events.c.seq.desc())
                .limit(1)
            ).first()
        return (int(row.seq), str(row.hash)) if row else (0, GENESIS)

    def append(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        decision: Decision = "allow",
        reason: str = "",
        correlation_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        pending = PendingEvent(
            actor=actor,
            action=action,
            target=target,
            decision=decision,
            reason=reason,
            correlation_id=correlation_id,
            detail=detail,
        )
        self.append_many([pending], keep=False)

    def append_event(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        decision: Decision = "allow",
        reason: str = "",
        correlation_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        pending = PendingEvent(
            actor=actor,
            action=action,
            target=target,
            decision=decision,
            reason=reason,
            correlation_id=correlation_id,
            detail=detail,
        )
        return self.append_many([pending])[0]

    def append_many(self, pending: list[PendingEvent], *, keep: bool = True) -> list[AuditEvent]:
        """Append events in order, in one transaction (all or none).

        Returns the appended events, or nothing when ``keep`` is False (the
        write-behind buffer does not need them)."""
        for p in pending:  # JSON work (and its errors) before taking the lock
            _ = p.hash_parts
        mac = self._key.row_mac_raw if self._key is not None else None
        with self._lock:
            for _attempt in range(20):
                seq, prev = self._head or self._load_head()
                rows: list[tuple[Any, ...]] = []
                ts = now_iso()  # one batch, one moment
                for p in pending:
                    seq += 1
                    raw = hashlib.sha256(bytes.fromhex(prev) + p.event_bytes(seq, ts)).digest()
                    digest = raw.hex()
                    base, detail_text = p.normalized
                    rows.append((
                        seq, ts, base["actor"], base["action"], base["target"],
                        base["decision"], base["reason"], base["correlation_id"],
                        detail_text, prev, digest, mac(raw) if mac is not None else None,
                    ))  # fmt: skip
                    prev = digest
                try:
                    self._db.insert_rows(self._insert_sql, rows)
                except Conflict:
                    self._head = None  # another process appended; reload and retry
                    continue
                except StoreError:
                    self._head = None
                    raise
                self._head = (seq, prev)
                break
            else:  # pragma: no cover - needs 20 consecutive lost races
                raise StoreError("could not append to the audit log under contention")
        if self._on_append is not None:
            if len(pending) == 1:
                self._on_append(pending[0].normalized[0]["action"], pending[0].decision, 1)
            else:
                counts = collections.Counter(
                    (p.normalized[0]["action"], p.decision) for p in pending
                )
                for (action, decision), n in counts.items():
                    self._on_append(action, decision, n)
        if not keep:
            return []
        return [
            AuditEvent(
                seq=r[0], ts=r[1], actor=r[2], action=r[3], target=r[4], decision=r[5],
                reason=r[6], correlation_id=r[7], detail=p.normalized[0]["detail"],
                prev_hash=r[9], hash=r[10],
            )
            for p, r in zip(pending, rows, strict=True)
        ]  # fmt: skip

    # -- reading ---------------------------------------------------------

    def query(self, q: AuditQuery) -> tuple[list[AuditEvent], int | None]:
        """One page of events plus the cursor for the next page (or None)."""
        with self._db.read() as conn:
            rows = conn.execute(query_statement(q)).all()
        events = [_row_to_event(r) for r in rows[: q.limit]]
        next_cursor = events[-1].seq if len(rows) > q.limit else None
        return events, next_cursor

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_events)).scalar_one())

    def _rows(self, batch: int = 1000) -> Iterator[Any]:
        """Every stored row in ``seq`` order, read in pages."""
        last = 0
        while True:
            with self._db.read() as conn:
                rows = conn.execute(
                    select(audit_events)
                    .where(audit_events.c.seq > last)
                    .order_by(audit_events.c.seq)
                    .limit(batch)
                ).all()
            if not rows:
                return
            yield from rows
            last = int(rows[-1].seq)

    def iter_all(self) -> Iterator[AuditEvent]:
        return (_row_to_event(r) for r in self._rows())

    # -- keying and checkpoints --------------------------------------------

    def head(self) -> tuple[int, str]:
        """The newest ``(seq, hash)`` this process knows (``(0, GENESIS)`` when empty)."""
        return self._head or self._load_head()

    def checkpoint(self) -> Checkpoint | None:
        """Write the head to the checkpoint file if it moved since the last write."""
        if self._checkpoints is None:
            return None
        head = self.head()
        if head == self._checkpointed:
            return None
        written = self._checkpoints.write(*head)
        self._checkpointed = head
        return written

    def latest_checkpoint(self) -> Checkpoint | None:
        return self._checkpoints.read() if self._checkpoints is not None else None

    def prepare(self) -> None:
        """At startup: MAC the rows written before the chain was keyed (only on a
        data directory without a checkpoint), then checkpoint the head."""
        if self._checkpoints is None:
            return
        if not self._checkpoints.exists():
            sealed = self.backfill_macs()
            if sealed:
                log.warning("audit chain: added MACs to %d events written before keying", sealed)
        else:
            try:
                anchor = self._checkpoints.read()
            except AuditCheckpointInvalid as exc:  # replaced below; verify reports the rest
                log.error("%s", exc.message)
                anchor = None
            seq = self.head()[0]
            if anchor is not None and anchor.seq > seq:
                log.error(
                    "audit log ends at seq %d but its checkpoint %s is at seq %d: events were "
                    "deleted (or an older backup restored; then move the checkpoint aside)",
                    seq, self._checkpoints.path, anchor.seq,
                )  # fmt: skip
        self.checkpoint()

    def backfill_macs(self) -> int:
        """Give each row of the leading run without a MAC its MAC, after checking its
        link and hash; stop at the first keyed row or the first broken one."""
        key = self._require_key()
        expected_seq, prev = 1, GENESIS
        updates: list[dict[str, Any]] = []
        sealed = 0
        for row in self._rows():
            if row.mac is not None:
                break
            try:
                prev = _check_row(row, expected_seq, prev)
            except AuditChainBroken as exc:
                log.error("audit chain: events from seq %d stay without MAC: %s", exc.seq, exc)
                break
            updates.append({"b_seq": expected_seq, "b_mac": key.row_mac(prev)})
            expected_seq += 1
            if len(updates) >= 1000:
                sealed += self._set_macs(updates)
                updates = []
        return sealed + self._set_macs(updates)

    def _set_macs(self, updates: list[dict[str, Any]]) -> int:
        if updates:
            with self._db.write() as conn:
                conn.execute(_SET_MAC, updates)
        return len(updates)

    def _require_key(self) -> AuditKey:
        if self._key is None:
            raise ConfigError(
                "the audit chain is keyed: checking it needs the server's secret key file"
            )
        return self._key

    def verify(self, progress: Callable[[int], None] | None = None) -> int:
        """Recompute the whole chain; return the number of events checked.

        Raises :class:`AuditChainBroken` with the first ``seq`` that does not
        verify: a row whose content was edited (hash mismatch), a deleted row
        (a gap in ``seq`` or a ``prev_hash`` that is not the previous hash),
        rows that were reordered, a row without a valid MAC (re-hashed,
        renumbered or forged), detail that is not canonical JSON or has a
        duplicate key; :class:`AuditChainTruncated` when the log ends before
        the latest checkpoint.  Without the key: :class:`ConfigError`.
        """
        key = self._require_key()
        anchor = self.latest_checkpoint()  # read first: rows appended meanwhile only add
        expected_seq, prev = 1, GENESIS
        anchored: str | None = None
        for row in self._rows():
            digest = _check_row(row, expected_seq, prev)
            if not key.row_mac_ok(digest, row.mac):
                missing = row.mac is None
                raise AuditChainBroken(
                    expected_seq,
                    "event has no MAC (written without the key, or forged)"
                    if missing
                    else "event MAC does not match (re-hashed, renumbered or forged)",
                )
            if anchor is not None and expected_seq == anchor.seq:
                anchored = digest
            prev = digest
            expected_seq += 1
            if progress is not None and (expected_seq - 1) % 1000 == 0:
                progress(expected_seq - 1)
        checked = expected_seq - 1
        if anchor is not None and anchor.seq > checked:
            raise AuditChainTruncated(anchor.seq, checked)
        if anchor is not None and anchor.seq > 0 and anchored != anchor.hash:
            raise AuditChainBroken(anchor.seq, "event does not match the checkpoint")
        return checked


def query_statement(q: AuditQuery) -> Select[Any]:
    """The SELECT for one page: ``q.limit + 1`` rows in ``seq`` order.

    Equality on target, actor or decision (alone or with decision) is served
    by a ``(column[, decision], seq)`` index in ``seq`` order, so the newest N
    matches cost the same at any log size (migration 0009,
    ``tests/store/test_audit_indexes.py``)."""
    stmt: Select[Any] = select(audit_events)
    c = audit_events.c
    if q.action_prefix:
        stmt = stmt.where(c.action.startswith(q.action_prefix, autoescape=True))
    if q.actor:
        stmt = stmt.where(c.actor == q.actor)
    if q.decision:
        stmt = stmt.where(c.decision == q.decision)
    if q.target:
        stmt = stmt.where(c.target == q.target)
    if q.since:
        stmt = stmt.where(c.ts >= q.since)
    if q.until:
        stmt = stmt.where(c.ts < q.until)
    if q.cursor is not None:
        stmt = stmt.where(c.seq < q.cursor if q.descending else c.seq > q.cursor)
    return stmt.order_by(c.seq.desc() if q.descending else c.seq.asc()).limit(q.limit + 1)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for k, v in pairs:
        if k in result:
            raise _DuplicateKey(k)
        result[k] = v
    return result


def _check_row(row: Any, expected_seq: int, prev: str) -> str:
    """Check one stored row against its predecessor; return its hash."""
    seq = int(row.seq)
    if seq != expected_seq:
        raise AuditChainBroken(expected_seq, f"event {expected_seq} is missing")
    try:
        detail = json.loads(row.detail, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise AuditChainBroken(seq, f"detail has a duplicate key {exc.args[0]!r}") from None
    except ValueError:
        raise AuditChainBroken(seq, "detail is not valid JSON") from None
    try:
        canonical = canonical_json(detail).decode("utf-8") == row.detail
    except ValueError:  # NaN, Infinity, lone surrogates
        canonical = False
    if not canonical:
        raise AuditChainBroken(seq, "detail is not in canonical form")
    hashed = {f: getattr(row, f) for f in _FIELDS} | {"seq": seq, "detail": detail}
    if row.prev_hash != prev:
        raise AuditChainBroken(seq, "prev_hash does not match the previous event")
    if chain_hash(prev, hashed) != row.hash:
        raise AuditChainBroken(seq, "event content does not match its hash")
    return str(row.hash)


def _row_to_event(r: Any) -> AuditEvent:
    return AuditEvent(
        seq=int(r.seq),
        ts=r.ts,
        actor=r.actor,
        action=r.action,
        target=r.target,
        decision=r.decision,
        reason=r.reason,
        correlation_id=r.correlation_id,
        detail=json.loads(r.detail),
        prev_hash=r.prev_hash,
        hash=r.hash,
    )
