"""Micro-benchmark of the JS worker runtime: `python3 bench/js_engine.py`.

Prints first/later isolate start-up, worker create, per-request latency (sequential
and 50-way parallel) and the cost of recovering from a timeout.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from lattice.plugins.runners.js import JsLimits, JsWorker, WorkerRequest
from lattice.plugins.runners.js_engine import Isolate

SOURCE = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/loop") { while (true) {} }
    if (url.pathname === "/kv") return Response.json({ v: await env.KV.get("k") });
    return new Response("hello " + url.searchParams.get("i"));
  },
};
"""


class Host:
    async def kv_get(self, bucket: str, key: str) -> str | None:
        return "value"

    async def kv_list(
        self, bucket: str, prefix: str, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        return [], None

    async def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None:
        return None

    async def log(self, level: str, message: str) -> None:
        return None


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def timed(label: str, runs: int, path: str, worker: JsWorker) -> None:
    samples = []
    for i in range(runs):
        started = time.perf_counter()
        await worker.handle(WorkerRequest("GET", f"http://h{path}?i={i}", [], b""))
        samples.append(time.perf_counter() - started)
    samples.sort()
    print(f"{label:<28} p50 {ms(statistics.median(samples))}  p95 {ms(samples[int(runs * 0.95)])}")


async def main() -> None:
    started = time.perf_counter()
    Isolate.open(memory_bytes=64 << 20).close()
    print(f"{'first isolate (V8 init)':<28} {ms(time.perf_counter() - started)}")
    started = time.perf_counter()
    Isolate.open(memory_bytes=64 << 20).close()
    print(f"{'later isolate':<28} {ms(time.perf_counter() - started)}")

    started = time.perf_counter()
    worker = await JsWorker.create(
        name="bench",
        source=SOURCE,
        bindings={"KV": {"kv": "default"}},
        host=Host(),
        limits=JsLimits(pool_size=1),
    )
    print(f"{'worker create (+prelude)':<28} {ms(time.perf_counter() - started)}")

    await timed("hello, sequential", 500, "/", worker)
    await timed("one KV read, sequential", 500, "/kv", worker)

    started = time.perf_counter()
    await asyncio.gather(
        *(worker.handle(WorkerRequest("GET", f"http://h/?i={i}", [], b"")) for i in range(50))
    )
    print(f"{'50 parallel (pool of 1)':<28} {ms(time.perf_counter() - started)} total")

    started = time.perf_counter()
    try:
        await worker.handle(WorkerRequest("GET", "http://h/loop", [], b""))
    except Exception as exc:
        print(f"{'infinite loop -> ' + type(exc).__name__:<28} {ms(time.perf_counter() - started)}")
    started = time.perf_counter()
    await worker.handle(WorkerRequest("GET", "http://h/", [], b""))
    print(f"{'next request (new isolate)':<28} {ms(time.perf_counter() - started)}")
    await worker.close()


if __name__ == "__main__":
    asyncio.run(main())
