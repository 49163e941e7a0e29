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

The process is a plain blocking loop (no event loop): it reads a frame, runs
the isolate synchronously (``Isolate.run_sync``: the CPU budget is charged to
the V8 thread's own clock), and writes the isolate's messages back as they
came out of it.  Binding calls are forwarded to the server in one frame per
batch and answered there; the server checks them (and every other message)
itself, so nothing here needs to parse what the isolate says beyond its type.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import sys
from typing import Any

from lattice.errors import LatticeError, WorkerError, WorkerTimeout
from lattice.plugins.runners.js import (
    POLL,
    JsLimits,
    check_worker,
    install_code,
    is_memory_failure,
    module_to_script,
    prelude,
    start_code,
)
from lattice.plugins.runners.js_engine import Isolate
from lattice.plugins.runners.js_wire import (
    MEMORY_MESSAGE,
    FrameError,
    FrameReader,
    error_fields,
    header,
    message,
    write_all,
)

__all__ = ["main"]

#: room beyond the cap: a replacement isolate, the Python side (frames of
#: 1 MiB bodies in base64), V8 overshooting its heap limit before it notices
PROCESS_SLACK = 40 * 1024 * 1024
#: past this share of the room above the baseline, the isolate is discarded
#: after its request (freeing what the worker kept in its globals)
HIGH_WATER = 0.8
_VMDATA = re.compile(rb"VmData:\s+(\d+) kB")
_READY = b'{"t":"ready","logs":[]}'
_PAGE = os.sysconf("SC_PAGE_SIZE")


def vm_data() -> int | None:
    """Bytes of this process's data segment (what RLIMIT_DATA counts)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            found = _VMDATA.search(fh.read())
    except OSError:
        return None
    return int(found[1]) * 1024 if found else None


class _DataMeter:
    """This process's data segment, read cheaply after every request: a kept-open
    ``/proc/self/statm`` re-read with ``pread`` (3 µs, against 35 µs for opening
    and searching ``status``).  Its data field also counts the stack, so it reads
    a little high, which only recycles the isolate a little early."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def bytes(self) -> int | None:
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 128, 0).split()[5]) * _PAGE
        except (OSError, IndexError, ValueError):
            return None


class _Ended(Exception):
    """The server closed the conversation."""


