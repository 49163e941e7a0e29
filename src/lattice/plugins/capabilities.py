"""The one capability table of the plugin platform.

Every capability a plugin may declare is listed here with its risk class and the
plugin types (tiers) allowed to hold it.  The manifest parser, the verifier, the
broker and the API all read this table; nothing else decides what a capability
means.

Risk classes:

* ``read``  - observes server state;
* ``write`` - changes server-owned state or reaches outside (``http:egress``);
* ``host``  - acts on the host or the fleet.

Tiers: ``system`` may hold anything; ``wasm`` may hold read and write risk, never
host risk; ``worker`` may hold only ``kv:read``, ``static:read`` and
``worker:route``.  ``http:egress`` additionally always needs a trusted signature,
whatever the type (see :func:`needs_signature`).

Evolution rule: capabilities are only ever added.  A name, once published, never
changes its meaning or loses a tier; a new capability enters with the narrowest
tier set that works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from lattice.errors import CapabilityError, ManifestError

__all__ = [
    "CAPABILITIES",
    "PLUGIN_TYPES",
    "SIGNATURE_REQUIRED",
    "Capability",
    "Risk",
    "allowed_types",
    "check_capabilities",
    "host_risk",
    "needs_signature",
    "risk_of",
]


class Risk(StrEnum):
    READ = "read"
    WRITE = "write"
    HOST = "host"


PLUGIN_TYPES: tuple[str, ...] = ("system", "wasm", "worker")


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    risk: Risk
    types: frozenset[str]
    #: holding it needs a trusted-publisher signature, whatever the policy flags
    signature_required: bool = False


_ALL = frozenset(PLUGIN_TYPES)
_NO_HOST = frozenset({"system", "wasm"})
_WORKER = frozenset({"system", "wasm", "worker"})
_SYSTEM = frozenset({"system"})


def _table() -> Mapping[str, Capability]:
    rows = [
        Capability("audit:read", Risk.READ, _NO_HOST),
        Capability("kv:read", Risk.READ, _WORKER),
        Capability("monitor:read", Risk.READ, _NO_HOST),
        Capability("node:read", Risk.READ, _NO_HOST),
        Capability("static:read", Risk.READ, _WORKER),
        Capability("task:read", Risk.READ, _NO_HOST),
        Capability("kv:write", Risk.WRITE, _NO_HOST),
        Capability("log:write", Risk.WRITE, _NO_HOST),
        Capability("notify:send", Risk.WRITE, _NO_HOST),
        Capability("worker:route", Risk.WRITE, _WORKER),
        Capability("http:egress", Risk.WRITE, _NO_HOST, signature_required=True),
        Capability("ddns:admin", Risk.HOST, _SYSTEM),
        Capability("monitor:admin", Risk.HOST, _SYSTEM),
        Capability("network:plan", Risk.HOST, _SYSTEM),
        Capability("network:apply", Risk.HOST, _SYSTEM),
        Capability("node:admin", Risk.HOST, _SYSTEM),
        Capability("static:write", Risk.HOST, _SYSTEM),
        Capability("task:run", Risk.HOST, _SYSTEM),
        Capability("tunnel:admin", Risk.HOST, _SYSTEM),
    ]
    return MappingProxyType({row.name: row for row in sorted(rows, key=lambda r: r.name)})


#: name -> Capability, sorted by name; read-only
CAPABILITIES: Mapping[str, Capability] = _table()

#: capabilities that always need a trusted signature
SIGNATURE_REQUIRED: frozenset[str] = frozenset(
    c.name for c in CAPABILITIES.values() if c.signature_required
)


def _lookup(name: str) -> Capability:
    cap = CAPABILITIES.get(name)
    if cap is None:
        raise CapabilityError(f"unknown capability {name!r}", capability=name)
    return cap


def risk_of(name: str) -> Risk:
    """Risk class of ``name``; raises CapabilityError when it is unknown."""
    return _lookup(name).risk


def allowed_types(name: str) -> tuple[str, ...]:
    """Plugin types that may hold ``name``, in PLUGIN_TYPES order."""
    cap = _lookup(name)
    return tuple(t for t in PLUGIN_TYPES if t in cap.types)


def check_capabilities(plugin_type: str, capabilities: Iterable[str]) -> None:
    """Raise unless every capability is known, unique and allowed for the type."""
    if plugin_type not in PLUGIN_TYPES:
        raise ManifestError(
            f"unknown plugin type {plugin_type!r} (expected one of {', '.join(PLUGIN_TYPES)})"
        )
    seen: set[str] = set()
    for name in capabilities:
        if name in seen:
            raise CapabilityError(f"duplicate capability {name!r}", capability=name)
        seen.add(name)
        cap = _lookup(name)
        if plugin_type not in cap.types:
            raise CapabilityError(
                f"capability {name!r} ({cap.risk} risk) is not allowed for type {plugin_type!r}",
                capability=name,
            )


def host_risk(capabilities: Iterable[str]) -> tuple[str, ...]:
    """The host-risk capabilities among ``capabilities`` (unknown names raise)."""
    return tuple(c for c in capabilities if risk_of(c) is Risk.HOST)


def needs_signature(capabilities: Iterable[str]) -> tuple[str, ...]:
    """The capabilities among ``capabilities`` that always need a trusted signature.

    Returns them (empty tuple = none); unknown names raise CapabilityError.
    """
    return tuple(c for c in capabilities if _lookup(c).signature_required)
