"""A write-behind audit sink for high-rate decisions (plugin host calls).

Events are queued in memory (the caller does no JSON or hashing work) and
appended to the chain in batches by one background thread: at most
``interval`` seconds after the call (default 0.2 s, so every decision is in
the chain within 1 s), immediately once
``max_batch`` are waiting, and all of them on ``flush()`` / ``close()`` (clean
shutdown loses nothing).  If the store is down, the batch is kept and retried.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from lattice.core.audit import AuditLog, PendingEvent
from lattice.core.auditsink import Decision
from lattice.errors import LatticeError

__all__ = ["BufferedAudit"]

log = logging.getLogger("lattice.audit")


class BufferedAudit:
    def __init__(self, audit: AuditLog, *, interval: float = 0.2, max_batch: int = 500) -> None:
        self._audit = audit
        self._interval = interval
        self._max_batch = max_batch
        self._queue: deque[PendingEvent] = deque()
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
        with self._cond:
            if self._closed:
                raise RuntimeError("audit buffer is closed")
            self._queue.append(event)
            if len(self._queue) >= self._max_batch:
                self._cond.notify()

    def flush(self) -> None:
        """Write everything queued so far (blocks until it is in the chain)."""
        with self._flush_lock:
            while True:
                with self._cond:
                    batch = [self._queue.popleft() for _ in range(min(len(self._queue), 1000))]
                if not batch:
                    return
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


def _encodable(event: PendingEvent) -> bool:
    """Normalize (and cache) one event here, in the writer, so the caller's hot
    path does no JSON work; an event whose detail cannot be encoded is dropped
    with an error instead of wedging its whole batch."""
    try:
        _ = event.normalized
    except (TypeError, ValueError) as exc:
        log.error("dropping audit event %s: detail is not JSON (%s)", event.action, exc)
        return False
    return True
