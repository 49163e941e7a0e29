"""Live workers by route name, swapped atomically on redeploy.

``deploy`` compiles first (a JS worker's sandbox process is started and its
source checked) and only then swaps the new worker in under the name.  The
old one keeps serving the requests it already has and is closed when the last
of them finishes, so a redeploy under load loses no request.

JS workers run in sandbox processes (:mod:`~lattice.plugins.runners.js_process`);
one server-wide gate bounds how many JS requests run at once, whatever the
number of workers.  Templates render here, bounded (``runners.template``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from lattice.errors import Conflict, LatticeError, NotFound
from lattice.plugins.runners.js import JsLimits, WorkerRequest, WorkerResponse
from lattice.plugins.runners.js_process import SandboxedJsWorker
from lattice.plugins.runners.template import render
from lattice.plugins.workers import WorkerReads, WorkerSpec

__all__ = ["LiveWorker", "WorkerRegistry"]


T = TypeVar("T")


async def _read(inline: bool, fn: Callable[..., T], *args: Any) -> T:
    """Reads run inline when the store is local SQLite (see api.deps.read_store)."""
    return fn(*args) if inline else await run_in_threadpool(fn, *args)


class _ReadsHost:
    """Adapts a worker's synchronous reads to the JS runtime's async host."""

    def __init__(self, reads: WorkerReads, inline: bool) -> None:
        self._reads = reads
        self._inline = inline

    async def kv_get(self, bucket: str, key: str) -> str | None:
        value = await _read(self._inline, self._reads.kv_get, bucket, key)
        return value.decode("utf-8", errors="replace") if value is not None else None

    async def kv_list(
        self, bucket: str, prefix: str, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        return await _read(self._inline, self._reads.kv_list, bucket, prefix, cursor, limit)

    async def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None:
        return await _read(self._inline, self._reads.static_get, bucket, path)

    async def log(self, level: str, message: str) -> None:
        # a log line the store refuses is dropped, never a failed request
        with contextlib.suppress(LatticeError):
            await run_in_threadpool(self._reads.log, level, message)


@dataclass
class LiveWorker:
    spec: WorkerSpec
    reads: WorkerReads
    js: SandboxedJsWorker | None = None
    inflight: int = 0
    retired: bool = False
    _closed: bool = field(default=False, repr=False)

    async def close_if_idle(self) -> None:
        if self.retired and self.inflight == 0 and not self._closed:
            self._closed = True
            if self.js is not None:
                await self.js.close()


class WorkerRegistry:
    def __init__(
        self,
        limits: JsLimits | None = None,
        *,
        inline_reads: bool = False,
        max_concurrency: int = 8,
    ) -> None:
        self.limits = limits or JsLimits()
        self._inline = inline_reads
        #: JS requests running at once, over all workers
        self._gate = asyncio.Semaphore(max_concurrency)
        self._workers: dict[str, LiveWorker] = {}
        self._lock = asyncio.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self) -> None:
        """Remember the server's event loop (runners deploy from other threads)."""
        self.loop = asyncio.get_running_loop()

    def get(self, name: str) -> LiveWorker | None:
        return self._workers.get(name)

    def names(self) -> Mapping[str, WorkerSpec]:
        return {name: live.spec for name, live in self._workers.items()}

    async def deploy(self, spec: WorkerSpec, reads: WorkerReads) -> None:
        existing = self._workers.get(spec.name)
        if existing is not None and existing.spec.origin != spec.origin:
            raise Conflict(f"worker name {spec.name!r} is already served by {existing.spec.origin}")
        js = None
        if spec.kind == "js":
            js = await SandboxedJsWorker.create(
                name=spec.name,
                source=spec.source,
                bindings=spec.bindings,
                host=_ReadsHost(reads, self._inline),
                limits=self.limits,
                gate=self._gate,
            )
        async with self._lock:
            current = self._workers.get(spec.name)
            if current is not None and current.spec.origin != spec.origin:
                if js is not None:
                    await js.close()
                raise Conflict(
                    f"worker name {spec.name!r} is already served by {current.spec.origin}"
                )
            self._workers[spec.name] = LiveWorker(spec=spec, reads=reads, js=js)
        if current is not None:
            current.retired = True
            await current.close_if_idle()

    async def remove(self, name: str, *, origin: str | None = None) -> bool:
        async with self._lock:
            live = self._workers.get(name)
            if live is None or (origin is not None and live.spec.origin != origin):
                return False
            del self._workers[name]
        live.retired = True
        await live.close_if_idle()
        return True

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[LiveWorker]:
        """Hold the worker currently serving ``name`` for one request; a redeploy
        meanwhile swaps in a new worker but closes this one only after release."""
        live = self._workers.get(name)
        if live is None:
            raise NotFound(f"no worker named {name!r}")
        live.inflight += 1
        try:
            yield live
        finally:
            live.inflight -= 1
            await live.close_if_idle()

    async def run(
        self, live: LiveWorker, request: WorkerRequest | None, path: str
    ) -> WorkerResponse:
        """Serve one request on a leased worker (``request`` is unused by templates)."""
        if live.js is not None:
            if request is None:
                raise ValueError("a JS worker needs the request")
            return await live.js.handle(request)
        reads = live.reads
        body = await _read(
            self._inline,
            functools.partial(
                render,
                live.spec.source,
                path=path,
                kv=reads.kv_get,
                static=lambda b, p: _static_text(reads, b, p),
                max_bytes=self.limits.max_response_bytes,
            ),
        )
        return WorkerResponse(
            status=200, headers=[("content-type", live.spec.content_type)], body=body
        )

    async def close(self) -> None:
        async with self._lock:
            lives = list(self._workers.values())
            self._workers.clear()
        for live in lives:
            live.retired = True
            live.inflight = 0
            await live.close_if_idle()


def _static_text(reads: WorkerReads, bucket: str, path: str) -> bytes | None:
    found = reads.static_get(bucket, path)
    return found[0] if found else None
