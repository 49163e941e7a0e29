"""Worker definitions: validation of an operator's (or a bundle's) worker, and
the capability-checked reads a running worker may make.

A worker holds only worker-tier capabilities (``worker:route`` required,
``kv:read``, ``static:read``).  Its source is screened for the seed's blocked
primitives before anything is stored or compiled - a cheap first line; the
sandbox (template engine, V8 isolate) is the real guarantee.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lattice.core.auditsink import AuditSink
from lattice.core.names import check_bucket, check_key, check_static_path, is_plugin_bucket
from lattice.errors import LatticeError, WorkerError
from lattice.plugins.broker import Broker
from lattice.plugins.runners.js import validate_bindings
from lattice.plugins.runners.template import check_template
from lattice.services.kv import KVStore
from lattice.services.logs import PluginLogs
from lattice.services.static import StaticStore, check_content_type

__all__ = [
    "WORKER_CAPABILITIES",
    "BrokerReads",
    "GuardedReads",
    "WorkerReads",
    "WorkerSpec",
    "check_source",
    "validate_spec",
]

WORKER_CAPABILITIES = frozenset({"worker:route", "kv:read", "static:read"})
MAX_SOURCE = 256 * 1024
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: the seed's blocked primitives; whitespace before "(" or "." is tolerated
_BLOCKED: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("fetch(", re.compile(r"\bfetch\s*\(")),
    ("require(", re.compile(r"\brequire\s*\(")),
    ("process.env", re.compile(r"\bprocess\s*\.\s*env\b")),
    ("exec(", re.compile(r"\bexec\s*\(")),
    ("os.", re.compile(r"\bos\s*\.")),
)


def _is_method_definition(source: str, open_paren: int) -> bool:
    """``fetch(request) {`` defines a method (the Workers handler); a call never
    has a block right after its closing parenthesis."""
    depth = 0
    for i in range(open_paren, min(len(source), open_paren + 4096)):
        if source[i] == "(":
            depth += 1
        elif source[i] == ")":
            depth -= 1
            if depth == 0:
                return source[i + 1 :].lstrip().startswith("{")
    return False


def check_source(source: str) -> None:
    """Refuse a source that spells one of the blocked primitives (400 naming it).

    Defining a method with such a name (``async fetch(request, env) {...}``, the
    Cloudflare Workers handler) is not a use of the primitive.
    """
    for primitive, pattern in _BLOCKED:
        for match in pattern.finditer(source):
            if primitive.endswith("(") and _is_method_definition(source, match.end() - 1):
                continue
            raise WorkerError(
                f"worker source uses the blocked primitive {primitive!r}",
                detail={"primitive": primitive},
            )


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    kind: str  # template | js
    source: str
    capabilities: frozenset[str]
    bindings: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    public: bool = True
    content_type: str = "text/plain; charset=utf-8"
    origin: str = "operator"  # or "plugin:<id>"
    revision: int = 0

    @property
    def own_bucket(self) -> str | None:
        return f"plugin:{self.origin[7:]}" if self.origin.startswith("plugin:") else None

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "capabilities": sorted(self.capabilities),
            "bindings": {k: dict(v) for k, v in self.bindings.items()},
            "public": self.public,
            "content_type": self.content_type,
            "origin": self.origin,
            "revision": self.revision,
        }


def validate_spec(
    *,
    name: str,
    kind: str,
    source: str,
    capabilities: list[str] | frozenset[str],
    bindings: Mapping[str, Mapping[str, str]] | None = None,
    public: bool = True,
    content_type: str | None = None,
    origin: str = "operator",
    revision: int = 0,
) -> WorkerSpec:
    """Build a spec or raise WorkerError naming the first broken rule."""
    # 1. identity and kind
    if origin == "operator" and not _NAME.match(name):
        raise WorkerError("worker name must be 1-63 characters of a-z, 0-9 and '-'")
    if kind not in ("template", "js"):
        raise WorkerError("kind must be 'template' or 'js'")
    # 2. capabilities: worker tier only, and worker:route is required
    caps = frozenset(capabilities)
    extra = sorted(caps - WORKER_CAPABILITIES)
    if extra:
        raise WorkerError(
            f"capability {extra[0]!r} is not allowed for workers "
            "(only worker:route, kv:read, static:read)",
            detail={"capability": extra[0]},
        )
    if "worker:route" not in caps:
        raise WorkerError("workers must hold the 'worker:route' capability")
    # 3. source: size and blocked primitives
    if not source or len(source.encode("utf-8")) > MAX_SOURCE:
        raise WorkerError(f"source must be 1 to {MAX_SOURCE} bytes")
    check_source(source)
    # 4. bindings come only from capabilities
    checked = validate_bindings(dict(bindings or {}))
    for bname, binding in checked.items():
        needed = "kv:read" if binding.kind == "kv" else "static:read"
        if needed not in caps:
            raise WorkerError(
                f"binding {bname!r} needs the {needed!r} capability", detail={"binding": bname}
            )
    if kind == "template" and checked:
        raise WorkerError("template workers take no bindings; use {{kv:bucket/key}} instead")
    if kind == "template":
        check_template(source)
    ctype = content_type or (
        "text/plain; charset=utf-8" if kind == "template" else "application/octet-stream"
    )
    try:
        check_content_type(ctype)
    except LatticeError as exc:
        raise WorkerError(exc.message) from None
    return WorkerSpec(
        name=name,
        kind=kind,
        source=source,
        capabilities=caps,
        bindings={k: {v.kind: v.bucket} for k, v in checked.items()},
        public=public,
        content_type=ctype,
        origin=origin,
        revision=revision,
    )


class WorkerReads(Protocol):
    """What a running worker may read; every method checks its capability."""

    def kv_get(self, bucket: str, key: str) -> bytes | None: ...

    def kv_list(
        self, bucket: str, prefix: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]: ...

    def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None: ...

    def log(self, level: str, message: str) -> None: ...


def _readable(spec: WorkerSpec, bucket: str) -> bool:
    check_bucket(bucket)
    return not is_plugin_bucket(bucket) or bucket == spec.own_bucket


class GuardedReads:
    """Reads for an operator-defined worker, checked against its definition.

    Denials are audited (``worker.host.*``); allowed reads are the worker doing
    what the operator deployed it for and are not written to the chain per
    request (public traffic would flood it).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        kv: KVStore,
        static: StaticStore,
        logs: PluginLogs,
        audit: AuditSink,
    ) -> None:
        self._spec = spec
        self._kv = kv
        self._static = static
        self._logs = logs
        self._audit = audit

    def _allowed(self, method: str, capability: str, bucket: str) -> bool:
        if capability not in self._spec.capabilities:
            reason = f"capability {capability} not granted"
        elif not _readable(self._spec, bucket):
            reason = "plugin buckets are private to their plugin"
        else:
            return True
        self._audit.append(
            actor=f"worker:{self._spec.name}",
            action=f"worker.host.{method}",
            target=bucket,
            decision="deny",
            reason=reason,
            detail={"worker": self._spec.name, "capability": capability},
        )
        return False

    def kv_get(self, bucket: str, key: str) -> bytes | None:
        if not self._allowed("kv.get", "kv:read", bucket):
            return None
        return self._kv.get(bucket, check_key(key))

    def kv_list(
        self, bucket: str, prefix: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        if not self._allowed("kv.list", "kv:read", bucket):
            return [], None
        return self._kv.list(bucket, prefix=prefix, cursor=cursor, limit=limit)

    def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None:
        if not self._allowed("static.read", "static:read", bucket):
            return None
        obj = self._static.get(bucket, check_static_path(path))
        return (obj.data, obj.content_type) if obj else None

    def log(self, level: str, message: str) -> None:
        self._logs.write(f"worker:{self._spec.name}", level, message[:4096])


class BrokerReads:
    """Reads for a bundle worker: every call goes through its plugin's broker."""

    def __init__(self, spec: WorkerSpec, broker: Broker) -> None:
        self._spec = spec
        self._broker = broker

    def kv_get(self, bucket: str, key: str) -> bytes | None:
        if not _readable(self._spec, bucket):
            return None
        return self._broker.kv_get(key, bucket=bucket)

    def kv_list(
        self, bucket: str, prefix: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        if not _readable(self._spec, bucket):
            return [], None
        return self._broker.kv_list(prefix, bucket=bucket, cursor=cursor, limit=limit)

    def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None:
        if not _readable(self._spec, bucket):
            return None
        return self._broker.static_read(path, bucket=bucket)

    def log(self, level: str, message: str) -> None:
        self._broker.runtime_log(level, message[:4096])
