"""Every refused host call is audited with its reason, malformed ones included,
and the checks run in order: armed -> capability -> rate limit -> arguments.

The calls go to the brokers of plugins armed by a live server, in the JSON
shape a runner adapter forwards (``Broker.call``); the audit rows are read back
over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lattice.errors import CapabilityDenied, LatticeError, ValidationFailed
from lattice.plugins.broker import METHODS, Broker
from tests.conftest import LiveServer
from tests.plugins.conftest import PluginEnv


@pytest.fixture
def live(penv: PluginEnv) -> Iterator[LiveServer]:
    penv.bundle(id="acme.fetch", type="system", capabilities=("http:egress", "log:write"))
    penv.bundle(id="acme.kv", capabilities=("kv:read", "kv:write", "log:write", "audit:read"))
    penv.bundle(id="acme.quiet", capabilities=("log:write",))
    srv = penv.start()
    admin = srv.admin()
    for pid in ("acme.fetch", "acme.kv", "acme.quiet"):
        for status in ("installed", "active"):
            r = admin.post("/api/plugins/lifecycle", json={"id": pid, "status": status})
            assert r.status_code == 200, r.text
    try:
        yield srv
    finally:
        srv.stop()


def broker(live: LiveServer, pid: str) -> Broker:
    b = live.container.plugins.runtime.broker(pid)
    assert b is not None
    return b


def denials(live: LiveServer, action: str) -> list[dict[str, Any]]:
    live.container.host_audit.flush()
    params = {"action": action, "decision": "deny", "limit": 100}
    return live.admin().get("/api/audit", params=params).json()["events"]  # type: ignore[no-any-return]


def expanded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per refusal: the write-behind sink folds identical ones into a row
    with ``detail.count``."""
    return [e for e in rows for _ in range(e["detail"].get("count", 1))]


def refused(live: LiveServer, pid: str, method: str, params: Any) -> dict[str, Any]:
    """Make the call, expect a refusal, and return its one audit row."""
    known = isinstance(method, str) and method in METHODS
    action = f"plugin.host.{method}" if known else "plugin.host.unknown"
    before = len(denials(live, action))
    with pytest.raises(LatticeError) as info:
        broker(live, pid).call(method, params, correlation_id="cid-refusal")
    rows = denials(live, action)
    assert len(rows) == before + 1, (method, params, info.value)
    row = rows[0]
    assert row["reason"] == info.value.message or row["reason"] in str(info.value)
    assert row["actor"] == f"plugin:{pid}" and row["correlation_id"] == "cid-refusal"
    return row


HTTP = "acme.fetch"
KV = "acme.kv"

CASES: list[tuple[str, str, Any, str]] = [
    (HTTP, "http.do", {"method": "GET", "url": 12345}, "url must be a string"),
    (HTTP, "http.do", {"method": "GET", "url": ["http://x/"]}, "url must be a string"),
    (
        HTTP,
        "http.do",
        {"method": "GET", "url": "http://example.org/?" + "a" * 9000},
        "url is longer than 8192 characters",
    ),
    (HTTP, "http.do", {"method": 7, "url": "http://example.org/"}, "method must be a string"),
    (HTTP, "http.do", {"method": "BREW", "url": "http://example.org/"}, "not allowed"),
    (
        HTTP,
        "http.do",
        {"method": "GET", "url": "http://example.org/", "headers": [["a", "b"]]},
        "headers must be an object",
    ),
    (
        HTTP,
        "http.do",
        {"method": "GET", "url": "http://example.org/", "headers": {"x": 1}},
        "header value must be a string",
    ),
    (
        HTTP,
        "http.do",
        {"method": "GET", "url": "http://example.org/", "body": "text"},
        "body must be bytes",
    ),
    (HTTP, "http.do", {"method": "GET", "url": "http://x/", "proxy": "y"}, "unknown parameter"),
    (HTTP, "http.do", {"method": "GET"}, "missing parameter 'url'"),
    (KV, "kv.get", {"key": b"bytes-key"}, "key must be a string"),
    (KV, "kv.get", {"key": "k", "bucket": 5}, "bucket must be a string"),
    (KV, "kv.get", {"key": "k", "evil": True}, "unknown parameter 'evil'"),
    (KV, "kv.get", {"key": "k", "correlation_id": "forged"}, "unknown parameter"),
    (KV, "kv.get", ["k"], "params must be an object"),
    (KV, "kv.get", {"key": "../escape"}, "must not contain '..'"),
    (KV, "kv.put", {"key": "k", "value": "str, not bytes"}, "value must be bytes"),
    (KV, "kv.list", {"limit": "ten"}, "limit must be an integer"),
    (KV, "kv.list", {"limit": 10**6}, "limit must be an integer"),
    (KV, "kv.list", {"cursor": 3}, "cursor must be a string"),
    (KV, "log.write", {"level": "info", "message": "m", "fields": [1]}, "fields must be"),
    (KV, "log.write", {"level": None, "message": "m"}, "level must be a string"),
    (KV, "audit.query", {"filters": {"sql": "drop"}}, "unknown audit filter"),
    (KV, "audit.query", {"filters": "all"}, "filters must be an object"),
]


