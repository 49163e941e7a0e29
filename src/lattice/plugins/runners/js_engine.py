"""The mini-racer adapter: the only module that imports ``py_mini_racer``.

An :class:`Isolate` is one V8 context (``MiniRacer``) that can do exactly one thing:
evaluate a script whose completion value is a string, within a CPU budget.
Everything untyped (``Any``) from mini-racer stays inside this module, and every
mini-racer exception is translated into the Lattice error tree here.

Facts about mini-racer 0.14 this adapter is built on (checked on this machine):

* V8 runs on its own thread; awaiting ``eval_cancelable`` never blocks the event
  loop, and cancelling that task terminates the running script.
* Microtasks queued by a script run *after* its result is delivered, outside the
  cancelable task.  A runaway microtask therefore wedges the context: later evals
  simply never start.  Callers must treat any timeout as fatal for the isolate.
* After the hard memory limit is hit the heap usually stays over the limit, so
  every later eval fails too: an out-of-memory isolate must be replaced.
* A returned string containing a lone surrogate makes mini-racer's result callback
  fail and the eval never completes; the JS side therefore only returns output of
  ``JSON.stringify`` (always well-formed), and the timeout guards the rest.
* ``MiniRacer.close()`` returns promptly even while the isolate is spinning.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import Any

from py_mini_racer import (
    JSEvalException,
    JSOOMException,
    JSParseException,
    JSTimeoutException,
    MiniRacer,
)

from lattice.errors import WorkerError, WorkerTimeout

__all__ = ["Isolate"]

_WALL_FACTOR = 10
_WALL_SLACK_S = 0.5
#: with the isolate's own thread clock the budget is exact, so the wall cap is
#: only a backstop against a wedged engine: generous, so a loaded (or niced)
#: machine that deschedules the isolate never turns a short request into a timeout
_MEASURED_WALL_FACTOR = 50
_MEASURED_WALL_SLACK_S = 5.0
_V8_LOCATION = re.compile(r"<anonymous>:(\d+): (.*)")


class Isolate:
    """One V8 context with a hard heap limit.

    Once :attr:`usable` is False (timeout, memory limit, engine failure) the isolate
    must be closed and replaced; :meth:`run` refuses to use it again.
    """

    def __init__(self, racer: Any, *, thread_id: int | None = None) -> None:
        self._racer: Any = racer
        self._usable = True
        self._thread_id = thread_id

    @classmethod
    def open(cls, *, memory_bytes: int) -> Isolate:
        """Create a context.  Must be called from the event loop that will use it."""
        asyncio.get_running_loop()  # mini-racer binds the context to the running loop
        before = _thread_ids()
        racer = MiniRacer()
        # mini-racer runs each context on one thread of its own, started just now;
        # knowing it lets us read that thread's CPU clock.  Ambiguous -> estimate.
        new = _thread_ids() - before
        racer.set_hard_memory_limit(memory_bytes)
        racer.set_soft_memory_limit(memory_bytes * 3 // 4)
        return cls(racer, thread_id=_find_v8_thread(racer, new))

    @property
    def measures_thread_cpu(self) -> bool:
        """True when CPU use is read from the isolate's own thread clock."""
        return self._thread_cpu() is not None

    @property
    def usable(self) -> bool:
        return self._usable and self._racer is not None

    async def run(self, code: str, *, cpu_s: float) -> tuple[str, float]:
        """Evaluate ``code`` (its completion value must be a string) within ``cpu_s``.

        Returns ``(result, cpu_used)``.  CPU use is read from the CPU clock of the
        isolate's V8 thread (Linux).  Where that thread is unknown it is estimated
        as the smaller of wall time and whole-process CPU time, both upper bounds.
        Either way a descheduled isolate burns no budget, and a wall cap backs
        the measurement up: ``max(50 x cpu_s, cpu_s + 5 s)`` with the thread
        clock, ``max(10 x cpu_s, cpu_s + 0.5 s)`` with the estimate.

        Raises WorkerTimeout when the budget runs out; WorkerError for the memory
        limit, a syntax error or an exception that escaped to the top level.
        """
        if not self.usable:
            raise WorkerError("worker isolate is no longer usable")
        if self.measures_thread_cpu:
            wall_cap = max(cpu_s * _MEASURED_WALL_FACTOR, cpu_s + _MEASURED_WALL_SLACK_S)
        else:
            wall_cap = max(cpu_s * _WALL_FACTOR, cpu_s + _WALL_SLACK_S)
        task = asyncio.ensure_future(self._racer.eval_cancelable(code))
        wall_start = time.perf_counter()
        cpu_used = self._cpu_meter()
        used = wall = 0.0
        try:
            while not task.done():
                if used >= cpu_s or wall >= wall_cap:
                    self._usable = False
                    await _cancel(task)
                    raise WorkerTimeout("worker exceeded its CPU time limit")
                # `used` grows no faster than wall time, so nothing can run out sooner.
                await asyncio.wait({task}, timeout=max(min(cpu_s - used, wall_cap - wall), 1e-3))
                wall = time.perf_counter() - wall_start
                used = cpu_used()
            result = task.result()
            used = cpu_used()
        except asyncio.CancelledError:
            # Our caller was cancelled mid-script: the JS state is unknown now.
            self._usable = False
            await _cancel(task)
            raise
        except JSTimeoutException as exc:
            self._usable = False
            raise WorkerTimeout("worker exceeded its CPU time limit") from exc
        except JSOOMException as exc:
            self._usable = False
            raise WorkerError("worker exceeded its memory limit") from exc
        except JSParseException as exc:
            raise WorkerError(
                "worker source has a syntax error", detail={"reason": _first_line(exc)}
            ) from exc
        except JSEvalException as exc:
            self._usable = False
            raise WorkerError(
                "worker threw an exception", detail={"reason": _first_line(exc)}
            ) from exc
        if not isinstance(result, str):
            self._usable = False
            raise WorkerError("worker runtime returned an unexpected value")
        return result, used

    def _thread_cpu(self) -> float | None:
        if self._thread_id is None:
            return None
        try:
            return time.clock_gettime(_thread_cpu_clock(self._thread_id))
        except OSError:
            return None

    def _cpu_meter(self) -> Callable[[], float]:
        """A function returning the CPU this isolate used since the meter started."""
        wall_start, process_start = time.perf_counter(), time.process_time()
        thread_start = self._thread_cpu()

        def used() -> float:
            now = self._thread_cpu() if thread_start is not None else None
            if thread_start is not None and now is not None:
                return now - thread_start
            return min(time.perf_counter() - wall_start, time.process_time() - process_start)

        return used

    def close(self) -> None:
        racer, self._racer = self._racer, None
        self._usable = False
        if racer is not None:
            racer.close()


