"""Egress guard overhead: sequential GETs through EgressGuard vs plain httpx.Client.

Starts a threaded HTTP/1.1 server on 127.0.0.1 returning a small body, then runs
N keep-alive GETs each way against it in the same process and prints both rates
and their ratio (target: guard >= 0.7 x plain).  Loopback only.

    python3 bench/egress.py [-n 2000]
"""

from __future__ import annotations

import argparse
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from lattice.services.egress import EgressGuard, EgressPolicy

BODY = b'{"ok": true, "data": "' + b"x" * 200 + b'"}'


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _measure(n: int, clients: dict[str, Callable[[], None]], rounds: int = 8) -> dict[str, float]:
    """Requests/second per client; rounds alternate so machine noise hits both."""
    spent = dict.fromkeys(clients, 0.0)
    for get in clients.values():  # warm up: connection, caches
        for _ in range(50):
            get()
    per_round = max(n // rounds, 1)
    for _ in range(rounds):
        for label, get in clients.items():
            started = time.perf_counter()
            for _ in range(per_round):
                get()
            spent[label] += time.perf_counter() - started
    total = per_round * rounds
    for label, seconds in spent.items():
        print(f"{label:<14} {total} GETs in {seconds:6.3f}s  {total / seconds:8.0f} req/s")
    return {label: total / seconds for label, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="GETs per client")
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/item"
    policy = EgressPolicy.from_settings(allow_cidrs="127.0.0.1/32", allow_ports=[port])

    try:
        with httpx.Client(trust_env=False) as plain, EgressGuard(policy) as guard:

            def plain_get() -> None:
                response = plain.get(url)
                assert response.content == BODY

            def guard_get() -> None:
                assert guard.request("GET", url).body == BODY

            rates = _measure(args.n, {"plain httpx": plain_get, "egress guard": guard_get})
    finally:
        server.shutdown()
        server.server_close()
    ratio = rates["egress guard"] / rates["plain httpx"]
    print(f"ratio guard/plain = {ratio:.2f} (target >= 0.70) {'OK' if ratio >= 0.7 else 'LOW'}")


if __name__ == "__main__":
    main()