@pytest.mark.parametrize(
    ("pid", "method", "params", "reason"),
    CASES,
    ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_a_malformed_call_is_a_deny_event_with_its_reason(
    live: LiveServer, pid: str, method: str, params: Any, reason: str
) -> None:
    row = refused(live, pid, method, params)
    assert reason in row["reason"], row
    assert row["detail"]["capability"]  # the capability the method needs
    assert isinstance(row["target"], str) and len(row["target"]) <= 8192


def test_audit_targets_are_strings_whatever_the_plugin_passed(live: LiveServer) -> None:
    row = refused(live, HTTP, "http.do", {"method": "GET", "url": {"nested": "object"}})
    assert row["target"] == "<dict>"
    row = refused(live, KV, "kv.get", {"key": 42, "bucket": "site"})
    assert row["target"] == "site/<int>"
    long_url = "http://example.org/?" + "a" * 9000
    row = refused(live, HTTP, "http.do", {"method": "GET", "url": long_url})
    assert row["target"] == "http://example.org/?***"  # audited redacted


@pytest.mark.parametrize("method", ["kv.nuke", "", "http.do.extra", 42, None, ["kv.get"]])
def test_unknown_methods_are_denied_and_audited(live: LiveServer, method: Any) -> None:
    row = refused(live, KV, method, {})
    assert row["action"] == "plugin.host.unknown"
    assert row["reason"].startswith("unknown host method")
    assert isinstance(row["target"], str)


def test_capability_is_checked_before_the_arguments(live: LiveServer) -> None:
    # acme.quiet does not hold http:egress: the bad URL is not even looked at
    row = refused(live, "acme.quiet", "http.do", {"method": "GET", "url": 5})
    assert row["reason"] == "capability http:egress not granted by the manifest"
    row = refused(live, "acme.quiet", "kv.get", {"nonsense": 1})
    assert "not granted" in row["reason"]


def test_a_detached_broker_with_bad_arguments_is_denied_as_not_armed(
    live: LiveServer,
) -> None:
    b = broker(live, HTTP)
    r = live.admin().post("/api/plugins/lifecycle", json={"id": HTTP, "status": "disabled"})
    assert r.status_code == 200 and not b.armed
    bad_calls: list[tuple[Any, Any]] = [
        ("http.do", {"method": 1, "url": 2}),
        ("http.do", {"bogus": True}),
        ("http.do", "not an object"),
        ("kv.nuke", {}),
        (12, {}),
    ]
    for method, params in bad_calls:
        with pytest.raises(CapabilityDenied, match="not armed"):
            b.call(method, params)
    rows = denials(live, "plugin.host.")
    mine = expanded([e for e in rows if e["actor"] == f"plugin:{HTTP}"])
    assert len(mine) == len(bad_calls)
    assert all(e["reason"] == "plugin is not armed" for e in mine)


def test_rate_limit_comes_before_argument_checks(penv: PluginEnv) -> None:
    penv.bundle(id="acme.busy", capabilities=("kv:read",))
    live = penv.start(plugin_rate_limits="kv=2/min")
    try:
        admin = live.admin()
        for status in ("installed", "active"):
            admin.post("/api/plugins/lifecycle", json={"id": "acme.busy", "status": status})
        b = broker(live, "acme.busy")
        for _ in range(2):
            with pytest.raises(ValidationFailed, match="key must be a string"):
                b.call("kv.get", {"key": 1})
        with pytest.raises(CapabilityDenied, match="rate limited"):
            b.call("kv.get", {"key": 1})
        reasons = [e["reason"] for e in expanded(denials(live, "plugin.host.kv.get"))]
        assert reasons == ["rate limited", "key must be a string", "key must be a string"]
    finally:
        live.stop()


def test_the_typed_methods_refuse_and_audit_too(live: LiveServer) -> None:
    b = broker(live, KV)
    with pytest.raises(ValidationFailed, match="key must be a string"):
        b.kv_put(b"k", b"v")  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed, match="value must be bytes"):
        b.kv_put("k", "v")  # type: ignore[arg-type]
    reasons = [e["reason"] for e in denials(live, "plugin.host.kv.put")]
    assert reasons == ["value must be bytes", "key must be a string"]


def test_unknown_methods_are_rate_limited_too(penv: PluginEnv) -> None:
    penv.bundle(id="acme.probe", capabilities=("kv:read",))
    live = penv.start(plugin_rate_limits="other=3/min")
    try:
        admin = live.admin()
        for status in ("installed", "active"):
            admin.post("/api/plugins/lifecycle", json={"id": "acme.probe", "status": status})
        b = broker(live, "acme.probe")
        for _ in range(3):
            with pytest.raises(ValidationFailed, match="unknown host method"):
                b.call("probe.x", {})
        with pytest.raises(CapabilityDenied, match="rate limited"):
            b.call("probe.x", {})
        reasons = [e["reason"] for e in expanded(denials(live, "plugin.host.unknown"))]
        assert reasons[0] == "rate limited" and len(reasons) == 4
    finally:
        live.stop()
