"""What the broker may hold: the server's host services, as protocols.

``HostServices`` is built once by the app from concrete implementations; only
the broker ever receives it.  A field left ``None`` is a host service that is
not bound (yet): calls that need it are denied with "host service unavailable".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lattice.core.audit import AuditEvent, AuditQuery
from lattice.services.kv import KVStore
from lattice.services.logs import PluginLogs
from lattice.services.static import StaticStore

__all__ = [
    "AuditReader",
    "EgressClient",
    "EgressResult",
    "HostServices",
    "Notifier",
    "PluginPolicyReader",
]


class EgressResult(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> list[tuple[str, str]]: ...

    @property
    def body(self) -> bytes: ...

    @property
    def url(self) -> str: ...


class EgressClient(Protocol):
    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        allow_hosts: Sequence[str] | None = None,
    ) -> EgressResult: ...


class Notifier(Protocol):
    def send(self, *, title: str, body: str, tags: Sequence[str], source: str) -> Any: ...


class AuditReader(Protocol):
    def query(self, q: AuditQuery) -> tuple[list[AuditEvent], int | None]: ...


class PluginPolicyReader(Protocol):
    def allow_hosts(self, plugin_id: str) -> list[str] | None: ...

    def static_buckets(self, plugin_id: str) -> list[str]: ...


@dataclass(frozen=True)
class HostServices:
    kv: KVStore
    logs: PluginLogs
    static: StaticStore | None = None
    egress: EgressClient | None = None
    notify: Notifier | None = None
    audit_reader: AuditReader | None = None
    policy: PluginPolicyReader | None = None

    def __repr__(self) -> str:
        return "HostServices(<hidden>)"
