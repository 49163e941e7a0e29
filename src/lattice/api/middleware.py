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
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lattice.core.logging import access, request_id_var
from lattice.core.metrics import Metrics
from lattice.errors import PayloadTooLarge

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware"]

_RID = re.compile(r"[A-Za-z0-9._-]{8,64}")
# Client-chosen methods must not mint new metric series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.stats = metrics.http
        # Request ids need to be unique, not unguessable: a random prefix per
        # process and a counter (no system call per request).
        prefix = secrets.token_hex(4)
        self._ids = (f"{prefix}{n & 0xFFFFFFFF:08x}" for n in itertools.count(secrets.randbits(32)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = incoming if incoming and _RID.fullmatch(incoming) else next(self._ids)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "-")
            method = method if method in _METHODS else "OTHER"
            self.stats.record(method, template, status, elapsed)
            access(rid, f"{method} {template} {status} {elapsed * 1000:.1f}ms")
            request_id_var.reset(token)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):  # '²'.isdigit() is True
                await _reply(send, 400, b'{"error":"invalid Content-Length header","detail":null}')
                return
            if int(declared) > limit:
                await _reply(send, 413, _too_large(limit))
                return
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

        await self.app(scope, limited_receive, send)


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


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Any = scope.get("headers", [])
    for key, value in headers:
        if key == name:
            return str(value.decode("latin-1"))
    return None
