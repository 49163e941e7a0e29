"""The egress attacks through a running server: a signed plugin's ``http.do``.

A plugin holding ``http:egress`` asks a live server to fetch every loopback
spelling an attacker uses; the operator opened only the loopback server's port,
not its address.  Nothing may reach the listener, and each refusal is audited.
Then two loopback origins: a redirect to the second carries none of the
plugin's credential-like or custom headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lattice.errors import EgressBlocked
from lattice.plugins.broker import Broker
from tests.conftest import LiveServer
from tests.plugins.conftest import PluginEnv, penv  # noqa: F401  (fixture)
from tests.services.test_egress import (
    LOOPBACK_SPELLINGS,
    PRIVATE_HEADERS,
    SAFE_HEADERS,
    LocalServer,
)


@pytest.fixture
def origin() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def second() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


def start(env: PluginEnv, *ports: int, cidrs: str) -> tuple[LiveServer, Broker]:
    env.bundle(id="acme.fetch", type="system", capabilities=("http:egress",))
    live = env.start(
        egress_allow_cidrs=cidrs, egress_allow_ports=",".join(str(p) for p in (80, 443, *ports))
    )
    admin = live.admin()
    for status in ("installed", "active"):
        r = admin.post("/api/plugins/lifecycle", json={"id": "acme.fetch", "status": status})
        assert r.status_code == 200, r.text
    broker = live.container.plugins.runtime.broker("acme.fetch")
    assert broker is not None
    return live, broker


def denials(live: LiveServer) -> list[dict[str, Any]]:
    live.container.host_audit.flush()
    params = {"action": "plugin.host.http.do", "decision": "deny", "limit": 500}
    events: list[dict[str, Any]] = live.admin().get("/api/audit", params=params).json()["events"]
    return events


def test_no_loopback_spelling_reaches_the_listener(
    penv: PluginEnv,  # noqa: F811
    origin: LocalServer,
) -> None:
    live, broker = start(penv, origin.port, cidrs="")
    try:
        urls = [f"http://{host}:{origin.port}/" for host, _ in LOOPBACK_SPELLINGS]
        urls.append("http://[::ffff:0:7f00:1]/")  # the form that was dialled, as reported
        for url in urls:
            with pytest.raises(EgressBlocked) as info:
                broker.http_do("GET", url)
            assert info.value.category in {"address", "url", "dns"}, url
        assert origin.hits == [] and origin.accepted == 0
        # identical refusals are folded into one row with a count and its targets
        assert sum(e["detail"].get("count", 1) for e in denials(live)) == len(urls)
    finally:
        live.stop()


def test_credentials_and_custom_headers_stay_with_their_origin(
    penv: PluginEnv,  # noqa: F811
    origin: LocalServer,
    second: LocalServer,
) -> None:
    live, broker = start(penv, origin.port, second.port, cidrs="127.0.0.1/32")
    try:
        origin.redirect("/same", "/there", status=307)
        origin.redirect("/cross", second.url("/there"), status=307)
        headers = {**PRIVATE_HEADERS, **SAFE_HEADERS}
        assert broker.http_do("GET", origin.url("/same"), headers)["status"] == 200
        kept = origin.hits[1].headers
        assert all(kept[name.lower()] == value for name, value in headers.items())
        assert broker.http_do("GET", origin.url("/cross"), headers)["status"] == 200
        (landed,) = second.hits
        assert not {name.lower() for name in PRIVATE_HEADERS} & set(landed.headers)
        assert all(landed.headers[name.lower()] == v for name, v in SAFE_HEADERS.items())
    finally:
        live.stop()
