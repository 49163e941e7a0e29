"""Foundation: the audit chain's append against the physical floor, and audit filters at scale.

1. **Append.**  ``AuditLog.append`` (keyed: canonical JSON, SHA-256 chain hash,
   HMAC per row, one committed transaction per event) on a fresh SQLite database
   migrated with ``upgrade``, against the floor: the stdlib ``sqlite3`` module
   inserting the *same rows* (read back from the first database, untimed) into
   a second database migrated the same way, with the pragmas ``store/db.py``
   sets (WAL, ``synchronous=NORMAL``, ``foreign_keys``, ``busy_timeout``), one
   autocommit ``INSERT`` per row (one committed transaction each, the statement
   prepared once).  Rounds alternate which side runs first; the ratio is
   audit rows/s over plain rows/s per round.  Target: >= 0.5.

2. **Filters at scale.**  Logs of 10k, 100k and 1M events (20 actors, 1000
   targets, 5 % denials; a noisy plugin doing 4 % of the events to one hot
   target, half of them denied; one rare target with 5 events at the start)
   are built by bulk insert of *valid* rows: the real chain, hashes and MACs
   computed by the same code as ``append``, written with ``executemany`` in
   large transactions (a million single appends would take several minutes
   and measure nothing new).  ``AuditLog.query`` then fetches the newest 100
   matches of each filter; rounds alternate over the three sizes, each
   timing is the median of ``--reps`` queries, and the ratio 1M / 10k is
   reported per filter (min / median / max over rounds).  Target: flat (<= 3).

    python3 bench/foundation.py [--rows 1000] [--rounds 9] [--sizes 10000,100000,1000000]
                                [--filter-rounds 5] [--reps 15] [--skip-append] [--skip-filters]

Everything runs in a temporary directory.  ``/proc/loadavg`` is printed
before and after: the machine is shared, so compare ratios, not rates.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lattice.core.audit import _ROW_ORDER, GENESIS, AuditLog, AuditQuery, PendingEvent
from lattice.core.auditseal import AuditKey
from lattice.store.clock import iso
from lattice.store.db import Database
from lattice.store.migrate import upgrade

INSERT = (
    f"INSERT INTO audit_events ({', '.join(_ROW_ORDER)}) "
    f"VALUES ({', '.join('?' * len(_ROW_ORDER))})"
)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def spread(values: list[float]) -> str:
    return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"


def migrated(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    return db


def plain_connection(path: Path) -> sqlite3.Connection:
    """A stdlib connection set up like ``store/db.py`` sets up its own."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


# -- 1. append vs the floor ----------------------------------------------------------------


def bench_append(rows: int, rounds: int, workdir: Path) -> list[float]:
    key = AuditKey(os.urandom(32))
    chained = migrated(workdir / "append-chain.db")
    log = AuditLog(chained, key=key)
    plain_db = migrated(workdir / "append-plain.db")
    plain_db.dispose()
    plain = plain_connection(workdir / "append-plain.db")
    rng = random.Random(1)
    done = 0

    def audit_round() -> float:
        nonlocal done
        started = time.perf_counter()
        for i in range(done, done + rows):
            log.append(
                actor=f"user:u{rng.randrange(20)}/token:abcdefabcdef",
                action="kv.put",
                target=f"bucket/key-{rng.randrange(1000)}",
                detail={"size": i},
            )
        elapsed = time.perf_counter() - started
        done += rows
        return rows / elapsed

    def written(first: int, last: int) -> list[tuple[Any, ...]]:
        with chained.read() as conn:
            return [
                tuple(r)
                for r in conn.exec_driver_sql(
                    f"SELECT {', '.join(_ROW_ORDER)} FROM audit_events "
                    "WHERE seq > ? AND seq <= ? ORDER BY seq",
                    (first, last),
                )
            ]

    def plain_round(batch: list[tuple[Any, ...]]) -> float:
        started = time.perf_counter()
        for row in batch:
            plain.execute(INSERT, row)
        return len(batch) / (time.perf_counter() - started)

    audit_round()  # warm-up; its rows are the first the plain side inserts
    pending = written(0, done)
    ratios: list[float] = []
    for r in range(rounds):
        if r % 2 == 0:
            a = audit_round()
            p = plain_round(pending)
        else:
            p = plain_round(pending)
            a = audit_round()
        pending = written(done - rows, done)
        ratios.append(a / p)
        print(f"  round {r + 1}: audit {a:7.0f} rows/s  plain {p:7.0f} rows/s  ratio {a / p:.2f}")
    checked = log.verify()
    print(f"  audit chain verified: {checked} events")
    plain.close()
    chained.dispose()
    return ratios


# -- 2. filters at scale -------------------------------------------------------------------

ACTORS = [f"user:u{i}" if i % 2 else f"plugin:p{i}" for i in range(20)]
TARGETS = [f"bucket/key-{i}" for i in range(1000)]
ACTIONS = ["kv.put", "kv.get", "plugin.host.kv_get", "plugin.status", "token.create"]
RARE = "rare/target"
NOISY, HOT = "plugin:noisy", "bucket/hot"  # 4 % of events, half of them denied

# every filter fills its page of 100 at every size (so the sizes do the same
# work), except the rare target, which must find its 5 events and prove there
# are no more
FILTERS: dict[str, AuditQuery] = {
    "target": AuditQuery(target=HOT),
    "target, next page": AuditQuery(target=HOT),  # cursor filled in per size
    "rare target (5 events, oldest)": AuditQuery(target=RARE),
    "actor": AuditQuery(actor="user:u3"),
    "decision=deny": AuditQuery(decision="deny"),
    "target + deny": AuditQuery(target=HOT, decision="deny"),
    "actor + deny": AuditQuery(actor=NOISY, decision="deny"),
}


