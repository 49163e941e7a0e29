"""The JS sandbox process: one V8 isolate of one JS worker, in a process of its own.

Started by :mod:`lattice.plugins.runners.js_process` as
``python -m lattice.plugins.runners.js_sandbox``; it speaks the frames of
:mod:`js_wire` on its stdin and stdout and nothing else.  What the process
adds to the isolate's own limits:

* **memory** - once the isolate is up, ``RLIMIT_DATA`` is set to what the
  process uses then plus the worker's memory cap and a small slack.  V8's
  heap limit covers the JS heap; the kernel limit covers everything else a
  worker can allocate (ArrayBuffer and typed-array backing stores, engine
  buffers).  A refused ArrayBuffer becomes "worker exceeded its memory limit"
  and the isolate is discarded (a fresh one is made for the next request); a
  refusal V8 cannot survive ends this process, and the server starts another.
* **priority** - the process lowers its own priority (nice 10) before any
  thread exists, so JS that burns CPU always yields to the control plane.
* **no secrets** - the server starts it with an empty environment.

Host calls (KV, static) are forwarded to the server as ``host`` frames and
answered there, through the worker's checked reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import resource
import sys
from typing import Any

from lattice.errors import LatticeError, WorkerError
from lattice.plugins.runners.js import JsLimits, JsWorker, WorkerRequest
from lattice.plugins.runners.js_wire import (
    MEMORY_MESSAGE,
    FrameError,
    error_fields,
    read_frame,
    write_frame,
)

__all__ = ["main"]

#: room beyond the cap: a replacement isolate, the Python side (frames, JSON,
#: base64 of 1 MiB bodies), V8 overshooting its heap limit before it notices
PROCESS_SLACK = 40 * 1024 * 1024
#: past this share of the room above the baseline, the idle isolate is
#: discarded after a request (freeing what the worker kept in its globals)
HIGH_WATER = 0.8
_VMDATA = re.compile(rb"VmData:\s+(\d+) kB")


def vm_data() -> int | None:
    """Bytes of this process's data segment (what RLIMIT_DATA counts)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            found = _VMDATA.search(fh.read())
    except OSError:
        return None
    return int(found[1]) * 1024 if found else None


class ParentHost:
    """A :class:`~lattice.plugins.runners.js.JsHost` answered by the server."""

    def __init__(self, out: asyncio.StreamWriter) -> None:
        self._out = out
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def answer(self, message: dict[str, Any]) -> None:
        future = self._waiting.pop(message.get("id", -1), None)
        if future is None or future.done():
            return
        if "err" in message:
            future.set_exception(WorkerError(str(message["err"])[:500]))
        else:
            future.set_result(message.get("ok"))

    async def _call(self, method: str, *args: Any) -> Any:
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        write_frame(self._out, {"t": "host", "id": call_id, "method": method, "args": list(args)})
        try:
            return await future
        finally:
            self._waiting.pop(call_id, None)

    async def kv_get(self, bucket: str, key: str) -> str | None:
        value = await self._call("kv_get", bucket, key)
        return value if isinstance(value, str) else None

    async def kv_list(
        self, bucket: str, prefix: str, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        names, next_cursor = await self._call("kv_list", bucket, prefix, limit, cursor)
        return [str(n) for n in names], None if next_cursor is None else str(next_cursor)

    async def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None:
        found = await self._call("static_get", bucket, path)
        if found is None:
            return None
        return base64.b64decode(found[0]), str(found[1])

    async def log(self, level: str, message: str) -> None:
        write_frame(self._out, {"t": "log", "level": level, "message": message})


class Sandbox:
    def __init__(self, out: asyncio.StreamWriter) -> None:
        self._out = out
        self.host = ParentHost(out)
        self.worker: JsWorker | None = None
        self._high_water: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def init(self, message: dict[str, Any]) -> None:
        limits = JsLimits(**message["limits"])
        try:
            self.worker = await JsWorker.create(
                name=str(message["name"]),
                source=str(message["source"]),
                bindings=message["bindings"],
                host=self.host,
                limits=limits,
            )
        except LatticeError as exc:
            write_frame(self._out, {"t": "fail", **error_fields(exc)})
            return
        self._high_water = _cap_memory(limits)
        write_frame(self._out, {"t": "ready"})

    def request(self, message: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._serve(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, message: dict[str, Any]) -> None:
        req_id = message.get("id")
        worker = self.worker
        try:
            if worker is None:
                raise WorkerError("worker is not loaded")
            response = await worker.handle(
                WorkerRequest(
                    method=str(message["method"]),
                    url=str(message["url"]),
                    headers=[(str(k), str(v)) for k, v in message["headers"]],
                    body=base64.b64decode(message["body"]),
                )
            )
            reply: dict[str, Any] = {
                "t": "res",
                "id": req_id,
                "status": response.status,
                "headers": [list(pair) for pair in response.headers],
                "body": base64.b64encode(response.body).decode("ascii"),
            }
        except LatticeError as exc:
            reply = {"t": "err", "id": req_id, **error_fields(exc)}
        except MemoryError:
            reply = {"t": "err", "id": req_id, "kind": "memory", "message": MEMORY_MESSAGE}
        finally:
            self._shed_memory()
        write_frame(self._out, reply)

    def _shed_memory(self) -> None:
        """Near the limit, drop idle isolates so the next request starts clean."""
        used = vm_data()
        if self.worker is not None and self._high_water and used and used > self._high_water:
            self.worker.drop_idle()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.worker is not None:
            await self.worker.close()


def _cap_memory(limits: JsLimits) -> int | None:
    """Set RLIMIT_DATA to today's use plus the worker's cap and a small slack;
    return the high-water mark above which the isolate is recycled."""
    used = vm_data()
    if used is None:
        return None
    room = limits.memory_bytes + PROCESS_SLACK
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (used + room, used + room))
        return used + int(room * HIGH_WATER)
    return None


async def _run() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    # The protocol owns stdout; anything else printing goes to stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    sandbox = Sandbox(writer)
    try:
        while True:
            try:
                message = await read_frame(reader)
            except FrameError as exc:
                print(f"js sandbox: {exc}", file=sys.stderr)
                return
            if message is None:
                return
            kind = message["t"]
            if kind == "req":
                sandbox.request(message)
            elif kind == "host_res":
                sandbox.host.answer(message)
            elif kind == "init" and sandbox.worker is None:
                await sandbox.init(message)
            await writer.drain()
    finally:
        await sandbox.close()


def main() -> None:
    # Before any thread exists (V8 starts its own): every thread inherits it.
    # Started through `nice` the process is at 10 already; never go past it.
    with contextlib.suppress(OSError):
        os.nice(max(0, 10 - os.nice(0)))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run())


if __name__ == "__main__":
    main()
