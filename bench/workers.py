"""Worker serving throughput through the real HTTP server, in one run.

    python3 bench/workers.py [--seconds S] [--clients N]

Three routes on one uvicorn server, loaded by the same bounded client loop
(N threads with keep-alive connections, S seconds each, loopback only):

  (a) bare   a plain FastAPI endpoint returning the same bytes
  (b) tmpl   the seed template ``hello {{path}} {{kv:default/message}}``
  (c) js     a JS worker returning the same body

Prints requests/second (good answers only), p50/p99 latency, the ratios to
bare and the number of failed answers (which should be 0).
Targets: template >= 0.8 of bare, JS >= 0.5 of bare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from fastapi import Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lattice.app import build_container, create_app  # noqa: E402
from lattice.config import Settings  # noqa: E402

BODY = b"hello /x world"
JS = 'export default { async fetch() { return new Response("hello /x world"); } };'


def load(url: str, seconds: float, clients: int) -> tuple[float, list[float], int]:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[int] = []
    stop_at = time.monotonic() + seconds

    def worker(i: int) -> None:
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                r = client.get(url)
                latencies[i].append(time.perf_counter() - t0)
                if r.status_code != 200 or r.content != BODY:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [x for lat in latencies for x in lat]
    good = len(flat) - len(errors)
    return good / elapsed, flat, len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), admin_password="bench-password-123", listen="127.0.0.1:0"
        )
        container = build_container(settings, announce=lambda _m: None)
        app = create_app(container)

        @app.get("/bench/bare/x")
        def bare() -> Response:
            return Response(BODY, media_type="text/plain; charset=utf-8")

        # same position as the worker routes (first), so route matching costs the same
        app.router.routes.insert(0, app.router.routes.pop())

        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        token, _ = container.auth.create_token(
            "admin", name="bench", scopes=["*"], expires_in_days=None
        )
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as admin:
            admin.put("/api/kv/default/message", content=b"world")
            for name, body in (
                (
                    "tmpl",
                    {
                        "kind": "template",
                        "source": "hello {{path}} {{kv:default/message}}",
                        "capabilities": ["worker:route", "kv:read"],
                        "public": True,
                    },
                ),
                (
                    "js",
                    {"kind": "js", "source": JS, "capabilities": ["worker:route"], "public": True},
                ),
            ):
                r = admin.put(f"/api/workers/{name}", json=body)
                r.raise_for_status()

        routes = {"bare": "/bench/bare/x", "tmpl": "/w/tmpl/x", "js": "/w/js/x"}
        results: dict[str, list[tuple[float, list[float], int]]] = {k: [] for k in routes}
        for path in routes.values():  # warm up
            load(base + path, 0.5, args.clients)
        for _ in range(args.rounds):  # interleave rounds to spread machine noise
            for name, path in routes.items():
                results[name].append(load(base + path, args.seconds, args.clients))
        server.should_exit = True
        thread.join(timeout=10)

    best = {k: max(v, key=lambda r: r[0]) for k, v in results.items()}
    failed = {k: sum(r[2] for r in v) for k, v in results.items()}
    print(f"{'route':6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} {'errors':>7}")
    for name, (rate, lat, _errors) in best.items():
        lat.sort()
        p50 = statistics.median(lat) * 1000
        p99 = lat[int(len(lat) * 0.99) - 1] * 1000
        ratio = rate / best["bare"][0]
        print(f"{name:6} {rate:8.0f} {p50:8.2f} {p99:8.2f} {ratio:6.2f} {failed[name]:7d}")
    print("targets: tmpl >= 0.80, js >= 0.50")


if __name__ == "__main__":
    main()
