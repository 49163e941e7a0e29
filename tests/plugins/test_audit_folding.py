"""An anonymous flood on a signed worker bundle costs audit rows per window, not per request.

Every request to the bundle reads KV through its broker; past the plugin's KV
rate limit each read is a ``rate limited`` denial.  The identical decisions
are folded by the write-behind buffer, and their counts add up to exactly one
decision per request.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
from sqlalchemy import func, select

from lattice.store.tables import audit_events
from tests.plugins.conftest import PluginEnv
from tests.plugins.test_worker_bundles import set_status

REQUESTS = 2000
THREADS = 6
FLUSH_INTERVAL = 0.2  # BufferedAudit's default, as the server builds it


def test_a_flood_of_rate_limited_reads_is_folded(penv: PluginEnv) -> None:
    penv.bundle(
        id="acme.page",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route", "kv:read"),
        artifact=b"page {{kv:site/title}}",
    )
    live = penv.start(plugin_rate_limits="kv=20/min")
    try:
        live.admin().put("/api/kv/site/title", content=b"Fleet")
        set_status(live, "acme.page", "installed")
        set_status(live, "acme.page", "active")
        live.container.host_audit.flush()
        with live.container.db.read() as conn:
            before = conn.execute(select(func.max(audit_events.c.seq))).scalar_one()
        statuses: Counter[int] = Counter()
        lock = threading.Lock()

        def flood(n: int) -> None:
            with httpx.Client(base_url=live.url, timeout=60) as anon:
                for i in range(n, REQUESTS, THREADS):
                    code = anon.get(f"/w/acme.page/p{i}").status_code
                    with lock:
                        statuses[code] += 1

        started = time.monotonic()
        workers = [threading.Thread(target=flood, args=(n,)) for n in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        live.container.host_audit.flush()
        elapsed = time.monotonic() - started
        with live.container.db.read() as conn:
            rows = conn.execute(
                select(audit_events).where(
                    audit_events.c.seq > before, audit_events.c.action == "plugin.host.kv.get"
                )
            ).all()
    finally:
        live.stop()
    assert statuses == {200: REQUESTS}  # every request rendered (a denied read is empty)
    decisions: Counter[tuple[str, str]] = Counter()
    for r in rows:
        detail = json.loads(r.detail)
        n = detail.get("count", 1)
        decisions[(r.decision, r.reason)] += n
        assert r.actor == "plugin:acme.page" and r.target == "site/title"
        assert detail["capability"] == "kv:read" and r.correlation_id
        if n > 1:
            assert detail["targets"] == {"site/title": n} and detail["targets_unlisted"] == 0
    # who, what and how many: one decision per request, none lost, none doubled
    assert sum(decisions.values()) == REQUESTS
    assert set(decisions) == {("allow", ""), ("deny", "rate limited")}
    assert decisions[("allow", "")] >= 20
    # and the flood cost rows per flush window (two kinds of decision), not per request
    assert len(rows) <= 2 * (elapsed / FLUSH_INTERVAL + 2)
    assert len(rows) < REQUESTS / 10
