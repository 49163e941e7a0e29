"""The capability broker: the only object that holds host service handles.

A ``Broker`` is built from a verified :class:`LoadedPlugin` and the server's
:class:`HostServices`.  Every host method goes through ``_invoke``::

    1. the broker is armed (a disabled plugin's broker is detached)
    2. the capability is in the verified manifest            no → deny
    3. the per-plugin rate limit for the method group allows  no → deny
    4. the arguments: types, sizes, parameter names           bad → deny
    5. the service-specific guard and the service call (namespace, sizes, egress)
    6. an audit event ``plugin.host.<method>`` allow|deny with the capability,
       reason and correlation id

Every refusal is audited, a malformed call included: argument checks run inside
the call ``_invoke`` makes after steps 1-3, and the audit target is computed from
whatever the plugin passed without trusting its type (:func:`_shown`).  An
unknown method is audited as ``plugin.host.unknown`` (after the armed check).
A denied call never reaches the service.  Arguments and results are copied
(bytes, fresh dicts), so a plugin never shares a mutable object with the server.
"""

from __future__ import annotations

import inspect
import itertools
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

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
        # 4. argument checks, then 5. guard + service (both inside ``call``)
        try:
            result = call(self.__host)
        except LatticeError as exc:  # bad arguments, or a guard refused (egress, names, ...)
            record("deny", exc.message)
            raise
        except Exception as exc:  # never let a refusal go unaudited
            record("deny", f"host call failed: {type(exc).__name__}")
            raise
        # 6. allowed
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
        target = f"{_shown(bucket)}/{_shown(key)}" if bucket else _shown(key)

        def call(h: HostServices) -> bytes | None:
            k = check_key(_text(key, "key"))
            value = h.kv.get(self._read_bucket(_opt_text(bucket, "bucket")), k)
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
        def call(h: HostServices) -> tuple[list[str], str | None]:
            p = _text(prefix, "prefix")
            n = _bounded_int(limit, "limit", 1, 1000)
            c = _opt_text(cursor, "cursor")
            b = self._read_bucket(_opt_text(bucket, "bucket"))
            keys, nxt = h.kv.list(b, prefix=p, cursor=c, limit=n)
            return list(keys), nxt

        return self._invoke("kv.list", _shown(prefix), call, correlation_id)

    def kv_put(self, key: str, value: bytes, *, correlation_id: str | None = None) -> None:
        def call(h: HostServices) -> None:
            k = check_key(_text(key, "key"))
            h.kv.put(self._bucket, k, _bytes(value, "value"))

        self._invoke("kv.put", _shown(key), call, correlation_id)

    def kv_delete(self, key: str, *, correlation_id: str | None = None) -> bool:
        def call(h: HostServices) -> bool:
            return h.kv.delete(self._bucket, check_key(_text(key, "key")))

        return self._invoke("kv.delete", _shown(key), call, correlation_id)

    # -- logs -------------------------------------------------------------

    def log_write(
        self,
        level: str,
        message: str,
        fields: Mapping[str, Any] | None = None,
        *,
        correlation_id: str | None = None,
    ) -> None:
        def call(h: HostServices) -> None:
            lv = _text(level, "level")
            text = _text(message, "message", 1 << 20)
            copied = _json_copy(_mapping(fields, "fields"), "fields")
            h.logs.write(self.plugin_id, lv, text, copied, correlation_id)

        self._invoke("log.write", _shown(level, 32), call, correlation_id)

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
        raw_url = url
        url = _shown(raw_url, 8192)  # a string for the audit target, whatever was passed

        def call(h: HostServices) -> dict[str, Any]:
            verb = _text(method, "method", 16).upper()
            target_url = _text(raw_url, "url", 8192)
            hdrs = {
                _text(k, "header name"): _text(v, "header value")
                for k, v in _mapping(headers, "headers").items()
            }
            data = _bytes(body, "body") if body is not None else None
            if verb not in _HTTP_METHODS:
                raise ValidationFailed(f"HTTP method {verb[:16]!r} is not allowed")
            if h.egress is None:
                raise HostUnavailable("host service unavailable: http")
            allow = h.policy.allow_hosts(self.plugin_id) if h.policy else None
            resp = h.egress.request(verb, target_url, headers=hdrs, body=data, allow_hosts=allow)
            return {
                "status": int(resp.status),
                "headers": [(str(k), str(v)) for k, v in resp.headers],
                "body": bytes(resp.body),
                "url": str(resp.url),
            }

        # a URL is audited redacted (no userinfo, no query values); a non-string
        # argument is named by its type
        target = redact_url(url)[:512] if isinstance(raw_url, str) else url
        return self._invoke("http.do", target, call, correlation_id)

    # -- notifications ----------------------------------------------------

    def notify_send(
        self,
        title: str,
        body: str,
        tags: list[str] | None = None,
        *,
        correlation_id: str | None = None,
    ) -> None:
        def call(h: HostServices) -> None:
            head = _text(title, "title", MAX_TITLE)
            text = _text(body, "body", MAX_BODY)
            if tags is not None and not isinstance(tags, list | tuple):
                raise ValidationFailed("tags must be a list of strings")
            if len(tags or ()) > MAX_TAGS:
                raise ValidationFailed(f"at most {MAX_TAGS} tags")
            tag_list = [_text(t, "tag", 64) for t in tags or ()]
            if h.notify is None:
                raise HostUnavailable("host service unavailable: notify")
            h.notify.send(title=head, body=text, tags=tag_list, source=f"plugin:{self.plugin_id}")

        self._invoke("notify.send", _shown(title, 128), call, correlation_id)

    # -- static: confined to the buckets the operator granted ----------------

    def _static_bucket(self, h: HostServices, bucket: str | None, *, read: bool = False) -> str:
        if h.static is None:
            raise HostUnavailable("host service unavailable: static")
        chosen = _opt_text(bucket, "bucket") or self._bucket
        if read and self.__type == "worker":
            return self._read_bucket(chosen)
        granted = h.policy.static_buckets(self.plugin_id) if h.policy else [self._bucket]
        if chosen not in granted:
            raise ValidationFailed(f"bucket {chosen!r} is not granted to this plugin")
        return chosen

    def static_read(
        self, path: str, *, bucket: str | None = None, correlation_id: str | None = None
    ) -> tuple[bytes, str] | None:
        def call(h: HostServices) -> tuple[bytes, str] | None:
            p = check_static_path(_text(path, "path"))
            b = self._static_bucket(h, bucket, read=True)
            assert h.static is not None
            obj = h.static.get(b, p)
            return (bytes(obj.data), obj.content_type) if obj else None

        return self._invoke("static.read", _shown(path), call, correlation_id)

    def static_list(
        self,
        prefix: str = "",
        *,
        bucket: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        correlation_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        def call(h: HostServices) -> tuple[list[dict[str, Any]], str | None]:
            p = _text(prefix, "prefix")
            n = _bounded_int(limit, "limit", 1, 1000)
            c = _opt_text(cursor, "cursor")
            b = self._static_bucket(h, bucket, read=True)
            assert h.static is not None
            objs, nxt = h.static.list(b, prefix=p, cursor=c, limit=n)
            return [o.meta() for o in objs], nxt

        return self._invoke("static.list", _shown(prefix), call, correlation_id)

    def static_write(
        self,
        path: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        bucket: str | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        def call(h: HostServices) -> dict[str, Any]:
            p = check_static_path(_text(path, "path"))
            blob = _bytes(data, "data")
            ctype = _text(content_type, "content_type", 255)
            b = self._static_bucket(h, bucket)
            assert h.static is not None
            return h.static.put(b, p, blob, ctype).meta()

        return self._invoke("static.write", _shown(path), call, correlation_id)

    def static_delete(
        self, path: str, *, bucket: str | None = None, correlation_id: str | None = None
    ) -> bool:
        def call(h: HostServices) -> bool:
            p = check_static_path(_text(path, "path"))
            b = self._static_bucket(h, bucket)
            assert h.static is not None
            return h.static.delete(b, p)

        return self._invoke("static.delete", _shown(path), call, correlation_id)

    # -- audit: read-only, paged, bounded ------------------------------------

    def audit_query(
        self, filters: Mapping[str, Any] | None = None, *, correlation_id: str | None = None
    ) -> dict[str, Any]:
        def call(h: HostServices) -> dict[str, Any]:
            f = _json_copy(_mapping(filters, "filters"), "filters")
            allowed = {"action_prefix", "actor", "decision", "target", "since", "until", "cursor"}
            unknown = set(f) - allowed - {"limit"}
            if unknown:
                raise ValidationFailed(f"unknown audit filter {sorted(unknown)[0][:64]!r}")
            limit = _bounded_int(f.pop("limit", 50), "limit", 1, MAX_AUDIT_PAGE)
            if h.audit_reader is None:
                raise HostUnavailable("host service unavailable: audit")
            events, nxt = h.audit_reader.query(AuditQuery(limit=limit, **f))
            return {"events": [e.to_dict() for e in events], "next_cursor": nxt}

        return self._invoke("audit.query", "", call, correlation_id)

    # -- capabilities whose host services are not bound yet -------------------

    def unbound(self, method: str, *, correlation_id: str | None = None) -> Any:
        """Call one of the named methods that has no host service yet."""
        if not isinstance(method, str) or method not in METHODS:
            self._refuse_unknown(method, correlation_id)

        def call(_h: HostServices) -> Any:
            raise HostUnavailable(f"host service unavailable: {method}")

        return self._invoke(method, "", call, correlation_id)

    def _refuse_unknown(self, method: object, correlation_id: str | None) -> NoReturn:
        """Deny and audit a call to a method that does not exist: armed, then the
        rate limit (group ``other``), then the method."""
        refused = not self.__armed or not self.__limits.allow(self.plugin_id, "unknown")
        if not self.__armed:
            reason = "plugin is not armed"
        elif refused:
            reason = "rate limited"
        else:
            reason = f"unknown host method {_shown(method, 64)!r}"
        self.__audit.append(
            actor=f"plugin:{self.plugin_id}",
            action="plugin.host.unknown",
            target=_shown(method, 128),
            decision="deny",
            reason=reason,
            correlation_id=correlation_id or f"{_CID_PREFIX}-{next(_CID_COUNTER)}",
            detail={"plugin_id": self.plugin_id, "capability": ""},
        )
        if refused:
            raise CapabilityDenied(plugin_id=self.plugin_id, capability="", reason=reason)
        raise ValidationFailed(reason)

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        return {
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

    def call(self, method: str, params: Any, *, correlation_id: str | None = None) -> Any:
        """Dispatch a JSON-style call (``{"method": "kv.get", "params": {...}}``).

        Malformed calls (unknown method, params not an object, unknown or missing
        parameter names) are denied and audited after the armed, capability and
        rate-limit checks, like any other refusal.
        """
        if not isinstance(method, str) or method not in METHODS:
            self._refuse_unknown(method, correlation_id)
        handler = self._handlers().get(method)
        if handler is None:
            return self.unbound(method, correlation_id=correlation_id)
        problem = _bad_params(method, handler, params)
        if problem is not None:

            def refuse(_h: HostServices) -> Any:
                raise ValidationFailed(f"bad parameters for {method}: {problem}")

            return self._invoke(method, "", refuse, correlation_id)
        return handler(**params, correlation_id=correlation_id)


def _bad_params(method: str, handler: Callable[..., Any], params: Any) -> str | None:
    """Why ``params`` cannot be passed to ``handler`` (None when they can)."""
    if not isinstance(params, Mapping):
        return "params must be an object"
    accepted, required = _signature(method, handler)
    for name in params:
        if not isinstance(name, str) or name not in accepted:
            return f"unknown parameter {_shown(name, 64)!r}"
    missing = sorted(required - set(params))
    if missing:
        return f"missing parameter {missing[0]!r}"
    return None


_SIGNATURES: dict[str, tuple[frozenset[str], frozenset[str]]] = {}


def _signature(method: str, handler: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(accepted, required) parameter names of a handler, excluding correlation_id."""
    cached = _SIGNATURES.get(method)
    if cached is None:
        params = [
            p
            for p in inspect.signature(handler).parameters.values()
            if p.name != "correlation_id" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        cached = (
            frozenset(p.name for p in params),
            frozenset(p.name for p in params if p.default is p.empty),
        )
        _SIGNATURES[method] = cached
    return cached


def _shown(value: object, limit: int = 512) -> str:
    """An audit target from a possibly malformed argument: a string is cut to
    ``limit`` characters, anything else is named by its type only."""
    if isinstance(value, str):
        return value[:limit]
    if value is None:
        return ""
    return f"<{type(value).__name__}>"[:limit]


def _opt_text(value: Any, name: str, limit: int = 4096) -> str | None:
    return None if value is None else _text(value, name, limit)


def _mapping(value: Any, name: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationFailed(f"{name} must be an object")
    return dict(value)


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
