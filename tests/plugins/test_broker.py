"""The capability broker: checks, audits, isolation, bounds, rate limits."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lattice.core.audit import AuditLog, AuditQuery
from lattice.core.auditbuffer import BufferedAudit
from lattice.core.auditseal import AuditKey
from lattice.errors import CapabilityDenied, HostUnavailable, ValidationFailed, VerificationError
from lattice.plugins.broker import METHODS, Broker
from lattice.plugins.capabilities import CAPABILITIES
from lattice.plugins.host import HostServices
from lattice.plugins.loader import LoadedPlugin, load_bundle
from lattice.plugins.ratelimits import HostRateLimits, parse_limits
from lattice.plugins.trust import TrustPolicy, Verifier
from lattice.services.kv import SqlKV
from lattice.services.logs import SqlPluginLogs
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from tests.plugins.bundles import make_bundle, make_publisher

SRC = Path(__file__).resolve().parents[2] / "src" / "lattice"


class CountingKV(SqlKV):
    """The real KV service, counting the calls that reach it."""

    calls = 0

    def get(self, bucket: str, key: str) -> bytes | None:
        self.calls += 1
        return super().get(bucket, key)

    def put(self, bucket: str, key: str, value: bytes) -> None:
        self.calls += 1
        super().put(bucket, key, value)


class Env:
    def __init__(self, db: Database, tmp: Path) -> None:
        self.db = db
        self.audit = AuditLog(db, key=AuditKey(os.urandom(32)))
        self.kv = CountingKV(db, max_value_bytes=1024)
        self.logs = SqlPluginLogs(db)
        self.host = HostServices(kv=self.kv, logs=self.logs, audit_reader=self.audit)
        self.pub = make_publisher("acme.dev")
        self.verifier = Verifier(
            TrustPolicy(trusted_publishers={self.pub.id: _raw(self.pub.public_b64)})
        )
        self.tmp = tmp
        self.limits = HostRateLimits()

    def plugin(self, pid: str, caps: tuple[str, ...], type: str = "wasm") -> LoadedPlugin:
        path = make_bundle(
            self.tmp, id=pid, capabilities=caps, type=type, key=self.pub.key, publisher=self.pub.id
        )
        return load_bundle(path, self.verifier)

    def broker(self, plugin: LoadedPlugin, **kw: Any) -> Broker:
        return Broker(plugin, self.host, audit=self.audit, limits=kw.get("limits", self.limits))

    def events(self, **filters: Any) -> list[Any]:
        return self.audit.query(AuditQuery(limit=500, descending=False, **filters))[0]


def _raw(b64: str) -> bytes:
    import base64

    return base64.b64decode(b64)


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[Env]:
    db = Database(db_url)
    upgrade(db)
    yield Env(db, tmp_path)
    db.dispose()


def test_every_capability_has_a_named_host_method() -> None:
    assert set(METHODS.values()) == set(CAPABILITIES)


def test_allowed_call_is_audited_with_capability_and_correlation(env: Env) -> None:
    b = env.broker(env.plugin("p.one", ("kv:read", "kv:write")))
    b.kv_put("greeting", b"hi", correlation_id="req-123")
    assert b.kv_get("greeting") == b"hi"
    ev = env.events(action_prefix="plugin.host.kv.put")[0]
    assert ev.decision == "allow" and ev.actor == "plugin:p.one"
    assert ev.detail == {"plugin_id": "p.one", "capability": "kv:write"}
    assert ev.correlation_id == "req-123"


def test_denied_call_is_audited_and_never_reaches_the_service(env: Env) -> None:
    b = env.broker(env.plugin("p.ro", ("kv:read",)))
    with pytest.raises(CapabilityDenied, match="kv:write") as info:
        b.kv_put("k", b"v")
    assert info.value.capability == "kv:write"
    assert env.kv.calls == 0
    ev = env.events(action_prefix="plugin.host.kv.put")[0]
    assert ev.decision == "deny" and "not granted" in ev.reason
    with pytest.raises(CapabilityDenied):
        b.log_write("info", "hello")
    assert env.logs.list("p.ro")[0] == []


def test_kv_is_confined_to_the_plugins_own_bucket(env: Env) -> None:
    a = env.broker(env.plugin("p.a", ("kv:read", "kv:write")))
    b = env.broker(env.plugin("p.b", ("kv:read", "kv:write")))
    a.kv_put("secret", b"from-a")
    assert b.kv_get("secret") is None
    assert env.kv.get("plugin:p.a", "secret") == b"from-a"
    for smuggle in ("../p.b/secret", "..", "x\x00y", "a\\b"):
        with pytest.raises(ValidationFailed):
            a.kv_put(smuggle, b"x")
    b.kv_put("plugin:p.a/secret", b"mine")  # just a key name inside p.b's bucket
    assert a.kv_get("secret") == b"from-a"
    assert b.kv_list("plugin:")[0] == ["plugin:p.a/secret"]


def test_values_are_copied_in_and_out(env: Env) -> None:
    b = env.broker(env.plugin("p.copy", ("kv:read", "kv:write", "log:write")))
    value = bytearray(b"mutable")
    b.kv_put("k", value)  # type: ignore[arg-type]
    value[:] = b"changed"
    assert b.kv_get("k") == b"mutable"
    fields = {"n": 1}
    b.log_write("info", "m", fields)
    fields["n"] = 2
    assert env.logs.list("p.copy")[0][0].fields == {"n": 1}


def test_log_bounds(env: Env) -> None:
    b = env.broker(env.plugin("p.log", ("log:write",)))
    b.log_write("warn", "disk almost full", {"pct": 93, "mount": "/"})
    line = env.logs.list("p.log")[0][0]
    assert line.plugin_id == "p.log" and line.level == "warn" and line.fields["pct"] == 93
    bad: list[tuple[str, str, dict[str, Any]]] = [
        ("loud", "x", {}),
        ("info", "x" * 5000, {}),
        ("info", "x", {f"k{i}": i for i in range(17)}),
        ("info", "x", {"k": "v" * 2000}),
        ("info", "x", {"k": {"nested": 1}}),
        ("info", "x", {"k" * 65: 1}),
    ]
    for level, message, fields in bad:
        with pytest.raises(ValidationFailed):
            b.log_write(level, message, fields)
    denials = env.events(action_prefix="plugin.host.log.write", decision="deny")
    assert len(denials) == len(bad)  # every refusal is a deny in the chain
    assert len(env.logs.list("p.log")[0]) == 1


def test_unbound_capabilities_say_host_service_unavailable(env: Env) -> None:
    b = env.broker(env.plugin("p.sys", ("node:read", "task:run"), type="system"))
    with pytest.raises(HostUnavailable, match="host service unavailable"):
        b.unbound("node.read")
    with pytest.raises(CapabilityDenied):
        b.unbound("monitor.read")  # not held: denied before anything else
    with pytest.raises(HostUnavailable):
        b.call("task.run", {})
    assert env.events(action_prefix="plugin.host.node.read", decision="deny")


def test_detached_broker_denies_everything(env: Env) -> None:
    b = env.broker(env.plugin("p.off", ("kv:read",)))
    b.detach()
    with pytest.raises(CapabilityDenied, match="not armed"):
        b.kv_get("k")
    assert env.kv.calls == 0


def test_rate_limit_denies_and_audits_without_raising_into_the_server(env: Env) -> None:
    limits = HostRateLimits(parse_limits("kv=3/min"))
    b = env.broker(env.plugin("p.fast", ("kv:read",)), limits=limits)
    for _ in range(3):
        b.kv_get("k")
    with pytest.raises(CapabilityDenied, match="rate limited"):
        b.kv_get("k")
    assert env.kv.calls == 3
    assert env.events(decision="deny")[-1].reason == "rate limited"
    other = env.broker(env.plugin("p.slow", ("kv:read",)), limits=limits)
    other.kv_get("k")  # limits are per plugin


def test_bad_rate_limit_settings_are_config_errors() -> None:
    from lattice.errors import ConfigError

    for text in ("kv=fast", "warp=1/s", "kv=1/fortnight", "kv=0/s"):
        with pytest.raises(ConfigError, match="LATTICE_PLUGIN_RATE_LIMITS"):
            parse_limits(text)


def test_broker_refuses_a_capability_set_that_differs(env: Env) -> None:
    plugin = env.plugin("p.tamper", ("kv:read",))
    object.__setattr__(plugin.verification, "capabilities", {"kv:write": "write"})
    with pytest.raises(VerificationError, match="capability set"):
        env.broker(plugin)


def test_audit_query_is_bounded_and_read_only(env: Env) -> None:
    b = env.broker(env.plugin("p.aud", ("audit:read",)))
    page = b.audit_query({"limit": 5})
    assert len(page["events"]) <= 5
    with pytest.raises(ValidationFailed):
        b.audit_query({"limit": 10_000})
    with pytest.raises(ValidationFailed, match="unknown audit filter"):
        b.audit_query({"sql": "drop table"})


def test_buffered_host_audit_lands_within_a_second_and_on_close(env: Env) -> None:
    import time

    buffered = BufferedAudit(env.audit, interval=0.2)
    b = Broker(env.plugin("p.buf", ("kv:read",)), env.host, audit=buffered, limits=env.limits)
    b.kv_get("k")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not env.events(action_prefix="plugin.host.kv.get"):
        time.sleep(0.02)
    assert env.events(action_prefix="plugin.host.kv.get")
    for _ in range(50):
        b.kv_get("k")
    buffered.close()
    events = env.events(action_prefix="plugin.host.kv.get")  # identical calls fold
    assert sum(e.detail.get("count", 1) for e in events) == 51
    assert env.audit.verify() >= len(events)


def test_runners_never_import_services_store_or_api() -> None:
    for path in (SRC / "plugins" / "runners").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(
                    ("lattice.services", "lattice.store", "lattice.api", "lattice.core.audit")
                ), f"{path.name} imports {name}"


def test_broker_exposes_no_service_handles(env: Env) -> None:
    b = env.broker(env.plugin("p.peek", ("kv:read",)))
    public = [a for a in dir(b) if not a.startswith("_")]
    for attr in public:
        value = getattr(b, attr)
        assert not isinstance(value, HostServices | SqlKV | SqlPluginLogs | AuditLog), attr
    assert "HostServices" not in repr(b)
