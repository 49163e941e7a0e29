"""A write-behind audit sink for high-rate decisions (plugin host calls).

Events are queued in memory (the caller does no JSON or hashing work) and
appended to the chain in batches by one background thread: at most
``interval`` seconds after the call (default 0.2 s, so every decision is in
the chain within 1 s), immediately once
``max_batch`` are waiting, and all of them on ``flush()`` / ``close()`` (clean
shutdown loses nothing).  If the store is down, the batch is kept and retried.

Folding: identical events (same actor, action, decision, reason and detail)
that arrive within one flush window are written as ONE event, at the place of
the first, so a flood costs a few rows per window instead of one per call.  A
folded event keeps the first event's correlation id and adds to its detail::

    count             how many events it stands for (>= 2)
    first_ts/last_ts  when the first and the last of them arrived
    targets           {target: count} for up to MAX_TARGETS distinct targets
    targets_unlisted  how many events had a target beyond those

Its ``target`` is the one target when all shared it, else ``*``.  A single
event is written unchanged.  Events whose detail is not flat JSON or already
uses one of those keys are never folded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

from lattice.core.audit import AuditLog, PendingEvent
from lattice.core.auditsink import Decision
from lattice.errors import LatticeError
from lattice.store.clock import iso

__all__ = ["FOLD_KEYS", "MAX_TARGETS", "BufferedAudit"]

log = logging.getLogger("lattice.audit")

#: distinct targets a folded event lists (the rest are only counted)
MAX_TARGETS = 32
#: detail keys a folded event adds
FOLD_KEYS = frozenset({"count", "first_ts", "last_ts", "targets", "targets_unlisted"})


class _Fold:
    """Identical events of one flush window, waiting to become one event."""

    __slots__ = ("count", "first", "first_at", "key", "last_at", "targets", "unlisted")

    def __init__(self, key: Hashable, first: PendingEvent, now: float) -> None:
        self.key = key
        self.first = first
        self.count = 1
        self.first_at = self.last_at = now
        self.targets: dict[str, int] = {first.target: 1}
        self.unlisted = 0

    def add(self, target: str, now: float) -> None:
        self.count += 1
        self.last_at = now
        if target in self.targets:
            self.targets[target] += 1
        elif len(self.targets) < MAX_TARGETS:
            self.targets[target] = 1
        else:
            self.unlisted += 1

    def event(self) -> PendingEvent:
        first = self.first
        if self.count == 1:
            return first
        single = len(self.targets) == 1 and not self.unlisted
        return PendingEvent(
            actor=first.actor,
            action=first.action,
            target=first.target if single else "*",
            decision=first.decision,
            reason=first.reason,
            correlation_id=first.correlation_id,
            detail={
                **(first.detail or {}),
                "count": self.count,
                "first_ts": _iso(self.first_at),
                "last_ts": _iso(self.last_at),
                "targets": {t[:512]: n for t, n in self.targets.items()},
                "targets_unlisted": self.unlisted,
            },
        )


class BufferedAudit:
    def __init__(self, audit: AuditLog, *, interval: float = 0.2, max_batch: int = 500) -> None:
        self._audit = audit
        self._interval = interval
        self._max_batch = max_batch
        self._queue: deque[_Fold | PendingEvent] = deque()
        self._open: dict[Hashable, _Fold] = {}  # folds of the current window, by key
        self._cond = threading.Condition()
        self._flush_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

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
        event = PendingEvent(
            actor=actor,
            action=action,
            target=target,
            decision=decision,
            reason=reason,
            correlation_id=correlation_id,
            detail=detail,
        )
        key = _fold_key(event)
        now = time.time()
        with self._cond:
            if self._closed:
                raise RuntimeError("audit buffer is closed")
            if key is None:
                self._queue.append(event)
            elif (fold := self._open.get(key)) is not None:
                fold.add(target, now)
                return
            else:
                fold = self._open[key] = _Fold(key, event, now)
                self._queue.append(fold)
            if len(self._queue) >= self._max_batch:
                self._cond.notify()

    def flush(self) -> None:
        """Write everything queued so far (blocks until it is in the chain).

        Events arriving meanwhile wait for the next flush: a window ends when
        its flush starts, so a flood of one kind costs one row per flush."""
        with self._flush_lock:
            with self._cond:
                left = len(self._queue)
            while left > 0:
                with self._cond:
                    items = [self._queue.popleft() for _ in range(min(left, 1000))]
                    for item in items:  # a later identical event starts a new fold
                        if isinstance(item, _Fold):
                            del self._open[item.key]
                left -= len(items)
                batch = [i.event() if isinstance(i, _Fold) else i for i in items]
                batch = [event for event in batch if _encodable(event)]
                try:
                    self._audit.append_many(batch, keep=False)
                except LatticeError:
                    with self._cond:
                        self._queue.extendleft(reversed(batch))
                    raise

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closed:
                    self._cond.wait(self._interval)
                closed = self._closed
            try:
                self.flush()
            except LatticeError as exc:
                log.error("audit flush failed, will retry: %s", exc.message)
            if closed:
                return

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        self.flush()


def _fold_key(event: PendingEvent) -> Hashable | None:
    """What makes two events identical, or None when this one is never folded."""
    detail = event.detail or {}
    if FOLD_KEYS.intersection(detail):
        return None
    try:
        # the value's type is part of it: {"x": 1} and {"x": true} are not identical
        flat = tuple(sorted((k, type(v).__name__, v) for k, v in detail.items()))
        key = (event.actor, event.action, event.decision, event.reason, flat)
        hash(key)
    except TypeError:  # nested detail (lists, dicts) or odd keys: not worth comparing
        return None
    return key


def _iso(moment: float) -> str:
    return iso(datetime.fromtimestamp(moment, UTC))


def _encodable(event: PendingEvent) -> bool:
    """Normalize (and cache) one event here, in the writer, so the caller's hot
    path does no JSON work; an event whose detail cannot be encoded is dropped
    with an error instead of wedging its whole batch."""
    try:
        _ = event.hash_parts  # the normalized event and its hashed bytes
    except (TypeError, ValueError) as exc:
        log.error("dropping audit event %s: detail is not JSON (%s)", event.action, exc)
        return False
    return True
