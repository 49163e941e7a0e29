"""The mini-racer adapter: the only module that imports ``py_mini_racer``.

An :class:`Isolate` is one V8 context that can do exactly one thing: evaluate a
script whose completion value is a string, within a CPU budget.  It drives
libmini_racer's C entry points directly (``mr_init_context``, ``mr_eval``,
``mr_cancel_task``, ...) instead of the ``MiniRacer`` class, because each
crossing through that class cost 80-180 µs on the test machine and a worker
request makes two to four of them (see ARCHITECTURE, "JS engine crossings"):

* ``MiniRacer`` delivers every result through an asyncio event loop
  (``call_soon_threadsafe``, a future, a task wake-up); :meth:`Isolate.run_sync`
  waits on a plain lock instead, and :meth:`Isolate.run` (for callers on an
  event loop) on one future.
* V8 calls back into Python on its own thread, which has no Python thread
  state: CPython made one and destroyed it again for every callback (an
  ``mmap``/``munmap`` and several context switches each time).  The first
  callback of an isolate gives that thread a lasting thread state (one extra
  ``PyGILState_Ensure``); :meth:`Isolate.close` releases it on the same thread.
  That alone took a round trip from ~65 µs to ~16 µs.

Everything untyped from mini-racer stays inside this module, and every engine
error is translated into the Lattice error tree here.

Facts about mini-racer 0.14 this adapter is built on (checked on this machine):

* Each context runs on one thread of its own; ``mr_eval`` queues a task there
  and returns at once, and the result comes back through the context's
  callback, on that thread, with the callback id given to ``mr_eval``.  So the
  first callback names the V8 thread exactly (``threading.get_native_id``):
  its CPU clock is what a worker's budget is charged against, never a guess.
* Microtasks queued by a script run *after* its result is delivered, before
  the next task.  A runaway microtask therefore wedges the context: later
  evals never start, while the V8 thread's clock keeps running, so the next
  run times out.  Callers must treat any timeout as fatal for the isolate.
* After the hard memory limit is hit the heap usually stays over the limit, so
  every later eval fails too: an out-of-memory isolate must be replaced.
* ``mr_cancel_task`` terminates a running script; ``mr_free_context``
  terminates whatever runs and joins the thread (ctypes releases the GIL
  meanwhile, so a callback in flight can finish).
* The JS side only returns output of ``JSON.stringify`` (always well-formed
  UTF-8), and the timeout guards the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import itertools
import re
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from py_mini_racer import (
    JSEvalException,
    JSOOMException,
    JSParseException,
    JSTimeoutException,
    init_mini_racer,
)
from py_mini_racer._dll import mr_callback_func  # the C callback type of the ABI below

from lattice.errors import WorkerError, WorkerTimeout

__all__ = ["Isolate"]

# Value types of libmini_racer's ABI (mini_racer.cc; mirrored in
# py_mini_racer._objects).  Only what a string-returning script can produce.
_STRING = 5
_EXECUTE_ERROR = 200
_PARSE_ERROR = 201
_OOM_ERROR = 202
_TIMEOUT_ERROR = 203
_TERMINATED = 204

_WALL_FACTOR = 10
_WALL_SLACK_S = 0.5
#: with the isolate's own thread clock the budget is exact, so the wall cap is
#: only a backstop against a wedged engine: generous, so a loaded (or niced)
#: machine that deschedules the isolate never turns a short request into a timeout
_MEASURED_WALL_FACTOR = 50
_MEASURED_WALL_SLACK_S = 5.0
_OPEN_BUDGET_S = 5.0  # the first, empty script of a new context
_UNPIN_WAIT_S = 2.0  # how long close() waits for a healthy V8 thread to let go
_UNPIN_ID = 1  # callback id of the script that releases the thread state
_V8_LOCATION = re.compile(r"<anonymous>:(\d+): (.*)")

_gil_ensure = ctypes.pythonapi.PyGILState_Ensure
_gil_ensure.restype = ctypes.c_int
_gil_release = ctypes.pythonapi.PyGILState_Release
_gil_release.argtypes = [ctypes.c_int]
_gil_release.restype = None

if not importlib.metadata.version("mini-racer").startswith("0.14."):  # pragma: no cover
    raise ImportError("lattice's JS engine adapter is written against mini-racer 0.14")

_Result = tuple[int, bytes | None]  # (value type, UTF-8 text of a string or an error)
_Deliver = Callable[[_Result], None]


class Isolate:
    """One V8 context with a hard heap limit.  Build with :meth:`open`.

    Once :attr:`usable` is False (timeout, memory limit, engine failure) the isolate
    must be closed and replaced; :meth:`run` refuses to use it again.  One script
    runs at a time.
    """

    def __init__(self, *, memory_bytes: int) -> None:
        self._dll: Any = init_mini_racer(ignore_duplicate_init=True)
        self._ids = itertools.count(_UNPIN_ID + 1)
        self._pending: dict[int, tuple[_Deliver, Any]] = {}  # callback id -> (deliver, code)
        self._thread_id: int | None = None
        self._clock: int | None = None
        self._pin: int | None = None  # the PyGILState of the V8 thread's lasting state
        self._unpinned = threading.Event()
        self._usable = True
        self._wedged = False  # a script was cancelled: the thread may still be busy
        # the ctypes callback object must outlive the context that calls it
        self._callback = mr_callback_func(cast(Any, self._on_callback))
        self._ctx: int = self._dll.mr_init_context(self._callback)
        self._closed = False
        self._dll.mr_set_hard_memory_limit(self._ctx, memory_bytes)
        self._dll.mr_set_soft_memory_limit(self._ctx, memory_bytes * 3 // 4)

    @classmethod
    def open(cls, *, memory_bytes: int) -> Isolate:
        """Create a context and learn its thread (one empty script)."""
        isolate = cls(memory_bytes=memory_bytes)
        try:
            isolate.run_sync(b"''", cpu_s=_OPEN_BUDGET_S)
        except BaseException:
            isolate.close()
            raise
        return isolate

    @property
    def thread_id(self) -> int | None:
        """The native id of the V8 thread (known after the first script)."""
        return self._thread_id

    @property
    def measures_thread_cpu(self) -> bool:
        """True when CPU use is read from the isolate's own thread clock."""
        return self._thread_cpu() is not None

    @property
    def usable(self) -> bool:
        return self._usable and not self._closed

    # -- the V8 thread's side --------------------------------------------------------

    def _on_callback(self, callback_id: int, raw: Any) -> None:
        """Runs on the V8 thread, holding the GIL: read the value, free it, hand it on."""
        deliver = None
        try:
            if self._thread_id is None:
                self._thread_id = threading.get_native_id()
                self._clock = _thread_cpu_clock(self._thread_id)
                # one more reference to this thread's (new) Python thread state, so
                # CPython keeps it between callbacks instead of making one each time
                self._pin = _gil_ensure()
            if callback_id == _UNPIN_ID:
                self._unpin_here()
                return
            entry = self._pending.pop(callback_id, None)
            if entry is None:
                return  # a run that was given up (timeout, cancellation)
            deliver, code = entry
            self._dll.mr_free_value(self._ctx, code)
            value = raw.contents
            kind = int(value.type)
            text = None
            if kind == _STRING or kind >= _EXECUTE_ERROR:
                text = ctypes.string_at(value.value.value_ptr, value.len) if value.len else b""
            result: _Result = (kind, text)
        except BaseException:  # nothing may escape into V8's thread
            result = (_EXECUTE_ERROR, b"engine callback failed")
        finally:
            self._dll.mr_free_value(self._ctx, raw)
        if deliver is not None:
            with contextlib.suppress(Exception):
                deliver(result)

    def _unpin_here(self) -> None:
        pin, self._pin = self._pin, None
        if pin is not None:
            _gil_release(pin)
        self._unpinned.set()

    # -- running scripts ----------------------------------------------------------

    def _post(self, code: bytes, deliver: _Deliver) -> int:
        if not self.usable:
            raise WorkerError("worker isolate is no longer usable")
        callback_id = next(self._ids)
        handle = self._dll.mr_alloc_string_val(self._ctx, code, len(code), _STRING)
        self._pending[callback_id] = (deliver, handle)
        return int(self._dll.mr_eval(self._ctx, handle, callback_id))

    def _give_up(self, task_id: int) -> None:
        """Stop the running script; the isolate is not used again."""
        self._usable = False
        self._wedged = True
        self._dll.mr_cancel_task(self._ctx, task_id)

    def _wall_cap(self, cpu_s: float) -> float:
        if self.measures_thread_cpu:
            return max(cpu_s * _MEASURED_WALL_FACTOR, cpu_s + _MEASURED_WALL_SLACK_S)
        return max(cpu_s * _WALL_FACTOR, cpu_s + _WALL_SLACK_S)

    def run_sync(self, code: bytes, *, cpu_s: float) -> tuple[bytes, float]:
        """Evaluate ``code`` (UTF-8; its completion value must be a string) within
        ``cpu_s`` seconds of the V8 thread's CPU, blocking the calling thread.

        Returns ``(UTF-8 result, cpu_used)``.  CPU use is read from the CPU clock of
        the isolate's V8 thread (Linux).  Where that clock cannot be read it is
        estimated as the smaller of wall time and whole-process CPU time, both
        upper bounds.  Either way a descheduled isolate burns no budget, and a wall
        cap backs the measurement up: ``max(50 x cpu_s, cpu_s + 5 s)`` with the
        thread clock, ``max(10 x cpu_s, cpu_s + 0.5 s)`` with the estimate.

        Raises WorkerTimeout when the budget runs out; WorkerError for the memory
        limit, a syntax error or an exception that escaped to the top level.
        """
        done = threading.Lock()
        done.acquire()
        box: list[_Result] = []

        def deliver(result: _Result) -> None:
            box.append(result)
            done.release()

        meter = self._cpu_meter()
        wall_cap = self._wall_cap(cpu_s)
        wall_start = time.perf_counter()
        task_id = self._post(code, deliver)
        wait = cpu_s
        while not done.acquire(timeout=max(wait, 1e-3)):
            # `used` grows no faster than wall time, so nothing can run out sooner
            used, wall = meter(), time.perf_counter() - wall_start
            if used >= cpu_s or wall >= wall_cap:
                self._give_up(task_id)
                raise WorkerTimeout("worker exceeded its CPU time limit")
            wait = min(cpu_s - used, wall_cap - wall)
        return self._value(box[0]), meter()

    async def run(self, code: str, *, cpu_s: float) -> tuple[str, float]:
        """:meth:`run_sync` for a caller on an event loop: the loop keeps running
        while the script does.  Returns ``(result, cpu_used)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()

        def deliver(result: _Result) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, result)

        meter = self._cpu_meter()
        wall_cap = self._wall_cap(cpu_s)
        wall_start = time.perf_counter()
        task_id = self._post(code.encode("utf-8", "surrogatepass"), deliver)
        used = wall = 0.0
        try:
            while not future.done():
                if used >= cpu_s or wall >= wall_cap:
                    self._give_up(task_id)
                    raise WorkerTimeout("worker exceeded its CPU time limit")
                await asyncio.wait({future}, timeout=max(min(cpu_s - used, wall_cap - wall), 1e-3))
                wall = time.perf_counter() - wall_start
                used = meter()
        except asyncio.CancelledError:
            # Our caller was cancelled mid-script: the JS state is unknown now.
            self._give_up(task_id)
            raise
        return self._value(future.result()).decode("utf-8"), meter()

    def _value(self, result: _Result) -> bytes:
        kind, text = result
        if kind == _STRING and text is not None:
            return text
        message = (text or b"").decode("utf-8", "replace")
        if kind == _PARSE_ERROR:
            raise WorkerError(
                "worker source has a syntax error", detail={"reason": _first_line(message)}
            ) from JSParseException(message)
        self._usable = False
        if kind in (_TIMEOUT_ERROR, _TERMINATED):
            raise WorkerTimeout("worker exceeded its CPU time limit") from JSTimeoutException()
        if kind == _OOM_ERROR:
            raise WorkerError("worker exceeded its memory limit") from JSOOMException(message)
        if kind == _EXECUTE_ERROR:
            raise WorkerError(
                "worker threw an exception", detail={"reason": _first_line(message)}
            ) from JSEvalException(message)
        raise WorkerError("worker runtime returned an unexpected value")

    # -- CPU ----------------------------------------------------------------------

    def _thread_cpu(self) -> float | None:
        if self._clock is None:
            return None
        try:
            return time.clock_gettime(self._clock)
        except OSError:
            return None

    def _cpu_meter(self) -> Callable[[], float]:
        """A function returning the CPU this isolate used since the meter started."""
        thread_start = self._thread_cpu()
        if thread_start is not None:
            clock = self._clock
            assert clock is not None
            return lambda: time.clock_gettime(clock) - thread_start
        wall_start, process_start = time.perf_counter(), time.process_time()
        return lambda: min(time.perf_counter() - wall_start, time.process_time() - process_start)

    # -- end ----------------------------------------------------------------------

    def close(self) -> None:
        """Free the context (idempotent).  A healthy V8 thread first lets go of its
        Python thread state; a wedged one keeps it (a few KiB) until it exits."""
        if self._closed:
            return
        self._closed = True
        self._usable = False
        if self._pin is not None:
            code = b"''"  # freed with the context
            handle = self._dll.mr_alloc_string_val(self._ctx, code, len(code), _STRING)
            self._dll.mr_eval(self._ctx, handle, _UNPIN_ID)
            self._unpinned.wait(0.2 if self._wedged else _UNPIN_WAIT_S)
        self._dll.mr_free_context(self._ctx)
        self._pending.clear()


def _settle(future: asyncio.Future[_Result], result: _Result) -> None:
    if not future.done():
        future.set_result(result)


def _thread_cpu_clock(tid: int) -> int:
    """Linux clockid of a thread's CPU clock (the encoding of pthread_getcpuclockid)."""
    return (~tid << 3) | 6


def _first_line(message: str) -> str:
    """One line of a V8 error message, e.g. "line 3: SyntaxError: Unexpected token '='"."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    located = _V8_LOCATION.match(lines[0])
    if located:
        return f"line {located[1]}: {located[2]}"[:300]
    return lines[0][:300]
