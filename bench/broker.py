"""Brokered kv.get vs direct KV service calls, in one process and one run.

    python3 bench/broker.py [--calls N] [--runs R]

The broker path does everything a plugin's host call does: capability check,
rate-limit bucket, key validation, the KV read, and the audit event (queued
to the write-behind buffer, flushed in batches).  Target: brokered ≥ 0.5 of
direct.  The buffer is flushed and closed inside the timed region, so the
figure includes writing every audit event to the chain.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--runs", type=int, default=3)
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
        audit = AuditLog(db)
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

        direct_best = min(direct() for _ in range(args.runs))
        broker_best = min(brokered() for _ in range(args.runs))
        checked = audit.verify()
        db.dispose()

    d_rate = args.calls / direct_best
    b_rate = args.calls / broker_best
    print(f"direct KV get:     {d_rate:10.0f} calls/s")
    print(f"brokered kv.get:   {b_rate:10.0f} calls/s (audit chain verified: {checked} events)")
    print(f"ratio:             {b_rate / d_rate:10.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
