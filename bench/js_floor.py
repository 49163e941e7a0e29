"""The floor under a JS worker request: what each layer costs on its own.

    python3 bench/js_floor.py [--n 5000] [--rounds 3]

No HTTP: each step is timed in a loop in this process (and, where a step
crosses into a sandbox process, that child's CPU is counted too).  Steps,
from the bottom up:

1. ``eval, stock``: one ``MiniRacer.eval`` of a constant script (what mini-racer
   costs out of the box: its Python layer, a fresh Python thread state per
   callback from V8's thread).
2. ``eval, adapter``: one ``Isolate.run_sync`` of the same script (the adapter in
   ``js_engine``: C entry points, a lasting thread state on V8's thread).
3. ``pipe round trip``: 200 bytes to a Python child and back (blocking
   ``os.read``/``os.write`` both ends): one crossing between processes.
4. ``request, in-process``: ``JsWorker.handle`` of the constant worker and of
   the KV worker (an in-memory host), isolate in this process.
5. ``request, sandboxed``: ``SandboxedJsWorker.handle`` of the same workers:
   what the server's event loop and the sandbox process spend per request,
   without HTTP.

Rounds alternate the steps; min / median / max of the per-round figures are
printed, with the machine load.  Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lattice.plugins.runners.js import JsLimits, JsWorker, WorkerRequest
from lattice.plugins.runners.js_engine import Isolate
from lattice.plugins.runners.js_process import SandboxedJsWorker

CONST = 'export default { async fetch() { return new Response("hello /x world"); } };'
KV = (
    "export default { async fetch(request, env) {\n"
    '  return new Response("hello /x " + (await env.KV.get("message")));\n'
    "} };\n"
)
REQUEST = WorkerRequest(
    method="GET",
    url="http://127.0.0.1:8080/w/js/x",
    headers=[("host", "127.0.0.1:8080"), ("user-agent", "bench")],
    body=b"",
)
ECHO = textwrap.dedent(
    """
    import os
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        os.write(1, data)
    """
)
_TICK = os.sysconf("SC_CLK_TCK")


class MemoryHost:
    async def kv_get(self, bucket: str, key: str) -> str | None:
        return "world" if key == "message" else None

    async def kv_list(
        self, bucket: str, prefix: str, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        return [], None

    async def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None:
        return None

    async def log(self, level: str, message: str) -> None:
        return None


def children_cpu() -> float:
    """CPU of this process's live children (the sandboxes, the echo child)."""
    total = 0
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


class Step:
    def __init__(self, name: str) -> None:
        self.name = name
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def add(self, n: int, wall: float, cpu: float) -> None:
        self.wall.append(wall / n * 1e6)
        self.cpu.append(cpu / n * 1e6)


def spread(values: list[float]) -> str:
    return f"{min(values):7.1f} {statistics.median(values):7.1f} {max(values):7.1f}"


async def timed(step: Step, n: int, body: Callable[[], Awaitable[object]]) -> None:
    for _ in range(min(200, n)):
        await body()
    wall0, cpu0, kids0 = time.perf_counter(), time.process_time(), children_cpu()
    for _ in range(n):
        await body()
    wall = time.perf_counter() - wall0
    step.add(n, wall, time.process_time() - cpu0 + children_cpu() - kids0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="iterations per step and round")
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")

    from py_mini_racer import MiniRacer

    stock = MiniRacer()
    isolate = Isolate.open(memory_bytes=64 * 1024 * 1024)
    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert echo.stdin is not None and echo.stdout is not None
    w, r = echo.stdin.fileno(), echo.stdout.fileno()
    message = b"x" * 200
    limits = JsLimits(pool_size=1)
    host = MemoryHost()
    bindings = {"KV": {"kv": "default"}}
    inproc_const = await JsWorker.create(
        name="c", source=CONST, bindings={}, host=host, limits=limits
    )
    inproc_kv = await JsWorker.create(
        name="k", source=KV, bindings=bindings, host=host, limits=limits
    )
    box_const = await SandboxedJsWorker.create(
        name="c", source=CONST, bindings={}, host=host, limits=limits
    )
    box_kv = await SandboxedJsWorker.create(
        name="k", source=KV, bindings=bindings, host=host, limits=limits
    )

    async def stock_eval() -> None:
        stock.eval("'x'")

    async def adapter_eval() -> None:
        isolate.run_sync(b"'x'", cpu_s=0.05)

    async def pipe() -> None:
        os.write(w, message)
        os.read(r, 65536)

    steps = [
        (Step("eval, stock MiniRacer"), stock_eval),
        (Step("eval, adapter"), adapter_eval),
        (Step("pipe round trip"), pipe),
        (Step("request const, in-process"), lambda: inproc_const.handle(REQUEST)),
        (Step("request kv, in-process"), lambda: inproc_kv.handle(REQUEST)),
        (Step("request const, sandboxed"), lambda: box_const.handle(REQUEST)),
        (Step("request kv, sandboxed"), lambda: box_kv.handle(REQUEST)),
    ]
    for round_no in range(opts.rounds):
        for step, body in steps:
            await timed(step, opts.n, body)
        print(f"round {round_no + 1} done", flush=True)
    print(f"\n{'step':28} {'wall µs min/med/max':>24} {'CPU µs min/med/max':>24}")
    for step, _ in steps:
        print(f"{step.name:28} {spread(step.wall):>24} {spread(step.cpu):>24}")
    print("(CPU: this process plus its children, per iteration)")
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")

    for worker in (inproc_const, inproc_kv, box_const, box_kv):
        await worker.close()
    isolate.close()
    stock.close()
    echo.stdin.close()
    echo.wait()


if __name__ == "__main__":
    asyncio.run(main())
