"""The server's wired object graph, built once by :func:`lattice.app.build_container`.

The API reads what it needs from here; nothing below ``api`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lattice.config import Settings
from lattice.core.audit import AuditLog
from lattice.core.auditbuffer import BufferedAudit
from lattice.core.auth import AuthService
from lattice.core.metrics import Metrics
from lattice.core.secrets import SecretBox
from lattice.plugins.platform import PluginPlatform
from lattice.plugins.worker_registry import WorkerRegistry
from lattice.services.egress import EgressGuard
from lattice.services.kv import SqlKV
from lattice.services.logs import SqlPluginLogs
from lattice.services.notify import NotifyService
from lattice.services.plugin_policy import SqlPluginPolicies
from lattice.services.static import SqlStatic
from lattice.services.worker_store import SqlWorkerStore
from lattice.store.db import Database

__all__ = ["Container"]


@dataclass
class Container:
    settings: Settings
    db: Database
    metrics: Metrics
    audit: AuditLog
    host_audit: BufferedAudit
    auth: AuthService
    secrets: SecretBox
    kv: SqlKV
    static: SqlStatic
    logs: SqlPluginLogs
    policies: SqlPluginPolicies
    egress: EgressGuard
    notify: NotifyService
    plugins: PluginPlatform
    workers: WorkerRegistry
    worker_store: SqlWorkerStore

    def close(self) -> None:
        """Stop plugins and the notify worker, flush buffered audit events, release connections."""
        self.plugins.shutdown()
        self.notify.close()
        self.host_audit.close()
        self.egress.close()
        self.db.dispose()
