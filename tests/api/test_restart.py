"""State survives a restart on the same data dir and database."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer, start_server


def test_restart_keeps_users_tokens_kv_static_and_audit(settings_factory: Any) -> None:
    settings = settings_factory()
    first = start_server(settings)
    try:
        token = first.admin_token
        admin = first.admin()
        assert admin.put("/api/kv/app/greeting", content=b"hello").status_code == 200
        r = admin.put(
            "/api/static/site/index.html",
            content=b"<h1>hi</h1>",
            headers={"content-type": "text/html"},
        )
        assert r.status_code == 200
        before = admin.get("/api/audit", params={"limit": 1}).json()["events"][0]["seq"]
    finally:
        first.stop()

    second: LiveServer = start_server(settings)
    try:
        again = second.client(token)
        assert again.get("/api/kv/app/greeting").content == b"hello"
        page = again.get("/api/static/site/index.html")
        assert page.content == b"<h1>hi</h1>" and page.headers["content-type"].startswith(
            "text/html"
        )
        events = again.get("/api/audit", params={"order": "asc", "limit": 500}).json()["events"]
        assert events[-1]["seq"] >= before
        assert second.container.audit.verify() == len(events)
        # the admin was bootstrapped once, not again
        users = [e for e in events if e["action"] == "user.create"]
        assert len(users) == 1
    finally:
        second.stop()
