"""The mini-racer adapter on its own: CPU metering, error translation, recycling."""

from __future__ import annotations

import sys
import time

import pytest

from lattice.errors import WorkerError, WorkerTimeout
from lattice.plugins.runners.js_engine import Isolate

MiB = 1024 * 1024


@pytest.fixture
async def isolate() -> Isolate:
    return Isolate.open(memory_bytes=32 * MiB)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread CPU clocks are Linux-only")
async def test_cpu_is_read_from_the_isolate_thread(isolate: Isolate) -> None:
    assert isolate.measures_thread_cpu
    started = time.perf_counter()
    result, used = await isolate.run(
        "(function () { let x = 0; for (let i = 0; i < 3e7; i++) x += i; })(); 'spun'", cpu_s=5.0
    )
    wall = time.perf_counter() - started
    assert result == "spun"
    assert 0.0 < used <= wall
    isolate.close()


async def test_budget_exhaustion_is_a_timeout_and_retires_the_isolate(isolate: Isolate) -> None:
    started = time.perf_counter()
    with pytest.raises(WorkerTimeout, match="CPU time limit"):
        await isolate.run("while (true) {}", cpu_s=0.05)
    assert time.perf_counter() - started < 10.0  # a timeout, not a hang
    assert not isolate.usable
    with pytest.raises(WorkerError, match="no longer usable"):
        await isolate.run("'x'", cpu_s=1.0)
    isolate.close()


async def test_runaway_microtask_is_caught_by_the_next_run(isolate: Isolate) -> None:
    # The first script returns before its microtask spins; the next run cannot start.
    code = "Promise.resolve().then(() => { while (true) {} }); 'ok'"
    result, _ = await isolate.run(code, cpu_s=1.0)
    assert result == "ok"
    with pytest.raises(WorkerTimeout):
        await isolate.run("'never'", cpu_s=0.05)
    isolate.close()


async def test_memory_limit_retires_the_isolate(isolate: Isolate) -> None:
    with pytest.raises(WorkerError, match="exceeded its memory limit"):
        await isolate.run(
            "const a = []; while (true) a.push('x'.repeat(1 << 16) + a.length);", cpu_s=10
        )
    assert not isolate.usable
    isolate.close()


@pytest.mark.parametrize(
    ("code", "message", "usable"),
    [
        ("let = = 1", "syntax error", True),
        ("throw new Error('top level')", "worker threw an exception", False),
    ],
)
async def test_engine_errors_are_translated(
    isolate: Isolate, code: str, message: str, usable: bool
) -> None:
    with pytest.raises(WorkerError, match=message) as info:
        await isolate.run(code, cpu_s=1.0)
    assert type(info.value).__module__ == "lattice.errors"
    assert type(info.value.__cause__).__module__.startswith("py_mini_racer")
    assert isolate.usable is usable
    isolate.close()


async def test_non_string_result_is_refused(isolate: Isolate) -> None:
    with pytest.raises(WorkerError, match="unexpected value"):
        await isolate.run("42", cpu_s=1.0)
    assert not isolate.usable
    isolate.close()


async def test_close_is_idempotent(isolate: Isolate) -> None:
    isolate.close()
    isolate.close()
    assert not isolate.usable


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread CPU clocks are Linux-only")
async def test_v8_thread_is_found_when_other_threads_start_at_the_same_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from lattice.plugins.runners import js_engine

    stop = threading.Event()
    real_ids = js_engine._thread_ids
    calls = {"n": 0}

    def ids_with_a_stranger() -> set[int]:
        # the second snapshot happens after MiniRacer() started its thread:
        # start an unrelated idle thread just before it, as a busy server would
        calls["n"] += 1
        if calls["n"] == 2:
            threading.Thread(target=stop.wait, daemon=True).start()
        return real_ids()

    monkeypatch.setattr(js_engine, "_thread_ids", ids_with_a_stranger)
    try:
        isolate = Isolate.open(memory_bytes=32 * MiB)
    finally:
        stop.set()
    assert isolate.measures_thread_cpu
    # fixed work, not a wall-clock spin: on a loaded machine it still costs the
    # V8 thread real CPU, while the idle stranger's clock stays near zero
    work = "(function () { let x = 0; for (let i = 0; i < 3e7; i++) x += i; })(); 'x'"
    _, used = await isolate.run(work, cpu_s=5.0)
    assert used >= 0.005
    isolate.close()
