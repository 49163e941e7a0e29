"""Failure windows and token buckets with an injected clock."""

from __future__ import annotations

from lattice.core.ratelimit import FailureWindow, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failure_window_blocks_then_forgets() -> None:
    clock = Clock()
    fw = FailureWindow(3, 60, clock)
    for _ in range(3):
        assert fw.retry_after("k") == 0
        fw.fail("k")
    assert 59 <= fw.retry_after("k") <= 60
    assert fw.retry_after("other") == 0
    clock.now += 61
    assert fw.retry_after("k") == 0
    fw.fail("k")
    fw.reset("k")
    assert fw.retry_after("k") == 0


def test_token_bucket_rate_and_burst() -> None:
    clock = Clock()
    tb = TokenBuckets(rate=1.0, burst=2.0, clock=clock)
    assert tb.allow("p") and tb.allow("p") and not tb.allow("p")
    assert tb.allow("q")
    clock.now += 1.0
    assert tb.allow("p") and not tb.allow("p")
    clock.now += 100
    assert tb.allow("p") and tb.allow("p") and not tb.allow("p")
