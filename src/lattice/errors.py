"""One error tree for Lattice.

Every failure the server can explain to a person is a ``LatticeError``.  The API
layer maps each class to one HTTP status (``status_code``) and renders
``{"error": message, "detail": detail}``; the CLI prints the message and exits
non-zero.  Foreign exceptions (SQLAlchemy, httpx, mini-racer, ...) are
translated into this tree at the edge with ``raise ... from exc``.

::

    LatticeError                       500  (base; never raised directly)
    ├── ConfigError                    500  bad settings / unreadable key file
    ├── ValidationFailed               400  input that breaks a rule (names, sizes)
    │   └── PayloadTooLarge            413
    ├── NotFound                       404
    ├── Conflict                       409
    ├── AuthError                      401  no or bad credentials
    │   └── CsrfError                  403  cookie auth without a matching CSRF token
    ├── ScopeDenied                    403  credential lacks a scope (names it)
    ├── TokenTooBroad                  403  a token managing a token broader than itself
    ├── RateLimited                    429
    ├── StoreError                     503  database unreachable / failed
    ├── SecretError                    500  decrypting a secret failed (wrong key, tamper)
    ├── AuditChainBroken               500  audit verify found a broken link (carries seq)
    │   └── AuditChainTruncated        500  the log ends before its latest checkpoint
    ├── AuditCheckpointInvalid         500  the checkpoint file is unreadable or not authentic
    ├── PluginError                    400  base of the plugin platform
    │   ├── ManifestError              400  manifest breaks the v1 schema
    │   ├── CapabilityError            400  unknown / tier-forbidden capability
    │   ├── VerificationError          400  digest or signature or trust policy failed
    │   ├── BundleError                400  bundle layout (symlinks, sizes, files)
    │   ├── LifecycleError             400  transition not allowed / bundle unavailable
    │   └── RunnerError                500  a runner failed to start or stop
    ├── CapabilityDenied               403  broker refused a host call (carries capability)
    ├── HostUnavailable                503  capability has no bound host service yet
    ├── EgressBlocked                  403  outbound HTTP refused by the egress guard
    └── WorkerError                    400  worker definition / source rejected
        └── WorkerTimeout              503  worker exceeded its CPU time
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuditChainBroken",
    "AuditChainTruncated",
    "AuditCheckpointInvalid",
    "AuthError",
    "BundleError",
    "CapabilityDenied",
    "CapabilityError",
    "ConfigError",
    "Conflict",
    "CsrfError",
    "EgressBlocked",
    "HostUnavailable",
    "LatticeError",
    "LifecycleError",
    "ManifestError",
    "NotFound",
    "PayloadTooLarge",
    "PluginError",
    "RateLimited",
    "RunnerError",
    "ScopeDenied",
    "SecretError",
    "StoreError",
    "TokenTooBroad",
    "ValidationFailed",
    "VerificationError",
    "WorkerError",
    "WorkerTimeout",
]


class LatticeError(Exception):
    """Root of every error Lattice raises on purpose."""

    status_code = 500
    #: short, stable machine-readable kind; the API returns it as ``error``
    #: only when no message is given.
    kind = "error"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class ConfigError(LatticeError):
    kind = "config"


class ValidationFailed(LatticeError):
    status_code = 400
    kind = "invalid"


class PayloadTooLarge(ValidationFailed):
    status_code = 413
    kind = "too_large"


class NotFound(LatticeError):
    status_code = 404
    kind = "not_found"


class Conflict(LatticeError):
    status_code = 409
    kind = "conflict"


class AuthError(LatticeError):
    status_code = 401
    kind = "unauthenticated"


class CsrfError(AuthError):
    status_code = 403
    kind = "csrf"


class ScopeDenied(LatticeError):
    status_code = 403
    kind = "forbidden"

    def __init__(self, scope: str) -> None:
        super().__init__(f"missing scope {scope!r}", detail={"missing_scope": scope})
        self.scope = scope


class TokenTooBroad(LatticeError):
    status_code = 403
    kind = "forbidden"


class RateLimited(LatticeError):
    status_code = 429
    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, detail={"retry_after_seconds": round(retry_after, 1)})
        self.retry_after = retry_after


class StoreError(LatticeError):
    status_code = 503
    kind = "store"


class SecretError(LatticeError):
    kind = "secret"


class AuditChainBroken(LatticeError):
    kind = "audit_chain"

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"audit chain broken at seq {seq}: {reason}", detail={"seq": seq})
        self.seq = seq
        self.reason = reason


class AuditChainTruncated(AuditChainBroken):
    """Rows up to the latest checkpoint's ``seq`` are gone: the tail was deleted."""

    def __init__(self, checkpoint_seq: int, last_seq: int) -> None:
        reason = (
            f"the latest checkpoint is at seq {checkpoint_seq} but the log ends at seq {last_seq}"
        )
        super().__init__(last_seq + 1, reason)
        self.message = f"audit chain truncated: {reason}"
        self.checkpoint_seq = checkpoint_seq
        self.last_seq = last_seq


class AuditCheckpointInvalid(LatticeError):
    kind = "audit_checkpoint"


class PluginError(LatticeError):
    status_code = 400
    kind = "plugin"

    def __init__(self, message: str, *, plugin_id: str | None = None, detail: Any = None) -> None:
        super().__init__(message, detail=detail)
        self.plugin_id = plugin_id


class ManifestError(PluginError):
    kind = "manifest"


class CapabilityError(PluginError):
    kind = "capability"

    def __init__(self, message: str, *, capability: str, plugin_id: str | None = None) -> None:
        super().__init__(message, plugin_id=plugin_id, detail={"capability": capability})
        self.capability = capability


class VerificationError(PluginError):
    kind = "verification"


class BundleError(PluginError):
    kind = "bundle"

    def __init__(
        self, message: str, *, bundle: str | None = None, plugin_id: str | None = None
    ) -> None:
        super().__init__(message, plugin_id=plugin_id)
        self.bundle = bundle


class LifecycleError(PluginError):
    kind = "lifecycle"


class RunnerError(PluginError):
    status_code = 500
    kind = "runner"


class CapabilityDenied(LatticeError):
    status_code = 403
    kind = "capability_denied"

    def __init__(self, *, plugin_id: str, capability: str, reason: str) -> None:
        super().__init__(
            f"plugin {plugin_id!r} denied {capability!r}: {reason}",
            detail={"plugin_id": plugin_id, "capability": capability, "reason": reason},
        )
        self.plugin_id = plugin_id
        self.capability = capability
        self.reason = reason


class HostUnavailable(LatticeError):
    status_code = 503
    kind = "host_unavailable"


class EgressBlocked(LatticeError):
    status_code = 403
    kind = "egress_blocked"

    def __init__(
        self, reason: str, *, url: str | None = None, category: str = "unspecified"
    ) -> None:
        super().__init__(
            f"egress blocked: {reason}", detail={"reason": reason, "category": category}
        )
        self.reason = reason
        self.url = url
        #: stable machine-readable kind of refusal (``scheme``, ``port``, ``address``,
        #: ``timeout``, ...); the broker audits it with the deny.
        self.category = category


class WorkerError(LatticeError):
    status_code = 400
    kind = "worker"


class WorkerTimeout(WorkerError):
    status_code = 503
    kind = "worker_timeout"
