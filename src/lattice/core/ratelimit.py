"""Rate limiters: failed-login windows (in the database) and token buckets.

Token buckets are per process and a restart forgets them, which is fine for
keeping a plugin from flooding a host service.  Failed logins are stored, so
neither a restart nor a second process resets a password-guessing window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, select

from lattice.store.clock import from_iso, now_iso, utcnow
from lattice.store.db import Database
from lattice.store.tables import login_failures

__all__ = ["LoginFailures", "TokenBucket", "TokenBuckets"]

Clock = Callable[[], float]


class LoginFailures:
    """Failed logins kept in the database, so limits survive a restart and are
    shared by every process serving the same database.

    Two sliding windows: per (username, client address) at ``limit`` and per
    client address at ``limit * 4``.  Nothing is counted per username alone, so
    failures from one address never block the same user at another address.
    """

    def __init__(self, db: Database, limit: int, window: float) -> None:
        self._db = db
        self.limit = limit
        self.addr_limit = limit * 4
        self.window = window

    def retry_after(self, username: str, addr: str) -> float:
        """Seconds until ``username`` may try again from ``addr`` (0: now)."""
        cutoff = now_iso(timedelta(seconds=-self.window))
        recent = login_failures.c.at > cutoff
        pair = (login_failures.c.username == username) & (login_failures.c.addr == addr)
        with self._db.read() as conn:
            waits = [
                self._wait(conn, pair & recent, self.limit),
                self._wait(conn, (login_failures.c.addr == addr) & recent, self.addr_limit),
            ]
        return max(waits)

    def _wait(self, conn: Connection, where: Any, limit: int) -> float:
        # the limit-th newest failure in the window: once it leaves, one more try is allowed
        stamps = conn.execute(
            select(login_failures.c.at)
            .where(where)
            .order_by(login_failures.c.at.desc())
            .limit(limit)
        ).scalars()
        found = list(stamps)
        if len(found) < limit:
            return 0.0
        left = (from_iso(found[-1]) - utcnow()).total_seconds() + self.window
        return max(left, 0.001)

    def fail(self, username: str, addr: str) -> None:
        cutoff = now_iso(timedelta(seconds=-self.window))
        with self._db.write() as conn:
            conn.execute(delete(login_failures).where(login_failures.c.at <= cutoff))
            conn.execute(login_failures.insert().values(username=username, addr=addr, at=now_iso()))

    def reset(self, username: str, addr: str | None = None) -> int:
        """Forget a user's failures (from one address, or all); return how many."""
        where = login_failures.c.username == username
        if addr is not None:
            where &= login_failures.c.addr == addr
        with self._db.write() as conn:
            return int(conn.execute(delete(login_failures).where(where)).rowcount)


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float, cost: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class TokenBuckets:
    """A token bucket per key, all with the same rate and burst."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(self.rate, self.burst, self.burst, now)
                self._buckets[key] = bucket
            return bucket.take(now, cost)
