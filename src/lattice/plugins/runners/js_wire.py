"""Framing shared by the server and a JS sandbox process (``js_sandbox``).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON (one object).  Bodies travel as standard base64 inside the JSON.  Both
sides refuse a frame larger than :data:`MAX_FRAME` and treat any malformed
frame as the end of the conversation.

Messages (``t`` is the type)::

    server -> sandbox  init {name, source, bindings, limits}
                       req  {id, method, url, headers, body}
                       host_res {id, ok | err}
    sandbox -> server  ready | fail {kind, message, detail}
                       res  {id, status, headers, body}
                       err  {id, kind, message, detail}
                       host {id, method, args}
                       log  {level, message}

``kind`` names the Lattice error to raise on the server side: ``timeout``
(WorkerTimeout), ``too_large`` (PayloadTooLarge), ``memory`` or ``worker``
(WorkerError).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from lattice.errors import LatticeError, PayloadTooLarge, WorkerError, WorkerTimeout

__all__ = ["MAX_FRAME", "error_fields", "error_from", "read_frame", "write_frame"]

MAX_FRAME = 16 * 1024 * 1024
_LEN = struct.Struct(">I")
MEMORY_MESSAGE = "worker exceeded its memory limit"


class FrameError(Exception):
    """The peer sent something that is not a frame; the conversation is over."""


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("truncated frame header") from None
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    try:
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise FrameError("truncated frame") from None
    try:
        message = json.loads(data)
    except ValueError:
        raise FrameError("frame is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise FrameError("frame is not a message object")
    return message


def encode_frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise WorkerError(f"message of {len(data)} bytes is over the {MAX_FRAME}-byte limit")
    return _LEN.pack(len(data)) + data


def write_frame(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(encode_frame(message))


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
