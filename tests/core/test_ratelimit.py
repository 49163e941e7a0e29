"""Login failure windows (on a real database) and token buckets (injected clock)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from lattice.core.ratelimit import LoginFailures, TokenBuckets
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from lattice.store.tables import login_failures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_failures_are_shared_per_pair_and_per_address(db_url: str) -> None:
    db = Database(db_url)
    upgrade(db)
    try:
        first = LoginFailures(db, 3, 60)
        for _ in range(3):
            assert first.retry_after("alice", "10.0.0.1") == 0
            first.fail("alice", "10.0.0.1")
        # a second process (or the same one after a restart) sees the same window
        second = LoginFailures(db, 3, 60)
        assert 58 <= second.retry_after("alice", "10.0.0.1") <= 60
        assert second.retry_after("alice", "10.0.0.2") == 0  # another address
        assert second.retry_after("bob", "10.0.0.1") == 0  # below the per-address limit
        for i in range(9):
            second.fail(f"u{i}", "10.0.0.1")
        assert second.retry_after("carol", "10.0.0.1") > 0  # 12 = 3 * 4 from one address
        assert second.retry_after("carol", "10.0.0.3") == 0
        assert second.reset("alice") == 3
        assert second.retry_after("alice", "10.0.0.2") == 0
    finally:
        db.dispose()


def test_login_failures_outside_the_window_are_pruned(db_url: str) -> None:
    db = Database(db_url)
    upgrade(db)
    try:
        window = LoginFailures(db, 2, 60)
        old = now_iso(timedelta(seconds=-61))
        with db.write() as conn:
            for _ in range(5):
                conn.execute(login_failures.insert().values(username="a", addr="x", at=old))
        assert window.retry_after("a", "x") == 0  # too old to count
        window.fail("b", "y")
        with db.read() as conn:
            assert conn.execute(select(func.count()).select_from(login_failures)).scalar() == 1
    finally:
        db.dispose()


def test_token_bucket_rate_and_burst() -> None:
    clock = Clock()
    tb = TokenBuckets(rate=1.0, burst=2.0, clock=clock)
    assert tb.allow("p") and tb.allow("p") and not tb.allow("p")
    assert tb.allow("q")
    clock.now += 1.0
    assert tb.allow("p") and not tb.allow("p")
    clock.now += 100
    assert tb.allow("p") and tb.allow("p") and not tb.allow("p")


def test_login_failures_count_an_ipv6_host_by_its_slash_64() -> None:
    from lattice.core.auth import address_bucket

    assert address_bucket("2001:db8:1:2::1") == address_bucket("2001:db8:1:2:ffff::9")
    assert address_bucket("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:10.0.0.1") == address_bucket("10.0.0.1") == "10.0.0.1"
    assert address_bucket("unknown") == "unknown"
