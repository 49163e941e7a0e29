"""Fixtures for the JS runtime tests: an in-memory JsHost and a worker factory.

The JsHost is the caller-provided interface (the broker in production), so a
dict-backed fake is the real contract here; V8 itself is never faked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest

from lattice.errors import CapabilityDenied
from lattice.plugins.runners.js import JsLimits, JsWorker, WorkerRequest, WorkerResponse


class MemoryHost:
    """A JsHost backed by dicts; records every call and log line."""

    def __init__(self) -> None:
        self.kv: dict[str, dict[str, str]] = {"default": {}}
        self.static: dict[str, dict[str, tuple[bytes, str]]] = {"site": {}}
        self.logs: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str, str]] = []
        self.denied_buckets: set[str] = set()

    def _check(self, op: str, bucket: str, arg: str) -> None:
        self.calls.append((op, bucket, arg))
        if bucket in self.denied_buckets:
            raise CapabilityDenied(plugin_id="test", capability="kv:read", reason="not granted")

    async def kv_get(self, bucket: str, key: str) -> str | None:
        self._check("kv_get", bucket, key)
        return self.kv.get(bucket, {}).get(key)

    async def kv_list(
        self, bucket: str, prefix: str, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        self._check("kv_list", bucket, prefix)
        names = sorted(k for k in self.kv.get(bucket, {}) if k.startswith(prefix))
        start = int(cursor) if cursor else 0
        page = names[start : start + limit]
        more = start + limit < len(names)
        return page, str(start + limit) if more else None

    async def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None:
        self._check("static_get", bucket, path)
        return self.static.get(bucket, {}).get(path)

    async def log(self, level: str, message: str) -> None:
        self.logs.append((level, message))


WorkerFactory = Callable[..., Awaitable[JsWorker]]


@pytest.fixture
def host() -> MemoryHost:
    return MemoryHost()


@pytest.fixture
async def make_worker(host: MemoryHost) -> AsyncIterator[WorkerFactory]:
    """Build workers on the test's event loop and close them afterwards."""
    made: list[JsWorker] = []

    async def factory(
        source: str,
        *,
        bindings: Mapping[str, Mapping[str, str]] | None = None,
        limits: JsLimits | None = None,
        js_host: MemoryHost | None = None,
    ) -> JsWorker:
        worker = await JsWorker.create(
            name="test",
            source=source,
            bindings=bindings or {},
            host=js_host or host,
            limits=limits or JsLimits(),
        )
        made.append(worker)
        return worker

    yield factory
    for worker in made:
        await worker.close()


def get(
    url: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> WorkerRequest:
    return WorkerRequest(method=method, url=url, headers=headers or [], body=body)


def text(response: WorkerResponse) -> str:
    return response.body.decode("utf-8")
