"""Framing shared by the server and a JS sandbox process (``js_sandbox``).

A frame is a 4-byte big-endian length, then that many bytes: one ASCII letter
naming the kind, then the payload.  Both sides refuse a frame larger than
:data:`MAX_FRAME` and treat any malformed frame as the end of the conversation.

Frames (payloads are UTF-8 JSON)::

    server -> sandbox  i  init {name, source, bindings, limits}
                       r  one request: the object ``__lattice.start`` takes
                          ({method, url, headers, body}; body in base64)
                       h  answers to the binding calls of the request in flight
                          ([{id, ok | err}, ...])
                       a  abort the request in flight (its binding calls ran
                          out of time); the sandbox answers with an ``err``
    sandbox -> server  m  a message object; ``t`` is its type:
                          ready | invalid | error   (loading the module)
                          ops {ops}                 binding calls of the request
                          done {status, headers, body} | error {stack} |
                          too_large | stalled       the request's end, as the
                                                    isolate wrote it
                          err {kind, message, detail}  the request failed in
                                                    the sandbox (engine limits)
                          fail {kind, message, detail} loading failed
                          any of them may carry ``logs`` ([[level, text], ...])

The ``r`` and ``h`` payloads are produced by the server with ``json.dumps``
(ASCII), so the sandbox splices them into the scripts it runs without
parsing them; the isolate's own messages go to the server as they came out of
``JSON.stringify``.  The server, which trusts nothing the sandbox says, parses
and checks every message (``js.check_ops``, ``js.request_outcome``).

``kind`` in ``err``/``fail`` names the Lattice error to raise on the server
side: ``timeout`` (WorkerTimeout), ``too_large`` (PayloadTooLarge), ``memory``,
``aborted`` or ``worker`` (WorkerError).
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

from lattice.errors import LatticeError, PayloadTooLarge, WorkerError, WorkerTimeout

__all__ = [
    "MAX_FRAME",
    "MEMORY_MESSAGE",
    "FrameBuffer",
    "FrameError",
    "FrameReader",
    "error_fields",
    "error_from",
    "frame",
    "header",
    "message",
    "write_all",
]

MAX_FRAME = 16 * 1024 * 1024
_LEN = struct.Struct(">I")
MEMORY_MESSAGE = "worker exceeded its memory limit"
_READ_SIZE = 256 * 1024


class FrameError(Exception):
    """The peer sent something that is not a frame; the conversation is over."""


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame (the length covers the kind letter and the payload)."""
    if len(payload) + 1 > MAX_FRAME:
        raise WorkerError(f"message of {len(payload)} bytes is over the {MAX_FRAME}-byte limit")
    return _LEN.pack(len(payload) + 1) + kind + payload


def header(kind: bytes, size: int) -> bytes:
    """The length and kind of a frame whose payload of ``size`` bytes follows."""
    if size + 1 > MAX_FRAME:
        raise WorkerError(f"message of {size} bytes is over the {MAX_FRAME}-byte limit")
    return _LEN.pack(size + 1) + kind


class FrameBuffer:
    """Frames out of a byte stream fed in pieces (the server's pipe protocol)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Append ``data``; return the ``(kind, payload)`` of every frame completed."""
        buf = self._buf
        buf += data
        out: list[tuple[bytes, bytes]] = []
        start = 0
        while len(buf) - start >= _LEN.size:
            (size,) = _LEN.unpack_from(buf, start)
            if size > MAX_FRAME or size == 0:
                raise FrameError(f"frame of {size} bytes is outside 1..{MAX_FRAME}")
            end = start + _LEN.size + size
            if len(buf) < end:
                break
            out.append((bytes(buf[start + 4 : start + 5]), bytes(buf[start + 5 : end])))
            start = end
        if start:
            del buf[:start]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


class FrameReader:
    """Blocking frame reads from a file descriptor (the sandbox's stdin)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = FrameBuffer()
        self._ready: list[tuple[bytes, bytes]] = []

    def read(self, timeout: float | None = None) -> tuple[bytes, bytes] | None:
        """The next frame; None at a clean end of stream.  With ``timeout``,
        raises TimeoutError when no whole frame arrived in that many seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                    raise TimeoutError
            data = os.read(self._fd, _READ_SIZE)
            if not data:
                if self._frames.pending:
                    raise FrameError("truncated frame")
                return None
            self._ready.extend(self._frames.feed(data))
        return self._ready.pop(0)


def write_all(fd: int, *parts: bytes) -> None:
    """Write every byte of ``parts`` (a blocking pipe may take them in pieces)."""
    views = [memoryview(p) for p in parts if p]
    while views:
        sent = os.writev(fd, views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def message(**fields: Any) -> bytes:
    """A sandbox-made message frame."""
    return frame(b"m", json.dumps(fields, separators=(",", ":")).encode("utf-8"))


def error_fields(exc: LatticeError) -> dict[str, Any]:
    """How an error crosses the pipe."""
    if isinstance(exc, WorkerTimeout):
        kind = "timeout"
    elif isinstance(exc, PayloadTooLarge):
        kind = "too_large"
    elif exc.message == MEMORY_MESSAGE:
        kind = "memory"
    else:
        kind = "worker"
    detail = exc.detail if isinstance(exc.detail, dict | None) else None
    return {"kind": kind, "message": exc.message, "detail": detail}


def error_from(message: dict[str, Any]) -> LatticeError:
    """The Lattice error a ``fail``/``err`` message stands for."""
    kind = message.get("kind")
    text = str(message.get("message") or "worker failed")[:500]
    detail = message.get("detail")
    detail = detail if isinstance(detail, dict) else None
    if kind == "timeout":
        return WorkerTimeout(text, detail=detail)
    if kind == "too_large":
        return PayloadTooLarge(text, detail=detail)
    return WorkerError(text, detail=detail)
