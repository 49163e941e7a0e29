"""The scope catalog: every scope an API credential can hold, in one place.

A route declares exactly one scope (see ``lattice.api.deps.require``).  ``*``
grants every scope.  A personal access token never holds a scope its user
lacks, and its effective scopes shrink if the user's do.
"""

from __future__ import annotations

from collections.abc import Iterable

from lattice.errors import ValidationFailed

__all__ = ["ALL", "SCOPES", "effective_scopes", "grants", "validate_scopes"]

ALL = "*"

SCOPES: dict[str, str] = {
    "plugin:admin": "change plugin lifecycle, rescan bundles, set plugin egress policy",
    "plugin:verify": "verify a plugin bundle against the server's trust policy",
    "plugin:read": "list loaded and rejected plugins, read plugin logs",
    "audit:read": "read the audit log",
    "kv:read": "read KV buckets",
    "kv:write": "write and delete KV entries",
    "static:read": "read static storage",
    "static:write": "write and delete static objects",
    "worker:deploy": "define, update and delete worker routes",
    "notify:admin": "manage notification channels and read deliveries",
    "node:read": "read the node inventory",
    "node:admin": "enroll and manage nodes",
    "task:read": "read tasks and their results",
    "task:run": "run tasks on nodes",
    "approval:admin": "approve host-mutation plans",
}


def grants(held: Iterable[str], scope: str) -> bool:
    held_set = set(held)
    return ALL in held_set or scope in held_set


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    """Return the scopes sorted and deduplicated, or raise naming the unknown one."""
    out = sorted(set(scopes))
    if not out:
        raise ValidationFailed("at least one scope is required")
    for scope in out:
        if scope != ALL and scope not in SCOPES:
            raise ValidationFailed(f"unknown scope {scope!r}", detail={"scope": scope})
    return out


def effective_scopes(token_scopes: Iterable[str], user_scopes: Iterable[str]) -> frozenset[str]:
    """What a token may do right now: its scopes, cut down to its user's."""
    user = set(user_scopes)
    if ALL in user:
        return frozenset(token_scopes)
    if ALL in set(token_scopes):
        return frozenset(user)
    return frozenset(s for s in token_scopes if s in user)
