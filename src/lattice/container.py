"""The server's wired object graph, built once by :func:`lattice.app.build_container`.

The API reads what it needs from here; nothing below ``api`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lattice.config import Settings
from lattice.core.audit import AuditLog
from lattice.core.auth import AuthService
from lattice.core.metrics import Metrics
from lattice.core.secrets import SecretBox
from lattice.services.kv import SqlKV
from lattice.services.static import SqlStatic
from lattice.store.db import Database

__all__ = ["Container"]


@dataclass
class Container:
    settings: Settings
    db: Database
    metrics: Metrics
    audit: AuditLog
    auth: AuthService
    secrets: SecretBox
    kv: SqlKV
    static: SqlStatic
    extras: dict[str, Any] = field(default_factory=dict)
