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
* host calls from the child checked again here: only declared bindings, only
  plain arguments, before the worker's reads run them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
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
from typing import Any

import lattice
from lattice.errors import LatticeError, PayloadTooLarge, WorkerError, WorkerTimeout
from lattice.plugins.runners.js import (
    Binding,
    JsHost,
    JsLimits,
    WorkerRequest,
    WorkerResponse,
    check_worker,
)
from lattice.plugins.runners.js_wire import (
    MEMORY_MESSAGE,
    FrameError,
    encode_frame,
    error_from,
    read_frame,
)

__all__ = ["Cooldown", "SandboxedJsWorker"]

log = logging.getLogger(__name__)

_STARTUP_S = 30.0  # interpreter + V8 start + module top level, on a loaded machine
#: start the child niced, so even its interpreter start-up yields to the server
#: (the child lowers its priority itself too, where ``nice`` is missing)
_NICE: tuple[str, ...] = (_nice, "-n", "10") if (_nice := shutil.which("nice")) else ()
_STDERR_LINES = 20
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


class _Child:
    """One running sandbox process and the conversation with it."""

    def __init__(self, proc: asyncio.subprocess.Process, owner: SandboxedJsWorker) -> None:
        self.proc = proc
        self._owner = owner
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.alive = True
        self._reader = asyncio.ensure_future(self._read_loop())
        self._errors = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def start(cls, owner: SandboxedJsWorker, init: dict[str, Any]) -> _Child:
        proc = await asyncio.create_subprocess_exec(
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
        child = cls(proc, owner)
        try:
            child._send(init)
            async with asyncio.timeout(_STARTUP_S):
                await child._ready
        except TimeoutError:
            await child.kill()
            raise WorkerTimeout("worker took too long to start") from None
        except BaseException:
            await child.kill()
            raise
        return child

    def _send(self, message: dict[str, Any]) -> None:
        if not self.alive or self.proc.stdin is None:
            raise WorkerError("worker process is not running")
        self.proc.stdin.write(encode_frame(message))

    async def request(self, request: WorkerRequest, watchdog: float) -> dict[str, Any]:
        req_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            self._send(
                {
                    "t": "req",
                    "id": req_id,
                    "method": request.method,
                    "url": request.url,
                    "headers": [list(pair) for pair in request.headers],
                    "body": base64.b64encode(request.body).decode("ascii"),
                }
            )
            async with asyncio.timeout(watchdog):
                return await future
        except TimeoutError:
            self._owner._note(f"worker process stopped answering for {watchdog:.0f} s; restarted")
            await self.kill()
            raise WorkerTimeout("worker exceeded its CPU time limit") from None
        finally:
            self._pending.pop(req_id, None)

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                message = await read_frame(self.proc.stdout)
                if message is None:
                    break
                self._dispatch(message)
        except (FrameError, ConnectionError) as exc:
            log.warning("JS worker %r sandbox sent a bad frame: %s", self._owner.name, exc)
        finally:
            await self._ended()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind in ("res", "err"):
            future = self._pending.get(message.get("id", -1))
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "host":
            self._spawn(self._host_call(message))
        elif kind == "log":
            level, text = message.get("level"), message.get("message")
            if isinstance(level, str) and isinstance(text, str):
                self._spawn(self._owner._log(level, text))
        elif kind == "ready" and not self._ready.done():
            self._ready.set_result(message)
        elif kind == "fail" and not self._ready.done():
            self._ready.set_exception(error_from(message))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _host_call(self, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        try:
            reply = {"t": "host_res", "id": call_id, "ok": await self._owner._host_call(message)}
        except LatticeError as exc:
            reply = {"t": "host_res", "id": call_id, "err": exc.message}
        except Exception:
            log.exception("host call of JS worker %r failed", self._owner.name)
            reply = {"t": "host_res", "id": call_id, "err": "binding call failed"}
        with contextlib.suppress(LatticeError, ConnectionError):
            self._send(reply)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ConnectionError, ValueError):
            async for line in self.proc.stderr:
                text = line.decode("utf-8", "replace").strip()
                if text and not text.startswith("/"):  # skip V8's C stack frames
                    self._stderr.append(text[:300])

    async def _ended(self) -> None:
        """The child is gone: fail whatever waited on it, say why in the worker's log."""
        self.alive = False
        with contextlib.suppress(ProcessLookupError):
            if self.proc.returncode is None:
                self.proc.kill()
        code = await self.proc.wait()
        await asyncio.wait({self._errors}, timeout=1.0)
        tail = " | ".join(self._stderr)
        memory = "out of memory" in tail.lower()
        error = WorkerError(MEMORY_MESSAGE) if memory else WorkerError("worker process crashed")
        pending = [f for f in self._pending.values() if not f.done()]
        if not self._ready.done():
            self._ready.set_exception(error)
        for future in pending:
            future.set_exception(error)
        if code != 0 and not self._owner.closing:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            self._owner._note(f"worker process ended ({how}){': ' + tail if tail else ''}")

    async def kill(self) -> None:
        self.alive = False
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await asyncio.wait({self._reader}, timeout=5.0)

    async def close(self) -> None:
        """Ask the child to finish (end of its stdin), then make sure it is gone."""
        self.alive = False
        if self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.close()
        try:
            async with asyncio.timeout(5.0):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await asyncio.wait({self._reader}, timeout=5.0)


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
        return [c.proc.pid for c in self._idle if c.alive]

    def _init_message(self) -> dict[str, Any]:
        return {
            "t": "init",
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

    def _watchdog(self) -> float:
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
        if len(request.body) > limits.max_request_bytes:
            raise PayloadTooLarge(
                f"request body exceeds {limits.max_request_bytes} bytes",
                detail={"limit": limits.max_request_bytes},
            )
        started = time.monotonic()
        wait = limits.queue_wait_ms / 1000
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise WorkerTimeout("worker is busy: no isolate became free in time") from None
        try:
            if self._gate is not None:
                try:
                    async with asyncio.timeout(max(0.001, wait - (time.monotonic() - started))):
                        await self._gate.acquire()
                except TimeoutError:
                    raise WorkerTimeout("the server is busy running other workers") from None
            try:
                return await self._run(request)
            finally:
                if self._gate is not None:
                    self._gate.release()
        finally:
            self._slots.release()

    async def _run(self, request: WorkerRequest) -> WorkerResponse:
        child: _Child | None = None
        try:
            child = await self._take()
            reply = await child.request(request, self._watchdog())
            if reply["t"] == "err":
                raise error_from(reply)
            response = self._response(reply)
        except WorkerTimeout:
            self._overran("exceeded its CPU time limit")
            raise
        except WorkerError as exc:
            if exc.message in (MEMORY_MESSAGE, "worker process crashed"):
                self._overran(exc.message.removeprefix("worker "))
            raise
        finally:
            if child is not None and child.alive:
                if self.closing:
                    await child.close()
                else:
                    self._idle.append(child)
        self.cooldown.clear()
        return response

    def _overran(self, what: str) -> None:
        seconds = self.cooldown.strike()
        if seconds is not None:
            self._note(
                f"worker cooled down for {seconds:g} s: requests repeatedly {what}; "
                "it answers 503 meanwhile"
            )

    def _response(self, reply: dict[str, Any]) -> WorkerResponse:
        try:
            headers = [(str(k), str(v)) for k, v in reply["headers"]]
            body = base64.b64decode(reply["body"], validate=True)
            status = int(reply["status"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkerError("worker sandbox sent a malformed response") from exc
        if len(body) > self._limits.max_response_bytes:
            raise WorkerError(
                f"worker response body exceeds {self._limits.max_response_bytes} bytes",
                detail={"limit": self._limits.max_response_bytes},
            )
        return WorkerResponse(status=status, headers=headers, body=body)

    # -- the child's host calls, checked again on this side of the pipe ----------

    async def _host_call(self, message: dict[str, Any]) -> Any:
        method, args = message.get("method"), message.get("args")
        if not isinstance(args, list) or not all(
            isinstance(a, str | int) or a is None for a in args
        ):
            raise WorkerError("malformed binding call")
        kind = "static" if method == "static_get" else "kv"
        bucket = args[0] if args else None
        if not any(b.kind == kind and b.bucket == bucket for b in self._bindings.values()):
            raise WorkerError("binding is not declared for this worker")
        if method == "kv_get" and len(args) == 2 and isinstance(args[1], str):
            return await self._host.kv_get(str(bucket), args[1])
        if method == "kv_list" and len(args) == 4:
            prefix, limit, cursor = args[1], args[2], args[3]
            if (
                isinstance(prefix, str)
                and type(limit) is int
                and 1 <= limit <= 1000
                and (cursor is None or isinstance(cursor, str))
            ):
                names, nxt = await self._host.kv_list(str(bucket), prefix, limit, cursor)
                return [list(names), nxt]
        if method == "static_get" and len(args) == 2 and isinstance(args[1], str):
            found = await self._host.static_get(str(bucket), args[1])
            if found is None:
                return None
            data, content_type = found
            if len(data) > self._limits.max_response_bytes:
                raise WorkerError("asset is larger than the worker response limit")
            return [base64.b64encode(data).decode("ascii"), content_type]
        raise WorkerError("malformed binding call")

    async def _log(self, level: str, message: str) -> None:
        with contextlib.suppress(LatticeError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self._host.log(level, message[:4096])

    def _note(self, message: str) -> None:
        """A line about the worker's runtime: to the server log and the worker's log."""
        log.warning("JS worker %r: %s", self.name, message)
        with contextlib.suppress(RuntimeError):
            task = asyncio.ensure_future(self._log("error", message))
            self._notes.add(task)
            task.add_done_callback(self._notes.discard)

    async def close(self) -> None:
        """Stop the idle children; busy ones stop when their request ends."""
        self.closing = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(child.close() for child in idle))
