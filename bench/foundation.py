"""Foundation overheads: the audit chain vs plain inserts, KV GET vs a bare route.

1. ``AuditLog.append`` on a fresh migrated SQLite database vs plain inserts of
   the same rows into the same table of a second fresh database built the same
   way (``Database`` engine setup, same pragmas, one committed ``BEGIN
   IMMEDIATE`` transaction per row).  Target: ratio >= 0.5.
2. ``GET /api/kv/b/k`` (bearer token, scope check, DB lookups) vs a bare sync
   FastAPI route added to the *same* app and server that returns the same
   bytes, through the same middleware.  The server runs in a child process
   (uvicorn on 127.0.0.1, as ``lattice serve`` would) so client and server do
   not share a GIL; the client is one keep-alive ``httpx.Client``.  Short
   rounds alternate between the two routes (so load from other processes hits
   both alike) and the median of the per-round ratios is reported.
   Target: ratio >= 0.7.

    python3 bench/foundation.py [--rows 2000] [-n 500] [--rounds 15]

To see where server time goes, run ``py-spy record --threads -p <server pid>``
(the server runs with ``--serve``; cProfile would only see the event-loop
thread, not the threadpool that runs sync routes).

Loopback only, bounded loops, everything in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

VALUE = bytes(range(256))


# -- 1. audit appends --------------------------------------------------------------------


def bench_audit(rows: int, workdir: Path) -> tuple[float, float]:
    from lattice.core.audit import AuditLog
    from lattice.store.db import Database
    from lattice.store.migrate import upgrade
    from lattice.store.tables import audit_events

    chained = Database(f"sqlite:///{workdir / 'audit-chain.db'}")
    upgrade(chained)
    log = AuditLog(chained)
    started = time.perf_counter()
    for i in range(rows):
        log.append(
            actor="user:bench/token:abcdefabcdef",
            action="kv.put",
            target=f"bucket/key-{i}",
            detail={"size": i},
        )
    audit_rate = rows / (time.perf_counter() - started)

    with chained.read() as conn:
        stored = [dict(r._mapping) for r in conn.execute(audit_events.select()).all()]
    chained.dispose()

    plain = Database(f"sqlite:///{workdir / 'audit-plain.db'}")
    upgrade(plain)
    insert = audit_events.insert()
    started = time.perf_counter()
    for row in stored:
        with plain.write() as conn:
            conn.execute(insert, row)
    plain_rate = len(stored) / (time.perf_counter() - started)
    plain.dispose()
    return audit_rate, plain_rate


# -- 2. KV GET over HTTP ------------------------------------------------------------------


def serve(data_dir: str) -> None:
    """Child process: the real app plus one bare route, on an ephemeral port."""
    import uvicorn
    from fastapi import Response

    from lattice.app import build_container, create_app
    from lattice.config import Settings

    settings = Settings(
        data_dir=Path(data_dir),
        admin_password="bench-admin-password",
        listen="127.0.0.1:0",
    )
    container = build_container(settings, announce=lambda _m: None)
    container.kv.put("b", "k", VALUE)
    token, _info = container.auth.create_token(
        "admin", name="bench", scopes=["kv:read"], expires_in_days=None
    )
    app = create_app(container)

    def bare() -> Response:
        return Response(VALUE, media_type="application/octet-stream")

    app.add_api_route("/bench/bare", bare, methods=["GET"])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    def announce_port() -> None:
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"{port} {token}", flush=True)

    threading.Thread(target=announce_port, daemon=True).start()
    server.run()


def _round(client: httpx.Client, path: str, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        r = client.get(path)
        if r.status_code != 200 or r.content != VALUE:
            raise SystemExit(f"{path}: unexpected {r.status_code} {r.content[:80]!r}")
    return n / (time.perf_counter() - started)


def bench_http(n: int, rounds: int, workdir: Path) -> tuple[float, float, float]:
    cmd = [sys.executable, __file__, "--serve", str(workdir / "server")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2:
            raise SystemExit("bench server failed to start")
        port, token = line
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            _round(client, "/api/kv/b/k", 200)  # warm up both paths
            _round(client, "/bench/bare", 200)
            kv_rates, bare_rates, ratios = [], [], []
            for _ in range(rounds):
                bare = _round(client, "/bench/bare", n)
                kv = _round(client, "/api/kv/b/k", n)
                bare_rates.append(bare)
                kv_rates.append(kv)
                ratios.append(kv / bare)
        return (
            statistics.median(kv_rates),
            statistics.median(bare_rates),
            statistics.median(ratios),
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000, help="audit rows to append")
    parser.add_argument("-n", type=int, default=500, help="GETs per round per route")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per route")
    parser.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        serve(args.serve)
        return

    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        workdir = Path(tmp)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        audit_rate, plain_rate = bench_audit(args.rows, workdir)
        print(f"audit append      {args.rows} rows  {audit_rate:8.0f} rows/s")
        print(f"plain insert      {args.rows} rows  {plain_rate:8.0f} rows/s")
        print(f"audit/plain ratio {audit_rate / plain_rate:.2f}  (target >= 0.5)")
        kv_rate, bare_rate, ratio = bench_http(args.n, args.rounds, workdir)
        print(
            f"KV GET            {kv_rate:8.0f} req/s  (median of {args.rounds} rounds x {args.n})"
        )
        print(f"bare GET          {bare_rate:8.0f} req/s")
        print(f"kv/bare ratio     {ratio:.2f}  (median of per-round ratios; target >= 0.7)")


if __name__ == "__main__":
    main()
