"""JS workers in sandbox processes: the server side.

:class:`SandboxedJsWorker` has the interface of
:class:`~lattice.plugins.runners.js.JsWorker` (``create``, ``handle``,
``close``) but runs the worker's isolate pool in a child process of its own
(:mod:`js_sandbox`).  Why a process (see ARCHITECTURE, "JS workers run in
sandbox processes"): V8's heap limit does not count ArrayBuffer memory, and
mini-racer offers no allocator hook, so the only limit that covers everything
a worker can allocate is the kernel's (``RLIMIT_DATA`` on the child).  The
process also takes JS CPU off the API's process at a lower priority, and a
crash of the engine ends one worker's process, never the server.

On the server side each worker has:

* a pool of ``pool_size`` request slots (``queue_wait_ms`` to get one) and a
  share of one server-wide gate bounding JS requests in flight in total;
* a watchdog per request (the child enforces the CPU budget itself; the
  watchdog only ends a child that stopped answering);
* a :class:`Cooldown`: a worker whose requests keep exceeding their limits
  (CPU, memory, crashes) answers 503 without running for a while (each
  refusal held a quarter second, so a flood of them cannot keep the server
  busy) and says so in its log;
* the checks of everything the child says: its binding calls (only declared
  bindings, only plain arguments, at most 64 per request; ``js.check_ops``)
  before the worker's reads run them, and its responses (status, every header
  name and value, body size; ``js.request_outcome``).  The child runs worker
  code, so nothing it sends is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import lattice
from lattice.errors import LatticeError, WorkerError, WorkerTimeout
from lattice.plugins.runners.js import (
    Binding,
    JsHost,
    JsLimits,
    WorkerRequest,
    WorkerResponse,
    check_ops,
    check_request,
    check_worker,
    install_outcome,
    log_lines,
    request_outcome,
    request_spec,
    run_ops,
)
from lattice.plugins.runners.js_wire import (
    MEMORY_MESSAGE,
    FrameBuffer,
    FrameError,
    error_from,
    frame,
)

__all__ = ["Cooldown", "SandboxedJsWorker"]

log = logging.getLogger(__name__)

_STARTUP_S = 30.0  # interpreter + V8 start + module top level, on a loaded machine
#: start the child niced, so even its interpreter start-up yields to the server
#: (the child lowers its priority itself too, where ``nice`` is missing)
_NICE: tuple[str, ...] = (_nice, "-n", "10") if (_nice := shutil.which("nice")) else ()
_STDERR_LINES = 20
_INBOX = 8  # messages a child may send ahead of being asked (it sends none)
#: a cooled-down worker's refusal is held this long (never longer than the
#: cooldown): it costs the server nothing meanwhile, and it caps how fast a
#: flood on a misbehaving worker can make the server answer
COOLDOWN_HOLD_S = 0.25


class Cooldown:
    """Counts requests that exceeded their limits; too many in a window cools the
    worker down (fast refusals) for ``base`` seconds, doubling up to ``cap``."""

    def __init__(
        self,
        *,
        strikes: int = 3,
        window: float = 30.0,
        base: float = 5.0,
        cap: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._strikes = strikes
        self._window = window
        self._base = base
        self._cap = cap
        self._clock = clock
        self._recent: deque[float] = deque()
        self._until = 0.0
        self._next = base

    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    def strike(self) -> float | None:
        """Record one overrun; returns the cooldown it started, if it started one."""
        now = self._clock()
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - self._window:
            self._recent.popleft()
        if len(self._recent) < self._strikes:
            return None
        self._recent.clear()
        seconds, self._next = self._next, min(self._cap, self._next * 2)
        self._until = now + seconds
        return seconds

    def clear(self) -> None:
        """A request finished within its limits: forget earlier overruns."""
        self._recent.clear()
        self._next = self._base


def _child_env() -> dict[str, str]:
    """Nothing of the server's environment (database URL, passwords) reaches the child."""
    package_root = str(Path(lattice.__file__).resolve().parent.parent)
    return {"PYTHONPATH": package_root, "PATH": os.defpath, "LANG": "C.UTF-8"}


