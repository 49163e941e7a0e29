"""http.do through the broker: capability first, then the server's egress guard.

Network rule: the only server here listens on 127.0.0.1; 127.0.0.2 is used as
a destination the operator did not open (it is refused before any dial).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lattice.errors import CapabilityDenied, EgressBlocked, ValidationFailed
from lattice.plugins.broker import Broker
from tests.conftest import LiveServer
from tests.plugins.conftest import PluginEnv


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits.append((self.path, dict(self.headers)))  # type: ignore[attr-defined]
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"remote says hi"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


@pytest.fixture
def remote() -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def start(penv: PluginEnv, port: int, *, open_cidr: bool = True) -> LiveServer:
    penv.bundle(id="acme.fetch", type="system", capabilities=("http:egress", "log:write"))
    penv.bundle(id="acme.nofetch", type="system", capabilities=("log:write",))
    live = penv.start(
        egress_allow_cidrs="127.0.0.1/32" if open_cidr else "",
        egress_allow_ports=f"80,443,{port}",
    )
    admin = live.admin()
    for pid in ("acme.fetch", "acme.nofetch"):
        for status in ("installed", "active"):
            r = admin.post("/api/plugins/lifecycle", json={"id": pid, "status": status})
            assert r.status_code == 200, r.text
    return live


def broker(live: LiveServer, pid: str) -> Broker:
    b = live.container.plugins.runtime.broker(pid)
    assert b is not None
    return b


def host_events(live: LiveServer, decision: str) -> list[dict[str, Any]]:
    live.container.host_audit.flush()
    params = {"action": "plugin.host.http.do", "decision": decision}
    return live.admin().get("/api/audit", params=params).json()["events"]  # type: ignore[no-any-return]


def test_a_plugin_with_egress_reaches_an_opened_address(
    penv: PluginEnv, remote: http.server.ThreadingHTTPServer
) -> None:
    port = remote.server_address[1]
    live = start(penv, port)
    try:
        resp = broker(live, "acme.fetch").http_do("GET", f"http://127.0.0.1:{port}/hello")
        assert resp["status"] == 200 and resp["body"] == b"remote says hi"
        assert host_events(live, "allow")[0]["detail"]["capability"] == "http:egress"
    finally:
        live.stop()


def test_the_capability_is_checked_before_the_guard_dials(
    penv: PluginEnv, remote: http.server.ThreadingHTTPServer
) -> None:
    port = remote.server_address[1]
    live = start(penv, port)
    try:
        with pytest.raises(CapabilityDenied, match="http:egress"):
            broker(live, "acme.nofetch").http_do("GET", f"http://127.0.0.1:{port}/")
        assert remote.hits == []  # type: ignore[attr-defined]
        assert "not granted" in host_events(live, "deny")[0]["reason"]
    finally:
        live.stop()


def test_loopback_is_refused_unless_the_operator_opens_it(
    penv: PluginEnv, remote: http.server.ThreadingHTTPServer
) -> None:
    port = remote.server_address[1]
    live = start(penv, port, open_cidr=False)
    try:
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
            with pytest.raises(EgressBlocked, match="blocked address"):
                broker(live, "acme.fetch").http_do("GET", url)
        assert remote.hits == []  # type: ignore[attr-defined]
        events = host_events(live, "deny")  # identical denials may be folded into one
        assert sum(e["detail"].get("count", 1) for e in events) == 2
        assert all("blocked address" in e["reason"] for e in events)
    finally:
        live.stop()


def test_redirect_to_a_denied_address_is_refused_and_audited(
    penv: PluginEnv, remote: http.server.ThreadingHTTPServer
) -> None:
    port = remote.server_address[1]
    live = start(penv, port)
    try:
        target = f"http://127.0.0.1:{port}/redirect?to=http://127.0.0.2:{port}/secret"
        with pytest.raises(EgressBlocked, match=r"blocked address 127\.0\.0\.2"):
            broker(live, "acme.fetch").http_do("GET", target)
        paths = [p for p, _ in remote.hits]  # type: ignore[attr-defined]
        assert paths == [target.split(str(port), 1)[1]]  # the second hop never left
        assert "127.0.0.2" in host_events(live, "deny")[0]["reason"]
    finally:
        live.stop()


def test_oversized_body_is_refused_before_dialing(
    penv: PluginEnv, remote: http.server.ThreadingHTTPServer
) -> None:
    port = remote.server_address[1]
    live = start(penv, port)
    try:
        with pytest.raises(EgressBlocked, match="size"):
            broker(live, "acme.fetch").http_do(
                "POST", f"http://127.0.0.1:{port}/", body=b"x" * (300 * 1024)
            )
        assert remote.hits == []  # type: ignore[attr-defined]
        assert host_events(live, "deny")[0]["reason"].startswith("egress blocked: size")
    finally:
        live.stop()


def test_per_plugin_allowlist(penv: PluginEnv, remote: http.server.ThreadingHTTPServer) -> None:
    port = remote.server_address[1]
    live = start(penv, port)
    try:
        admin = live.admin()
        r = admin.put("/api/plugins/acme.fetch/egress", json={"allow_hosts": ["localhost"]})
        assert r.status_code == 200 and r.json()["allow_hosts"] == ["localhost"]
        b = broker(live, "acme.fetch")
        assert b.http_do("GET", f"http://localhost:{port}/ok")["status"] == 200
        with pytest.raises(EgressBlocked, match="host not allowed"):
            b.http_do("GET", f"http://127.0.0.1:{port}/ok")
        bad = admin.put("/api/plugins/acme.fetch/egress", json={"allow_hosts": ["*.org"]})
        assert bad.status_code == 400
        assert admin.put("/api/plugins/ghost.x/egress", json={"allow_hosts": []}).status_code == 404
        reader = live.client(live.token("plugin:read"))
        assert (
            reader.put("/api/plugins/acme.fetch/egress", json={"allow_hosts": None}).status_code
            == 403
        )
        assert (
            admin.put("/api/plugins/acme.fetch/egress", json={"allow_hosts": None}).status_code
            == 200
        )
        assert b.http_do("GET", f"http://127.0.0.1:{port}/ok")["status"] == 200
        events = admin.get("/api/audit", params={"action": "plugin.egress"}).json()["events"]
        assert len(events) == 2
    finally:
        live.stop()


def test_http_rate_limit_denies_without_raising_into_the_server(
    penv: PluginEnv, remote: http.server.ThreadingHTTPServer
) -> None:
    port = remote.server_address[1]
    penv.bundle(id="acme.fetch", type="system", capabilities=("http:egress",))
    live = penv.start(
        egress_allow_cidrs="127.0.0.1/32",
        egress_allow_ports=f"80,443,{port}",
        plugin_rate_limits="http=2/min",
    )
    try:
        admin = live.admin()
        for status in ("installed", "active"):
            admin.post("/api/plugins/lifecycle", json={"id": "acme.fetch", "status": status})
        b = broker(live, "acme.fetch")
        b.http_do("GET", f"http://127.0.0.1:{port}/1")
        b.http_do("GET", f"http://127.0.0.1:{port}/2")
        with pytest.raises(CapabilityDenied, match="rate limited"):
            b.http_do("GET", f"http://127.0.0.1:{port}/3")
        assert len(remote.hits) == 2  # type: ignore[attr-defined]
        time.sleep(0.01)
        assert live.client().get("/healthz").status_code == 200
    finally:
        live.stop()


def test_static_grants(penv: PluginEnv) -> None:
    penv.bundle(id="acme.files", type="system", capabilities=("static:read", "static:write"))
    live = penv.start()
    try:
        admin = live.admin()
        for status in ("installed", "active"):
            admin.post("/api/plugins/lifecycle", json={"id": "acme.files", "status": status})
        b = broker(live, "acme.files")
        b.static_write("a.txt", b"own bucket", "text/plain")
        assert b.static_read("a.txt") == (b"own bucket", "text/plain")
        admin.put(
            "/api/static/site/index.html", content=b"<p>", headers={"content-type": "text/html"}
        )
        with pytest.raises(ValidationFailed, match="not granted"):
            b.static_read("index.html", bucket="site")
        r = admin.put(
            "/api/plugins/acme.files/static", json={"buckets": ["site", "plugin:acme.files"]}
        )
        assert r.status_code == 200
        assert b.static_read("index.html", bucket="site") == (b"<p>", "text/html")
        other = admin.put(
            "/api/plugins/acme.files/static", json={"buckets": ["plugin:someone.else"]}
        )
        assert other.status_code == 400
    finally:
        live.stop()
