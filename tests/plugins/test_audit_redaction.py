"""Secrets in URLs a plugin dials never reach the audit chain, its API or the logs.

A plugin holding ``http:egress`` calls URLs carrying credentials in the userinfo
and in query values, through the real broker of a live server: allowed (a
loopback server the operator opened), refused by the guard (userinfo, an
address not opened, a redirect to one, a malformed URL).  Afterwards the whole
``audit_events`` table, every page of ``/api/audit`` and the server's log
lines are searched for the secrets.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from lattice.core.redact import redact_url
from lattice.errors import LatticeError
from lattice.store.tables import audit_events
from tests.plugins.conftest import PluginEnv
from tests.plugins.test_broker_egress import broker, start

SECRETS = ("SECRET-Q1", "SECRET-Q2", "pass-SECRET-U", "SECRET-R", "SECRET-M", "SECRET-F")


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def remote() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield int(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def test_userinfo_and_query_values_never_reach_the_audit(
    penv: PluginEnv, remote: int, caplog: pytest.LogCaptureFixture
) -> None:
    port = remote
    base = f"http://127.0.0.1:{port}"
    calls = [
        (f"{base}/ok?api_key=SECRET-Q1&x=1#frag-SECRET-F", True),
        (f"{base}/ok?x=1&token=SECRET-Q2", True),
        (f"http://user:pass-SECRET-U@127.0.0.1:{port}/ok?api_key=SECRET-Q1", False),
        (f"http://127.0.0.2:{port}/?api_key=SECRET-Q2", False),  # an address not opened
        (f"{base}/redirect?to=http://127.0.0.2:{port}/?k=SECRET-R", False),
        ("http://admin:SECRET-M@[::1/?q=SECRET-M", False),  # malformed
    ]
    caplog.set_level(logging.DEBUG, logger="lattice")
    live = start(penv, port)
    try:
        b = broker(live, "acme.fetch")
        for url, allowed in calls:
            if allowed:
                assert b.http_do("GET", url)["status"] == 200
            else:
                with pytest.raises(LatticeError):
                    b.http_do("GET", url)
        live.container.host_audit.flush()
        with live.container.db.read() as conn:
            rows = [tuple(r) for r in conn.execute(select(audit_events)).all()]
        admin = live.admin()
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 50} | ({"cursor": cursor} if cursor else {})
            body = admin.get("/api/audit", params=params).json()
            pages.append(str(body))
            cursor = body["next_cursor"]
            if cursor is None:
                break
        http_events = admin.get("/api/audit", params={"action": "plugin.host.http.do"}).json()
    finally:
        live.stop()
    stored = repr(rows)
    # what the server logs (the lattice.* loggers; nothing else has a handler)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("lattice"))
    for secret in SECRETS:
        assert secret not in stored, secret
        assert all(secret not in page for page in pages), secret
        assert secret not in logged, secret
    # what stays says where the call went: host, port, path and the query keys
    targets = {e["target"] for e in http_events["events"]}
    for e in http_events["events"]:
        targets.update(e["detail"].get("targets", {}))  # folded events list them
    assert f"{base}/ok?api_key=***&x=***" in targets
    assert f"{base}/ok?x=***&token=***" in targets
    assert f"http://***@127.0.0.1:{port}/ok?api_key=***" in targets
    assert f"http://127.0.0.2:{port}/?api_key=***" in targets
    assert f"{base}/redirect?to=***" in targets
    assert "<invalid url>" in targets
    assert len(rows) > len(calls)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:pw@h.test:8443/a/b?k=v&flag#x", "https://***@h.test:8443/a/b?k=***&***"),
        ("http://a@b@h.test/", "http://***@h.test/"),  # everything before the last @
        ("http://h.test/?a=1=2&&b=", "http://h.test/?a=***&&b=***"),
        ("HTTP://H.test", "http://H.test"),
        ("http://[::1]:8080/?t=s", "http://[::1]:8080/?t=***"),
        ("http://h.test:pw/", "<invalid url>"),  # "user:pw" without "@": the port is no port
        ("user:pw@h.test/x", "<invalid url>"),  # no authority
        ("http://[::1/?t=s", "<invalid url>"),
        ("", "<invalid url>"),
        ("http://h.test/p\x00?t=s", "http://h.test/p\x00?t=***"),
    ],
)
def test_redact_url_keeps_where_and_masks_what(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_never_raises() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    for value in (None, 12, b"http://u:p@h/", Hostile(), "\ud800://x", "h" * 100_000):
        assert isinstance(redact_url(value), str)