class _Child(asyncio.SubprocessProtocol):
    """One running sandbox process and the conversation with it.

    Frames from the child are parsed as they arrive (``pipe_data_received``) and
    handed straight to whoever waits for the next message; a request is one
    coroutine talking to one child, with one watchdog timer, no reader task.
    """

    def __init__(self, owner: SandboxedJsWorker) -> None:
        self._owner = owner
        self._frames = FrameBuffer()
        self._inbox: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[dict[str, Any]] | None = None
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._stderr_tail = b""
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchdog_fired = False
        self._end_error: LatticeError = WorkerError("worker process crashed")
        self.alive = True
        self.in_request = False  # a request is between its first frame and its end

    @classmethod
    async def start(cls, owner: SandboxedJsWorker, init: dict[str, Any]) -> _Child:
        loop = asyncio.get_running_loop()
        _, child = await loop.subprocess_exec(
            lambda: cls(owner),
            *_NICE,
            sys.executable,
            "-m",
            "lattice.plugins.runners.js_sandbox",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(),
            start_new_session=True,  # a Ctrl-C to the server's group is the server's to handle
        )
        try:
            child._send(b"i", json.dumps(init).encode("utf-8"))
            async with asyncio.timeout(_STARTUP_S):
                loaded = await child._next()
            if loaded.get("t") == "fail":
                raise error_from(loaded)
            owner._write_logs(log_lines(loaded))
            error, line = install_outcome(loaded)
            if line is not None:
                owner._write_logs([("error", line)])
            if error is not None:
                raise error
        except TimeoutError:
            await child.kill()
            raise WorkerTimeout("worker took too long to start") from None
        except BaseException:
            await child.kill()
            raise
        return child

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport is not None else None

    # -- asyncio protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the asyncio interface without its classes
        self._transport = cast(asyncio.SubprocessTransport, transport)
        self._stdin = cast(asyncio.WriteTransport, self._transport.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self._stderr_lines(data)
            return
        try:
            for kind, payload in self._frames.feed(data):
                if kind != b"m":
                    raise FrameError(f"unexpected frame kind {kind!r}")
                try:
                    message = json.loads(payload)
                except ValueError:
                    raise FrameError("frame is not JSON") from None
                if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                    raise FrameError("frame is not a message object")
                self._deliver(message)
        except FrameError as exc:
            log.warning("JS worker %r sandbox sent a bad frame: %s", self._owner.name, exc)
            self._abandon()

    def _deliver(self, message: dict[str, Any]) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
        elif len(self._inbox) < _INBOX:
            self._inbox.append(message)
        else:  # nobody asked for these: the child is not following the protocol
            self._abandon()

    def _stderr_lines(self, data: bytes) -> None:
        *lines, self._stderr_tail = (self._stderr_tail + data).split(b"\n")
        self._stderr_tail = self._stderr_tail[-1000:]
        for raw in lines:
            text = raw.decode("utf-8", "replace").strip()
            if text and not text.startswith("/"):  # skip V8's C stack frames
                self._stderr.append(text[:300])

    def connection_lost(self, exc: Exception | None) -> None:
        """The process exited and its pipes are closed: fail whatever waited on it,
        say why in the worker's log."""
        self.alive = False
        transport = self._transport
        code = transport.get_returncode() if transport is not None else None
        tail = " | ".join(self._stderr)
        if self._watchdog_fired:
            error: LatticeError = WorkerTimeout("worker exceeded its CPU time limit")
        elif "out of memory" in tail.lower():
            error = WorkerError(MEMORY_MESSAGE)
        else:
            error = WorkerError("worker process crashed")
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._end_error = error
        if not self._gone.done():
            self._gone.set_result(None)
        if code not in (0, None) and not self._owner.closing and not self._watchdog_fired:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            self._owner._note(f"worker process ended ({how}){': ' + tail if tail else ''}")

    # -- the conversation -------------------------------------------------------------

    def _send(self, kind: bytes, payload: bytes) -> None:
        if not self.alive or self._stdin is None or self._stdin.is_closing():
            raise WorkerError("worker process is not running")
        self._stdin.write(frame(kind, payload))

    async def _next(self) -> dict[str, Any]:
        if self._inbox:
            return self._inbox.popleft()
        if not self.alive:  # ended, or being ended: say how once it is gone
            await asyncio.wait({self._gone}, timeout=5.0)
            raise self._end_error
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        return await waiter

    async def serve(self, spec: bytes) -> WorkerResponse:
        """One request, start to end.  The child enforces the CPU budget; the
        binding calls' budget is kept here, where they run; a watchdog ends a
        child that stops answering."""
        owner = self._owner
        limits = owner._limits
        watchdog = asyncio.get_running_loop().call_later(owner.watchdog_s, self._watchdog)
        self.in_request = True
        answering = False  # the child waits for our answer to its binding calls
        try:
            self._send(b"r", spec)
            calls, host_left = 0, limits.host_wall_ms / 1000
            while True:
                message = await self._next()
                if "logs" in message:
                    owner._write_logs(log_lines(message))
                kind = message["t"]
                if kind == "ops":
                    answering = True
                    checked = check_ops(message.get("ops"), owner._bindings, calls)
                    calls += len(checked)
                    started = time.monotonic()
                    try:
                        async with asyncio.timeout(max(host_left, 0.0)):
                            results = await run_ops(
                                checked, owner._host, limits.max_response_bytes, owner.name
                            )
                    except TimeoutError:
                        raise WorkerTimeout(
                            "worker binding calls exceeded their time budget"
                        ) from None
                    host_left -= time.monotonic() - started
                    self._send(b"h", json.dumps(results, separators=(",", ":")).encode("ascii"))
                    answering = False
                    continue
                if kind == "reload":  # the child made a fresh isolate for this request
                    loaded = message.get("msg")
                    loaded = loaded if isinstance(loaded, dict) else {}
                    owner._write_logs(log_lines(loaded))
                    error, line = install_outcome(loaded)
                    if line is not None:
                        owner._write_logs([("error", line)])
                    if error is not None:
                        self.in_request = False
                        raise error
                    continue
                self.in_request = False
                if kind == "err":
                    raise error_from(message)
                outcome, line = request_outcome(message, limits.max_response_bytes)
                if line is not None:
                    owner._write_logs([("error", line)])
                if isinstance(outcome, WorkerResponse):
                    return outcome
                raise outcome
        except LatticeError:
            if answering and self.alive:
                # tell the child to give the request up; its acknowledgement
                # ends the request, so the child can serve the next one
                with contextlib.suppress(LatticeError):
                    self._send(b"a", b"")
                    await self._next()
                    self.in_request = False
            raise
        finally:
            watchdog.cancel()

    def _watchdog(self) -> None:
        if not self.alive:
            return
        self._watchdog_fired = True
        self._owner._note(
            f"worker process stopped answering for {self._owner.watchdog_s:.0f} s; restarted"
        )
        self._abandon()

    def _abandon(self) -> None:
        """End the child now (it broke the protocol, or hangs)."""
        self.alive = False
        if self._transport is not None:
            with contextlib.suppress(ProcessLookupError):
                self._transport.kill()

    async def kill(self) -> None:
        self._abandon()
        await asyncio.wait({self._gone}, timeout=5.0)

    async def close(self) -> None:
        """Ask the child to finish (end of its stdin), then make sure it is gone."""
        if self._stdin is not None:
            self._stdin.close()
        done, _ = await asyncio.wait({self._gone}, timeout=5.0)
        if not done:
            await self.kill()
        if self._transport is not None:
            self._transport.close()


class SandboxedJsWorker:
    """One JS worker whose isolates live in a sandbox process.  Build with :meth:`create`."""

    def __init__(
        self,
        *,
        name: str,
        source: str,
        bindings: dict[str, Binding],
        host: JsHost,
        limits: JsLimits,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.name = name
        self._source = source
        self._bindings = bindings
        self._host = host
        self._limits = limits
        self._gate = gate
        self._slots = asyncio.Semaphore(limits.pool_size)
        self._idle: list[_Child] = []  # running children waiting for a request
        self.cooldown = Cooldown()
        self.closing = False
        self._notes: set[asyncio.Task[None]] = set()  # log writes in flight

    @classmethod
    async def create(
        cls,
        *,
        name: str,
        source: str,
        bindings: Mapping[str, Mapping[str, str]],
        host: JsHost,
        limits: JsLimits,
        gate: asyncio.Semaphore | None = None,
    ) -> SandboxedJsWorker:
        """Validate, start the sandbox and load the source (its errors surface here)."""
        checked = check_worker(source, bindings)
        worker = cls(
            name=name, source=source, bindings=checked, host=host, limits=limits, gate=gate
        )
        worker._idle.append(await worker._start())
        return worker

    @property
    def pids(self) -> list[int]:
        """Process ids of the idle sandbox processes (for tests and diagnostics)."""
        return [pid for c in self._idle if c.alive and (pid := c.pid) is not None]

    def _init_message(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self._source,
            "bindings": {k: {b.kind: b.bucket} for k, b in self._bindings.items()},
            # one isolate per process: the process's memory limit is that isolate's
            "limits": {**asdict(self._limits), "pool_size": 1},
        }

    async def _start(self) -> _Child:
        return await _Child.start(self, self._init_message())

    async def _take(self) -> _Child:
        """An idle running child, or a new one (the slot semaphore bounds how many)."""
        while self._idle:
            child = self._idle.pop()
            if child.alive:
                return child
        return await self._start()

    @property
    def watchdog_s(self) -> float:
        limits = self._limits
        cpu = limits.cpu_ms / 1000
        return max(cpu * 50, cpu + 5.0) + limits.host_wall_ms / 1000 + 5.0

    async def handle(self, request: WorkerRequest) -> WorkerResponse:
        """Run one request in the sandbox.  Raises WorkerError / WorkerTimeout /
        PayloadTooLarge like :meth:`JsWorker.handle`."""
        if self.closing:
            raise WorkerError("worker is closed")
        cooling = self.cooldown.remaining()
        if cooling > 0:
            await asyncio.sleep(min(cooling, COOLDOWN_HOLD_S))
            raise WorkerTimeout(
                "worker is cooling down after repeatedly exceeding its limits",
                detail={"retry_after_seconds": round(cooling, 1)},
            )
        limits = self._limits
        check_request(request, limits)
        started = time.monotonic()
        wait = limits.queue_wait_ms / 1000
        # a free slot (the common case) is taken without arming a timer
        if not await _acquire(self._slots, wait):
            raise WorkerTimeout("worker is busy: no isolate became free in time")
        try:
            gate = self._gate
            if gate is not None and not await _acquire(
                gate, max(0.001, wait - (time.monotonic() - started))
            ):
                raise WorkerTimeout("the server is busy running other workers")
            try:
                return await self._run(request)
            finally:
                if gate is not None:
                    gate.release()
        finally:
            self._slots.release()

    async def _run(self, request: WorkerRequest) -> WorkerResponse:
        child: _Child | None = None
        try:
            child = await self._take()
            response = await child.serve(request_spec(request))
        except WorkerTimeout:
            self._overran("exceeded its CPU time limit")
            raise
        except WorkerError as exc:
            if exc.message in (MEMORY_MESSAGE, "worker process crashed"):
                self._overran(exc.message.removeprefix("worker "))
            raise
        finally:
            if child is not None:
                await self._put_back(child)
        self.cooldown.clear()
        return response

    async def _put_back(self, child: _Child) -> None:
        if not child.alive:
            return
        if child.in_request:  # the conversation broke off (cancelled): start over
            await child.kill()
        elif self.closing:
            await child.close()
        else:
            self._idle.append(child)

    def _overran(self, what: str) -> None:
        seconds = self.cooldown.strike()
        if seconds is not None:
            self._note(
                f"worker cooled down for {seconds:g} s: requests repeatedly {what}; "
                "it answers 503 meanwhile"
            )

    # -- the worker log -----------------------------------------------------------

    def _write_logs(self, lines: list[tuple[str, str]]) -> None:
        """Console lines and runtime errors, written in order, off the request's path."""
        if not lines:
            return
        with contextlib.suppress(RuntimeError):
            task = asyncio.ensure_future(self._log_all(lines))
            self._notes.add(task)
            task.add_done_callback(self._notes.discard)

    async def _log_all(self, lines: list[tuple[str, str]]) -> None:
        for level, message in lines:
            await self._log(level, message)

    async def _log(self, level: str, message: str) -> None:
        with contextlib.suppress(LatticeError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._host.log(level, message[:4096])

    def _note(self, message: str) -> None:
        """A line about the worker's runtime: to the server log and the worker's log."""
        log.warning("JS worker %r: %s", self.name, message)
        self._write_logs([("error", message)])

    async def close(self) -> None:
        """Stop the idle children; busy ones stop when their request ends."""
        self.closing = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(child.close() for child in idle))


async def _acquire(semaphore: asyncio.Semaphore, wait: float) -> bool:
    """Take ``semaphore`` within ``wait`` seconds; at once when it is free."""
    if not semaphore.locked():
        await semaphore.acquire()  # returns without suspending
        return True
    try:
        async with asyncio.timeout(wait):
            await semaphore.acquire()
    except TimeoutError:
        return False
    return True
