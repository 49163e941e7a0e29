"""The capability broker: the only object that holds host service handles.

A ``Broker`` is built from a verified :class:`LoadedPlugin` and the server's
:class:`HostServices`.  Every host method goes through ``_invoke``::

    1. the broker is armed (a disabled plugin's broker is detached)
    2. the capability is in the verified manifest            no → deny
    3. the per-plugin rate limit for the method group allows  no → deny
    4. the service-specific guard and the service call (namespace, sizes, egress)
    5. an audit event ``plugin.host.<method>`` allow|deny with the capability,
       reason and correlation id

A denied call never reaches the service.  Arguments and results are copied
(bytes, fresh dicts), so a plugin never shares a mutable object with the server.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from lattice.core.audit import AuditQuery
from lattice.core.auditsink import AuditSink
from lattice.core.names import check_bucket, check_key, check_static_path, is_plugin_bucket
from lattice.core.redact import redact_url
from lattice.errors import (
    CapabilityDenied,
    HostUnavailable,
    LatticeError,
    ValidationFailed,
    VerificationError,
)
from lattice.plugins.host import HostServices
from lattice.plugins.loader import LoadedPlugin
from lattice.plugins.manifest import Manifest
from lattice.plugins.ratelimits import HostRateLimits

__all__ = ["METHODS", "Broker"]

T = TypeVar("T")

#: host method -> the capability it needs; every capability has at least one
METHODS: Mapping[str, str] = {
    "kv.get": "kv:read",
    "kv.list": "kv:read",
    "kv.put": "kv:write",
    "kv.delete": "kv:write",
    "log.write": "log:write",
    "http.do": "http:egress",
    "notify.send": "notify:send",
    "static.read": "static:read",
    "static.list": "static:read",
    "static.write": "static:write",
    "static.delete": "static:write",
    "audit.query": "audit:read",
    "monitor.read": "monitor:read",
    "monitor.admin": "monitor:admin",
    "node.read": "node:read",
    "node.admin": "node:admin",
    "task.read": "task:read",
    "task.run": "task:run",
    "network.plan": "network:plan",
    "network.apply": "network:apply",
    "tunnel.admin": "tunnel:admin",
    "ddns.update": "ddns:admin",
    "worker.route": "worker:route",
}

# correlation ids need to be unique, not secret: a random per-process prefix
# and a counter are enough and much cheaper than os.urandom per call
_CID_PREFIX = secrets.token_hex(4)
_CID_COUNTER = itertools.count(1)

MAX_TITLE = 256
MAX_BODY = 4096
MAX_TAGS = 8
MAX_AUDIT_PAGE = 100
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Broker:
    """Capability-checked, audited access to host services for one plugin."""

    __slots__ = ("__armed", "__audit", "__caps", "__host", "__limits", "__type", "plugin_id")

    def __init__(
        self,
        plugin: LoadedPlugin,
        host: HostServices,
        *,
        audit: AuditSink,
        limits: HostRateLimits,
    ) -> None:
        # Re-validate: the manifest must survive strict decoding again, and the
        # capability set must be exactly the verified one.
        manifest = plugin.manifest
        again = Manifest.from_json(manifest.to_json())
        if again != manifest:
            raise VerificationError("manifest does not re-validate", plugin_id=manifest.id)
        verified = frozenset(plugin.verification.capabilities)
        if frozenset(manifest.capabilities) != verified:
            raise VerificationError(
                "capability set differs from the verified manifest", plugin_id=manifest.id
            )
        self.plugin_id = manifest.id
        self.__type = manifest.type
        self.__caps = verified
        self.__host = host
        self.__audit = audit
        self.__limits = limits
        self.__armed = True

    def __repr__(self) -> str:
        return f"Broker(plugin_id={self.plugin_id!r}, armed={self.__armed})"

    @property
    def capabilities(self) -> frozenset[str]:
        return self.__caps

    @property
    def armed(self) -> bool:
        return self.__armed

    def detach(self) -> None:
        """Deny every later call (the plugin was disabled or stopped)."""
        self.__armed = False

    # -- the one path every host call takes --------------------------------

    def _invoke(
        self,
        method: str,
        target: str,
        call: Callable[[HostServices], T],
        correlation_id: str | None,
    ) -> T:
        capability = METHODS[method]
        cid = correlation_id or f"{_CID_PREFIX}-{next(_CID_COUNTER)}"

        def record(decision: str, reason: str) -> None:
            self.__audit.append(
                actor=f"plugin:{self.plugin_id}",
                action=f"plugin.host.{method}",
                target=target,
                decision="allow" if decision == "allow" else "deny",
                reason=reason,
                correlation_id=cid,
                detail={"plugin_id": self.plugin_id, "capability": capability},
            )

        def deny(reason: str) -> CapabilityDenied:
            record("deny", reason)
            return CapabilityDenied(plugin_id=self.plugin_id, capability=capability, reason=reason)

        # 1. armed
        if not self.__armed:
            raise deny("plugin is not armed")
        # 2. capability held by the verified manifest
        if capability not in self.__caps:
            raise deny(f"capability {capability} not granted by the manifest")
        # 3. rate limit for this plugin and method group
        if not self.__limits.allow(self.plugin_id, method):
            raise deny("rate limited")
        # 4. guard + service
        try:
            result = call(self.__host)
        except LatticeError as exc:  # a guard refused (egress, names, sizes, ...)
            record("deny", exc.message)
            raise
        # 5. allowed
        record("allow", "")
        return result

    # -- KV: confined to the bucket plugin:<id> ------------------------------

    @property
    def _bucket(self) -> str:
        return f"plugin:{self.plugin_id}"

    def _read_bucket(self, bucket: str | None) -> str:
        """The bucket a read goes to: the plugin's own, or - for worker plugins,
        which serve shared content - any bucket that is not another plugin's."""
        if bucket is None or bucket == self._bucket:
            return self._bucket
        check_bucket(bucket)
        if self.__type != "worker":
            raise ValidationFailed("only worker plugins may read buckets other than their own")
        if is_plugin_bucket(bucket):
            raise ValidationFailed("plugin buckets are private to their plugin")
        return bucket

    def kv_get(
        self, key: str, *, bucket: str | None = None, correlation_id: str | None = None
    ) -> bytes | None:
        key = _text(key, "key")
        target = f"{bucket}/{key}" if bucket else key

        def call(h: HostServices) -> bytes | None:
            value = h.kv.get(self._read_bucket(bucket), check_key(key))
            return bytes(value) if value is not None else None

        return self._invoke("kv.get", target, call, correlation_id)

    def kv_list(
        self,
        prefix: str = "",
        *,
        bucket: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        correlation_id: str | None = None,
    ) -> tuple[list[str], str | None]:
        prefix = _text(prefix, "prefix")
        limit = _bounded_int(limit, "limit", 1, 1000)

        def call(h: HostServices) -> tuple[list[str], str | None]:
            b = self._read_bucket(bucket)
            keys, nxt = h.kv.list(b, prefix=prefix, cursor=cursor, limit=limit)
            return list(keys), nxt

        return self._invoke("kv.list", prefix, call, correlation_id)

    def kv_put(self, key: str, value: bytes, *, correlation_id: str | None = None) -> None:
        key = _text(key, "key")
        data = _bytes(value, "value")
        self._invoke(
            "kv.put", key, lambda h: h.kv.put(self._bucket, check_key(key), data), correlation_id
        )

    def kv_delete(self, key: str, *, correlation_id: str | None = None) -> bool:
        key = _text(key, "key")
        return self._invoke(
            "kv.delete", key, lambda h: h.kv.delete(self._bucket, check_key(key)), correlation_id
        )

    # -- logs -------------------------------------------------------------

    def log_write(
        self,
        level: str,
        message: str,
        fields: Mapping[str, Any] | None = None,
        *,
        correlation_id: str | None = None,
    ) -> None:
        level = _text(level, "level")
        message = _text(message, "message", 1 << 20)
        copied = _json_copy(dict(fields or {}), "fields")

        def call(h: HostServices) -> None:
            h.logs.write(self.plugin_id, level, message, copied, correlation_id)

        self._invoke("log.write", level, call, correlation_id)

    def runtime_log(self, level: str, message: str, *, correlation_id: str | None = None) -> None:
        """A line from the plugin's runtime (console output, a stack trace).

        Not a capability: the runtime reports on the plugin whatever it holds.
        Still rate-limited (``log`` group) and bounded like ``log.write``.
        """
        level = _text(level, "level")
        message = _text(message, "message", 4096)
        if not self.__armed or not self.__limits.allow(self.plugin_id, "log.runtime"):
            return
        self.__host.logs.write(
            self.plugin_id, level, message, {"source": "runtime"}, correlation_id
        )

    # -- outbound HTTP: capability first, then the server's egress guard ----

    def http_do(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        *,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        method = _text(method, "method").upper()
        url = _text(url, "url", 8192)
        hdrs = {_text(k, "header"): _text(v, "header") for k, v in dict(headers or {}).items()}
        data = _bytes(body, "body") if body is not None else None

        def call(h: HostServices) -> dict[str, Any]:
            if h.egress is None:
                raise HostUnavailable("host service unavailable: http")
            if method not in _HTTP_METHODS:
                raise ValidationFailed(f"HTTP method {method!r} is not allowed")
            allow = h.policy.allow_hosts(self.plugin_id) if h.policy else None
            resp = h.egress.request(method, url, headers=hdrs, body=data, allow_hosts=allow)
            return {
                "status": int(resp.status),
                "headers": [(str(k), str(v)) for k, v in resp.headers],
                "body": bytes(resp.body),
                "url": str(resp.url),
            }

        return self._invoke("http.do", redact_url(url)[:512], call, correlation_id)

    # -- notifications ----------------------------------------------------

    def notify_send(
        self,
        title: str,
        body: str,
        tags: list[str] | None = None,
        *,
        correlation_id: str | None = None,
    ) -> None:
        title = _text(title, "title", MAX_TITLE)
        text = _text(body, "body", MAX_BODY)
        tag_list = [_text(t, "tag", 64) for t in list(tags or [])]
        if len(tag_list) > MAX_TAGS:
            raise ValidationFailed(f"at most {MAX_TAGS} tags")

        def call(h: HostServices) -> None:
            if h.notify is None:
                raise HostUnavailable("host service unavailable: notify")
            h.notify.send(title=title, body=text, tags=tag_list, source=f"plugin:{self.plugin_id}")

        self._invoke("notify.send", title[:128], call, correlation_id)

    # -- static: confined to the buckets the operator granted ----------------

    def _static_bucket(self, h: HostServices, bucket: str | None, *, read: bool = False) -> str:
        if h.static is None:
            raise HostUnavailable("host service unavailable: static")
        chosen = bucket or self._bucket
        if read and self.__type == "worker":
            return self._read_bucket(chosen)
        granted = h.policy.static_buckets(self.plugin_id) if h.policy else [self._bucket]
        if chosen not in granted:
            raise ValidationFailed(f"bucket {chosen!r} is not granted to this plugin")
        return chosen

    def static_read(
        self, path: str, *, bucket: str | None = None, correlation_id: str | None = None
    ) -> tuple[bytes, str] | None:
        path = _text(path, "path")

        def call(h: HostServices) -> tuple[bytes, str] | None:
            b = self._static_bucket(h, bucket, read=True)
            assert h.static is not None
            obj = h.static.get(b, check_static_path(path))
            return (bytes(obj.data), obj.content_type) if obj else None

        return self._invoke("static.read", path, call, correlation_id)

    def static_list(
        self,
        prefix: str = "",
        *,
        bucket: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        correlation_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        prefix = _text(prefix, "prefix")
        limit = _bounded_int(limit, "limit", 1, 1000)

        def call(h: HostServices) -> tuple[list[dict[str, Any]], str | None]:
            b = self._static_bucket(h, bucket, read=True)
            assert h.static is not None
            objs, nxt = h.static.list(b, prefix=prefix, cursor=cursor, limit=limit)
            return [o.meta() for o in objs], nxt

        return self._invoke("static.list", prefix, call, correlation_id)

    def static_write(
        self,
        path: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        bucket: str | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        path = _text(path, "path")
        blob = _bytes(data, "data")
        ctype = _text(content_type, "content_type", 255)

        def call(h: HostServices) -> dict[str, Any]:
            b = self._static_bucket(h, bucket)
            assert h.static is not None
            return h.static.put(b, check_static_path(path), blob, ctype).meta()

        return self._invoke("static.write", path, call, correlation_id)

    def static_delete(
        self, path: str, *, bucket: str | None = None, correlation_id: str | None = None
    ) -> bool:
        path = _text(path, "path")

        def call(h: HostServices) -> bool:
            b = self._static_bucket(h, bucket)
            assert h.static is not None
            return h.static.delete(b, check_static_path(path))

        return self._invoke("static.delete", path, call, correlation_id)

    # -- audit: read-only, paged, bounded ------------------------------------

    def audit_query(
        self, filters: Mapping[str, Any] | None = None, *, correlation_id: str | None = None
    ) -> dict[str, Any]:
        f = _json_copy(dict(filters or {}), "filters")
        allowed = {"action_prefix", "actor", "decision", "target", "since", "until", "cursor"}
        unknown = set(f) - allowed - {"limit"}
        if unknown:
            raise ValidationFailed(f"unknown audit filter {sorted(unknown)[0]!r}")
        limit = _bounded_int(f.pop("limit", 50), "limit", 1, MAX_AUDIT_PAGE)

        def call(h: HostServices) -> dict[str, Any]:
            if h.audit_reader is None:
                raise HostUnavailable("host service unavailable: audit")
            events, nxt = h.audit_reader.query(AuditQuery(limit=limit, **f))
            return {"events": [e.to_dict() for e in events], "next_cursor": nxt}

        return self._invoke("audit.query", "", call, correlation_id)

    # -- capabilities whose host services are not bound yet -------------------

    def unbound(self, method: str, *, correlation_id: str | None = None) -> Any:
        """Call one of the named methods that has no host service yet."""
        if method not in METHODS:
            raise ValidationFailed(f"unknown host method {method!r}")

        def call(_h: HostServices) -> Any:
            raise HostUnavailable(f"host service unavailable: {method}")

        return self._invoke(method, "", call, correlation_id)

    def call(
        self, method: str, params: Mapping[str, Any], *, correlation_id: str | None = None
    ) -> Any:
        """Dispatch a JSON-style call (``{"method": "kv.get", "params": {...}}``)."""
        handlers: dict[str, Callable[..., Any]] = {
            "kv.get": self.kv_get,
            "kv.list": self.kv_list,
            "kv.put": self.kv_put,
            "kv.delete": self.kv_delete,
            "log.write": self.log_write,
            "http.do": self.http_do,
            "notify.send": self.notify_send,
            "static.read": self.static_read,
            "static.list": self.static_list,
            "static.write": self.static_write,
            "static.delete": self.static_delete,
            "audit.query": self.audit_query,
        }
        if method not in METHODS:
            raise ValidationFailed(f"unknown host method {method!r}")
        handler = handlers.get(method)
        if handler is None:
            return self.unbound(method, correlation_id=correlation_id)
        try:
            return handler(**dict(params), correlation_id=correlation_id)
        except TypeError as exc:
            raise ValidationFailed(f"bad parameters for {method}: {exc}") from None


def _text(value: Any, name: str, limit: int = 4096) -> str:
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be a string")
    if len(value) > limit:
        raise ValidationFailed(f"{name} is longer than {limit} characters")
    return str(value)


def _bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValidationFailed(f"{name} must be bytes")
    return bytes(value)


def _bounded_int(value: Any, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValidationFailed(f"{name} must be an integer between {low} and {high}")
    return int(value)


def _json_copy(value: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        copied: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        raise ValidationFailed(f"{name} must be plain JSON data") from None
    return copied
