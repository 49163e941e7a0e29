"""Login limits from outside: forwarded headers, lockout from another address,
limits that survive a restart, and ``lattice admin unlock``."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx

from lattice.config import Settings
from tests.conftest import ADMIN_PASSWORD, LiveServer, start_server

WRONG = {"username": "admin", "password": "wrong-password-1"}
RIGHT = {"username": "admin", "password": ADMIN_PASSWORD}


def from_address(live: LiveServer, addr: str) -> httpx.Client:
    """A client whose connections really come from ``addr`` (any 127/8 is loopback)."""
    return live.client(transport=httpx.HTTPTransport(local_address=addr))


def deny_actors(live: LiveServer) -> list[str]:
    live.container.host_audit.flush()  # rate-limited refusals are written behind
    r = live.admin().get("/api/audit", params={"action": "auth.login", "decision": "deny"})
    return [e["actor"] for e in r.json()["events"]]


def test_wrong_passwords_from_another_address_do_not_lock_the_user_out(live: LiveServer) -> None:
    attacker = from_address(live, "127.0.0.2")
    codes = [attacker.post("/api/login", json=WRONG).status_code for _ in range(12)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    assert attacker.post("/api/login", json=RIGHT).status_code == 429  # limited *there*
    owner = from_address(live, "127.0.0.1")
    assert owner.post("/api/login", json=RIGHT).status_code == 200
    assert set(deny_actors(live)) == {"anon@127.0.0.2"}


def test_one_address_is_still_limited_across_user_names(live: LiveServer) -> None:
    attacker = from_address(live, "127.0.0.3")
    for i in range(20):
        body = {"username": f"user{i}", "password": "wrong-password-1"}
        assert attacker.post("/api/login", json=body).status_code == 401
    assert attacker.post("/api/login", json=RIGHT).status_code == 429
    assert from_address(live, "127.0.0.4").post("/api/login", json=RIGHT).status_code == 200


def _cli(*args: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LATTICE_DATA_DIR": str(settings.data_dir),
        "LATTICE_DATABASE_URL": str(settings.database_url),
    }
    return subprocess.run(
        [sys.executable, "-m", "lattice", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_failures_survive_a_restart_until_admin_unlock(settings: Settings) -> None:
    first = start_server(settings)
    try:
        client = first.client()
        for _ in range(5):
            assert client.post("/api/login", json=WRONG).status_code == 401
        assert client.post("/api/login", json=RIGHT).status_code == 429
    finally:
        first.stop()
        first.container.close()
    second = start_server(settings)
    try:
        client = second.client()
        assert client.post("/api/login", json=RIGHT).status_code == 429  # not forgotten
        r = _cli("admin", "unlock", "admin", settings=settings)
        assert r.returncode == 0 and "cleared 5 failed login(s)" in r.stdout, r.stderr
        assert client.post("/api/login", json=RIGHT).status_code == 200
        events = second.admin().get("/api/audit", params={"action": "user.unlock"}).json()
        [event] = events["events"]
        assert event["actor"] == "cli" and event["detail"] == {"failures_cleared": 5}
        ghost = _cli("admin", "unlock", "ghost", settings=settings)
        assert ghost.returncode == 1 and "no user named 'ghost'" in ghost.stderr
    finally:
        second.stop()


def _login(client: httpx.Client, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return client.post("/api/login", json=body, headers=headers)


def test_forwarded_headers_count_for_nothing_by_default(live: LiveServer) -> None:
    client = live.client()
    ok = _login(client, {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}, RIGHT)
    assert ok.status_code == 200
    assert "secure" not in ok.headers["set-cookie"].lower()  # the hop was plain http
    for i in range(5):
        assert _login(client, {"X-Forwarded-For": f"203.0.113.{i}"}, WRONG).status_code == 401
    fresh = {"X-Forwarded-For": "192.0.2.99", "Forwarded": "for=192.0.2.99"}
    assert _login(client, fresh, RIGHT).status_code == 429  # the real peer is limited
    assert set(deny_actors(live)) == {"anon@127.0.0.1"}
    logins = live.admin().get("/api/audit", params={"action": "auth.login", "decision": "allow"})
    assert [e["actor"] for e in logins.json()["events"]] == ["user:admin@127.0.0.1"]


def test_forwarded_headers_count_from_a_trusted_proxy_only(settings_factory: Any) -> None:
    live = start_server(settings_factory(trusted_proxies="127.0.0.1/32"))
    try:
        proxy = from_address(live, "127.0.0.1")
        spoofed_chain = {"X-Forwarded-For": "6.6.6.6, 203.0.113.5"}  # the proxy appended .5
        for _ in range(5):
            assert _login(proxy, spoofed_chain, WRONG).status_code == 401
        assert _login(proxy, {"X-Forwarded-For": "203.0.113.5"}, RIGHT).status_code == 429
        other = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
        ok = _login(proxy, other, RIGHT)
        assert ok.status_code == 200 and "secure" in ok.headers["set-cookie"].lower()
        # a peer that is not the proxy cannot use the header
        direct = from_address(live, "127.0.0.2")
        assert _login(direct, {"X-Forwarded-For": "198.51.100.8"}, WRONG).status_code == 401
        assert deny_actors(live).count("anon@203.0.113.5") == 6
        assert "anon@127.0.0.2" in deny_actors(live)
        assert not [a for a in deny_actors(live) if "6.6.6.6" in a or "198.51.100.8" in a]
    finally:
        live.stop()


def test_a_flood_of_limited_logins_is_folded_with_exact_counts(live: LiveServer) -> None:
    import time

    attacker = from_address(live, "127.0.0.9")
    for _ in range(5):
        assert attacker.post("/api/login", json=WRONG).status_code == 401
    flood = 300
    for _ in range(flood):
        assert attacker.post("/api/login", json=WRONG).status_code == 429

    def limited() -> list[dict[str, Any]]:
        r = live.admin().get(
            "/api/audit", params={"action": "auth.login", "decision": "deny", "limit": 500}
        )
        return [e for e in r.json()["events"] if e["reason"] == "rate limited"]

    deadline = time.monotonic() + 30
    rows = limited()
    while sum(e["detail"].get("count", 1) for e in rows) < flood and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = limited()
    # who, what and how many are all kept, in far fewer rows than attempts
    assert sum(e["detail"].get("count", 1) for e in rows) == flood
    assert len(rows) < flood / 5
    assert {e["actor"] for e in rows} == {"anon@127.0.0.9"}
    assert {e["target"] for e in rows} == {"user:admin"}
