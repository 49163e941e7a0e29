from __future__ import annotations

import pytest

from lattice.errors import CapabilityError, ManifestError
from lattice.plugins.capabilities import (
    CAPABILITIES,
    PLUGIN_TYPES,
    Risk,
    allowed_types,
    check_capabilities,
    host_risk,
    needs_signature,
    risk_of,
)

READ = {"audit:read", "kv:read", "monitor:read", "node:read", "static:read", "task:read"}
WRITE = {"kv:write", "log:write", "notify:send", "worker:route", "http:egress"}
HOST = {
    "ddns:admin",
    "monitor:admin",
    "network:plan",
    "network:apply",
    "node:admin",
    "static:write",
    "task:run",
    "tunnel:admin",
}


def test_table_is_exactly_the_seed_list_with_risks() -> None:
    assert set(CAPABILITIES) == READ | WRITE | HOST
    assert len(CAPABILITIES) == 19
    for names, risk in ((READ, Risk.READ), (WRITE, Risk.WRITE), (HOST, Risk.HOST)):
        assert {n for n in names if risk_of(n) is risk} == names
    assert PLUGIN_TYPES == ("system", "wasm", "worker")


def test_tiers() -> None:
    for name in CAPABILITIES:
        check_capabilities("system", [name])
    for name in READ | WRITE:
        check_capabilities("wasm", [name])
    assert {n for n in CAPABILITIES if "worker" in allowed_types(n)} == {
        "kv:read",
        "static:read",
        "worker:route",
    }


@pytest.mark.parametrize("cap", sorted(HOST))
def test_wasm_never_holds_host_risk(cap: str) -> None:
    with pytest.raises(
        CapabilityError, match=rf"'{cap}' \(host risk\) is not allowed for type 'wasm'"
    ):
        check_capabilities("wasm", [cap])


@pytest.mark.parametrize("cap", ["kv:write", "audit:read", "http:egress", "task:run"])
def test_worker_holds_only_its_three(cap: str) -> None:
    with pytest.raises(CapabilityError, match=rf"'{cap}' .* not allowed for type 'worker'") as ei:
        check_capabilities("worker", ["kv:read", cap])
    assert ei.value.capability == cap


def test_unknown_and_duplicate_capabilities() -> None:
    with pytest.raises(CapabilityError, match=r"unknown capability 'fs:write'") as ei:
        check_capabilities("system", ["kv:read", "fs:write"])
    assert ei.value.capability == "fs:write"
    with pytest.raises(CapabilityError, match=r"duplicate capability 'kv:read'"):
        check_capabilities("system", ["kv:read", "kv:write", "kv:read"])
    with pytest.raises(CapabilityError, match=r"unknown capability 'KV:READ'"):
        risk_of("KV:READ")


def test_unknown_type() -> None:
    with pytest.raises(ManifestError, match=r"unknown plugin type 'native'"):
        check_capabilities("native", ["kv:read"])


def test_signature_and_host_helpers() -> None:
    assert needs_signature(["kv:read", "http:egress"]) == ("http:egress",)
    assert needs_signature(["kv:read"]) == ()
    assert host_risk(["kv:read", "task:run", "node:admin"]) == ("task:run", "node:admin")
    with pytest.raises(CapabilityError, match="unknown capability"):
        needs_signature(["nope"])


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        CAPABILITIES["fs:write"] = CAPABILITIES["kv:read"]  # type: ignore[index]
