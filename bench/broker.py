"""Brokered kv.get vs direct KV service calls, in one process and one run.

    python3 bench/broker.py [--calls N] [--rounds R]

The baseline is a direct ``SqlKV.get`` call (the service the broker guards).
The broker path does everything a plugin's host call does: capability check,
rate-limit bucket, key validation, the KV read, and the audit event (queued
to the write-behind buffer, flushed in batches to the keyed chain).  The
buffer is flushed and closed inside the timed region, so the figure includes
writing every audit event.  Rounds alternate which side runs first; the
ratio (brokered calls/s over direct calls/s) is reported per round and as
min / median / max.  Target: >= 0.5.  The chain is verified at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.plugins.bundles import make_bundle, write_trust  # noqa: E402

from lattice.core.audit import AuditLog  # noqa: E402
from lattice.core.auditbuffer import BufferedAudit  # noqa: E402
from lattice.core.auditseal import AuditKey  # noqa: E402
from lattice.plugins.broker import Broker  # noqa: E402
from lattice.plugins.host import HostServices  # noqa: E402
from lattice.plugins.loader import load_bundle  # noqa: E402
from lattice.plugins.ratelimits import HostRateLimits, parse_limits  # noqa: E402
from lattice.plugins.trust import TrustPolicy, Verifier  # noqa: E402
from lattice.services.kv import SqlKV  # noqa: E402
from lattice.services.logs import SqlPluginLogs  # noqa: E402
from lattice.store.db import Database  # noqa: E402
from lattice.store.migrate import upgrade  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = Database(f"sqlite:///{root / 'bench.db'}")
        upgrade(db)
        kv = SqlKV(db, max_value_bytes=1 << 20)
        kv.put("plugin:bench.kv", "greeting", b"hello world")
        trust = write_trust(root / "trust.json", allow_unsigned=True)
        plugin = load_bundle(
            make_bundle(root / "plugins", id="bench.kv", signed=False),
            Verifier(TrustPolicy.from_file(trust)),
        )
        audit = AuditLog(db, key=AuditKey(os.urandom(32)))
        host = HostServices(kv=kv, logs=SqlPluginLogs(db))
        limits = HostRateLimits(parse_limits("kv=100000000/s"))

        def direct() -> float:
            t0 = time.perf_counter()
            for _ in range(args.calls):
                kv.get("plugin:bench.kv", "greeting")
            return time.perf_counter() - t0

        def brokered() -> float:
            buffered = BufferedAudit(audit, interval=0.2)
            broker = Broker(plugin, host, audit=buffered, limits=limits)
            t0 = time.perf_counter()
            for _ in range(args.calls):
                broker.kv_get("greeting")
            buffered.close()  # every decision is in the chain before we stop the clock
            return time.perf_counter() - t0

        direct()  # warm up both paths
        brokered()
        ratios: list[float] = []
        for r in range(args.rounds):
            if r % 2 == 0:
                d, b = direct(), brokered()
            else:
                b, d = brokered(), direct()
            d_rate, b_rate = args.calls / d, args.calls / b
            ratios.append(b_rate / d_rate)
            print(
                f"round {r + 1}: direct {d_rate:8.0f} calls/s  brokered {b_rate:8.0f} calls/s"
                f"  ratio {b_rate / d_rate:.2f}"
            )
        checked = audit.verify()
        db.dispose()

    print(f"audit chain verified: {checked} events")
    print(
        f"brokered / direct: min {min(ratios):.2f}  median {statistics.median(ratios):.2f}"
        f"  max {max(ratios):.2f}  (target >= 0.5)"
    )
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