def _find_v8_thread(racer: Any, candidates: set[int]) -> int | None:
    """The context's thread among the threads that appeared while creating it.

    Usually there is exactly one.  In a busy server other threads (a growing
    threadpool) may start at the same moment; then a ~3 ms calibration script
    tells them apart: the V8 thread is the one whose CPU clock advanced.
    """
    if len(candidates) == 1:
        return next(iter(candidates))
    if not candidates:
        return None
    before: dict[int, float] = {}
    for tid in candidates:
        try:
            before[tid] = time.clock_gettime(_thread_cpu_clock(tid))
        except OSError:
            continue
    # fixed work (not a wall-clock spin): the V8 thread's clock advances by it
    # however busy the machine is, an idle stranger's does not
    racer.eval("(function () { let x = 0; for (let i = 0; i < 3e6; i++) x += i; return x; })()")
    spent: dict[int, float] = {}
    for tid, start in before.items():
        try:
            spent[tid] = time.clock_gettime(_thread_cpu_clock(tid)) - start
        except OSError:
            continue
    if not spent:
        return None
    best = max(spent, key=lambda t: spent[t])
    return best if spent[best] >= 0.0005 else None


def _thread_ids() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:  # not Linux: fall back to the estimate
        return set()


def _thread_cpu_clock(tid: int) -> int:
    """Linux clockid of a thread's CPU clock (the encoding of pthread_getcpuclockid)."""
    return (~tid << 3) | 6


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel a running eval and wait until mini-racer has cancelled it in V8.

    Waiting matters: mini-racer's cleanup touches the context, so the context
    must not be closed before the task has finished.
    """
    task.cancel()
    await asyncio.wait({task})


def _first_line(exc: Exception) -> str:
    """One line of a V8 error message, e.g. "line 3: SyntaxError: Unexpected token '='"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    located = _V8_LOCATION.match(lines[0])
    if located:
        return f"line {located[1]}: {located[2]}"[:300]
    return lines[0][:300]
