"""The narrow interface every subsystem uses to write audit events.

The concrete implementation is :class:`lattice.core.audit.AuditLog`; code
outside ``core`` depends on this protocol only.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

__all__ = ["AuditSink", "Decision"]

Decision = Literal["allow", "deny"]


class AuditSink(Protocol):
    def append(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        decision: Decision = "allow",
        reason: str = "",
        correlation_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one event to the hash chain (durable before return)."""
        ...