class Builder:
    """Appends valid chained, keyed rows in bulk (same hashing as ``append``)."""

    def __init__(self, path: Path, key: AuditKey) -> None:
        migrated(path).dispose()
        self.conn = plain_connection(path)
        self.key = key
        self.seq = 0
        self.prev = GENESIS
        self.rng = random.Random(7)
        self.start = datetime(2026, 1, 1, tzinfo=UTC)

    def grow_to(self, size: int) -> None:
        batch: list[tuple[Any, ...]] = []
        while self.seq < size:
            self.seq += 1
            if self.seq <= 5:
                actor, target, decision = "user:u0", RARE, "allow"
            elif self.rng.random() < 0.04:
                actor, target = NOISY, HOT
                decision = "deny" if self.rng.random() < 0.5 else "allow"
            else:
                actor = self.rng.choice(ACTORS)
                target = self.rng.choice(TARGETS)
                decision = "deny" if self.rng.random() < 0.05 else "allow"
            pending = PendingEvent(
                actor=actor,
                action=self.rng.choice(ACTIONS),
                target=target,
                decision=decision,
                reason="" if decision == "allow" else "not granted",
                detail={"n": self.seq % 97},
            )
            ts = iso(self.start + timedelta(milliseconds=self.seq))
            raw = hashlib.sha256(bytes.fromhex(self.prev) + pending.event_bytes(self.seq, ts))
            digest = raw.hexdigest()
            base, detail_text = pending.normalized
            batch.append(
                (self.seq, ts, base["actor"], base["action"], base["target"], base["decision"])
                + (base["reason"], None, detail_text, self.prev, digest)
                + (self.key.row_mac_raw(raw.digest()),)
            )
            self.prev = digest
            if len(batch) >= 20_000 or self.seq == size:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany(INSERT, batch)
                self.conn.execute("COMMIT")
                batch = []

    def snapshot(self, path: Path) -> None:
        self.conn.execute("VACUUM INTO ?", (str(path),))


def time_query(log: AuditLog, q: AuditQuery, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        log.query(q)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def plan_of(db: Database, q: AuditQuery) -> str:
    from lattice.core.audit import query_statement

    sql = str(
        query_statement(q).compile(
            dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    with db.read() as conn:
        return "; ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))


def bench_filters(sizes: list[int], rounds: int, reps: int, workdir: Path) -> None:
    key = AuditKey(os.urandom(32))
    builder = Builder(workdir / "grow.db", key)
    logs: dict[int, tuple[Database, AuditLog]] = {}
    for size in sorted(sizes):
        started = time.perf_counter()
        builder.grow_to(size)
        path = workdir / f"audit-{size}.db"
        builder.snapshot(path)
        db = Database(f"sqlite:///{path}")
        logs[size] = (db, AuditLog(db, key=key))
        print(f"  built {size:>8} events in {time.perf_counter() - started:6.1f} s (bulk insert)")
    builder.conn.close()
    smallest, largest = min(sizes), max(sizes)
    # every built log is a valid chain; check the smallest fully (the big ones take long)
    print(f"  {smallest}-event log verifies: {logs[smallest][1].verify()} events")

    queries: dict[int, dict[str, AuditQuery]] = {}
    for size, (_db, log) in logs.items():
        per = dict(FILTERS)
        _page, cursor = log.query(per["target"])
        per["target, next page"] = AuditQuery(target=HOT, cursor=cursor)
        queries[size] = per
    db_small = logs[smallest][0]
    for name, q in FILTERS.items():
        print(f"  plan {name:32s} {plan_of(db_small, q)}")

    timings: dict[str, dict[int, list[float]]] = {n: {s: [] for s in sizes} for n in FILTERS}
    for r in range(rounds):
        order = sorted(sizes) if r % 2 == 0 else sorted(sizes, reverse=True)
        for size in order:
            log = logs[size][1]
            for name, q in queries[size].items():
                timings[name][size].append(time_query(log, q, reps))

    header = "".join(f"{s:>10}" for s in sorted(sizes))
    print(f"\n  {'filter (newest 100)':32s}{header}   ratio {largest}/{smallest}")
    for name in FILTERS:
        cells = "".join(
            f"{statistics.median(timings[name][s]) * 1000:8.2f}ms" for s in sorted(sizes)
        )
        ratios = [
            b / a for a, b in zip(timings[name][smallest], timings[name][largest], strict=True)
        ]
        print(f"  {name:32s}{cells}   {spread(ratios)}")
    for db, _log in logs.values():
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="appends per round per side")
    parser.add_argument("--rounds", type=int, default=9, help="alternating append rounds")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="log sizes to filter")
    parser.add_argument("--filter-rounds", type=int, default=5, help="rounds over the sizes")
    parser.add_argument("--reps", type=int, default=15, help="queries per timing (median)")
    parser.add_argument("--skip-append", action="store_true")
    parser.add_argument("--skip-filters", action="store_true")
    args = parser.parse_args()

    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
    )
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_append:
            print(f"\n1. audit append vs stdlib sqlite3 insert ({args.rows} rows per round)")
            ratios = bench_append(args.rows, args.rounds, workdir)
            print(
                f"  audit/plain ratio over {args.rounds} rounds: {spread(ratios)} (target >= 0.5)"
            )
        if not args.skip_filters:
            sizes = [int(s) for s in args.sizes.split(",")]
            print(f"\n2. audit filters at {', '.join(map(str, sizes))} events")
            bench_filters(sizes, args.filter_rounds, args.reps, workdir)
    print(f"\nload average after: {loadavg()}")


if __name__ == "__main__":
    main()
