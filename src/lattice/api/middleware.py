"""Pure ASGI middleware: request ids, access log + metrics, and body caps.

The body cap counts bytes as they arrive, so a chunked upload without a
``Content-Length`` is cut off as soon as it passes the limit (413), and a
declared ``Content-Length`` above the limit is refused before reading.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lattice.core.logging import access, request_id_var
from lattice.core.metrics import Metrics
from lattice.errors import PayloadTooLarge

__all__ = ["RequestMiddleware"]

_RID = re.compile(r"[A-Za-z0-9._-]{8,64}")
# Client-chosen methods must not mint new metric series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMiddleware:
    """Request id, access log, metrics and the body cap, in one layer (one
    header scan and one ``send`` wrapper per request)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.stats = metrics.http
        self.limit_for = limit_for
        # Request ids need to be unique, not unguessable: a random prefix per
        # process and a counter (no system call per request).
        prefix = secrets.token_hex(4)
        self._ids = (f"{prefix}{n & 0xFFFFFFFF:08x}" for n in itertools.count(secrets.randbits(32)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = declared = None
        for key, value in scope["headers"]:
            if key == b"x-request-id" and incoming is None:
                incoming = value.decode("latin-1")
            elif key == b"content-length" and declared is None:
                declared = value.decode("latin-1")
        rid = incoming if incoming and _RID.fullmatch(incoming) else next(self._ids)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500
        rid_header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            limit = self.limit_for(scope["path"])
            if declared is not None:
                if not (declared.isascii() and declared.isdigit()):  # '²'.isdigit() is True
                    body = b'{"error":"invalid Content-Length header","detail":null}'
                    await _reply(send_with_id, 400, body)
                    return
                if int(declared) > limit:
                    await _reply(send_with_id, 413, _too_large(limit))
                    return
            await self.app(scope, _limited(receive, limit), send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            method = method if method in _METHODS else "OTHER"
            self.stats.record(method, template, status, elapsed)
            access(rid, f"{method} {template} {status} {elapsed * 1000:.1f}ms")
            request_id_var.reset(token)


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that fails with 413 as soon as the body passes ``limit``."""
    seen = 0

    async def limited_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(
                    f"request body exceeds the {limit}-byte limit", detail={"limit": limit}
                )
        return message

    return limited_receive


def _too_large(limit: int) -> bytes:
    return (
        b'{"error":"request body exceeds the '
        + str(limit).encode()
        + b'-byte limit","detail":{"limit":'
        + str(limit).encode()
        + b"}}"
    )


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