class Sandbox:
    def __init__(self, reader: FrameReader, out_fd: int) -> None:
        self._reader = reader
        self._out = out_fd
        self._isolate: Isolate | None = None
        self._limits = JsLimits()
        self._bindings: dict[str, Any] = {}
        self._script = ""
        self._high_water: int | None = None
        self._meter = _DataMeter()
        self._cpu_left = 0.0

    # -- talking to the server ---------------------------------------------------

    def _send(self, payload: bytes) -> None:
        """A message from the isolate, as it came out of it."""
        write_all(self._out, header(b"m", len(payload)), payload)

    def _send_error(self, exc: LatticeError) -> None:
        write_all(self._out, message(t="err", **error_fields(exc)))

    def run(self) -> None:
        first = self._reader.read()
        if first is None:
            return
        kind, payload = first
        if kind != b"i":
            raise FrameError("the first frame must be init")
        if not self._init(json.loads(payload)):
            return
        while True:
            got = self._reader.read()
            if got is None:
                return
            kind, payload = got
            if kind == b"r":
                try:
                    self._request(payload)
                except _Ended:
                    return
            elif kind not in (b"h", b"a"):  # late answers to a request that ended
                raise FrameError(f"unexpected frame kind {kind!r}")

    # -- loading -------------------------------------------------------------------

    def _init(self, init: dict[str, Any]) -> bool:
        try:
            self._limits = JsLimits(**init["limits"])
            self._bindings = check_worker(str(init["source"]), init["bindings"])
            self._script = module_to_script(str(init["source"]))
            loaded = self._spawn()
        except LatticeError as exc:
            write_all(self._out, message(t="fail", **error_fields(exc)))
            return False
        self._send(loaded)
        if self._isolate is None:
            return False
        self._high_water = _cap_memory(self._limits)
        return True

    def _spawn(self) -> bytes:
        """A fresh isolate with the prelude and the module; returns the install
        message (the isolate is kept only when it says ``ready``)."""
        isolate = Isolate.open(memory_bytes=self._limits.memory_bytes)
        budget = self._limits.startup_ms / 1000
        try:
            _, used = isolate.run_sync(prelude().encode("utf-8"), cpu_s=budget)
            code = install_code(self._bindings, self._script).encode("utf-8", "surrogatepass")
            installed, _ = isolate.run_sync(code, cpu_s=budget - used)
        except WorkerTimeout as exc:
            isolate.close()
            raise WorkerTimeout("worker took too long to start") from exc
        except BaseException:
            isolate.close()
            raise
        if installed.startswith(b'{"t":"ready"'):
            self._isolate = isolate
        else:
            isolate.close()
        return installed

    # -- one request ------------------------------------------------------------------

    def _request(self, spec: bytes) -> None:
        try:
            self._serve(spec)
        except LatticeError as exc:
            self._discard_unless_usable()
            self._send_error(exc)
        except MemoryError:
            self._discard()
            self._send_error(WorkerError(MEMORY_MESSAGE))
        finally:
            self._shed_memory()

    def _run(self, code: bytes) -> bytes:
        if self._cpu_left <= 0:
            raise WorkerTimeout("worker exceeded its CPU time limit")
        assert self._isolate is not None
        out, used = self._isolate.run_sync(code, cpu_s=self._cpu_left)
        self._cpu_left -= used
        return out

    def _serve(self, spec: bytes) -> None:
        if self._isolate is None:
            loaded = self._spawn()
            if loaded != _READY:  # its console lines, or why it did not load
                self._send(b'{"t":"reload","msg":%s}' % loaded)
            if self._isolate is None:
                return
        self._cpu_left = self._limits.cpu_ms / 1000
        out = self._run(start_code(spec, self._limits.max_response_bytes))
        while True:
            if out == b"":
                out = self._run(POLL)
            if not out.startswith(b'{"t":"ops"'):
                break
            self._send(out)
            got = self._reader.read()  # the server holds the binding calls' budget
            if got is None:
                raise _Ended
            kind, payload = got
            if kind == b"a":
                self._send_error(WorkerError("binding calls aborted", detail=None))
                return
            if kind != b"h":
                raise FrameError(f"unexpected frame kind {kind!r} during a request")
            out = self._run(b"__lattice.resume(%s)" % payload)
        if is_memory_failure(out):
            self._discard()  # its memory is exhausted: the next request starts clean
        self._send(out)

    # -- isolates ----------------------------------------------------------------------

    def _discard(self) -> None:
        isolate, self._isolate = self._isolate, None
        if isolate is not None:
            isolate.close()

    def _discard_unless_usable(self) -> None:
        if self._isolate is not None and not self._isolate.usable:
            self._discard()

    def _shed_memory(self) -> None:
        """Near the limit, drop the isolate so the next request starts clean."""
        if self._high_water is None or self._isolate is None:
            return
        used = self._meter.bytes()
        if used is not None and used > self._high_water:
            self._discard()

    def close(self) -> None:
        self._discard()


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


def main() -> None:
    # Before any thread exists (V8 starts its own): every thread inherits it.
    # Started through `nice` the process is at 10 already; never go past it.
    with contextlib.suppress(OSError):
        os.nice(max(0, 10 - os.nice(0)))
    # SCHED_BATCH: a waking sandbox never preempts the server that woke it (the
    # server's pipe write then costs it 15 µs instead of being descheduled for
    # ~80 µs); the sandbox runs when a CPU is free or at the next tick
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    # The frames own stdout; anything else printing goes to stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sandbox = Sandbox(FrameReader(0), out_fd)
    try:
        sandbox.run()
    except FrameError as exc:
        print(f"js sandbox: {exc}", file=sys.stderr)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        sandbox.close()


if __name__ == "__main__":
    main()
