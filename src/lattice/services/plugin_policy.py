"""Operator policy per plugin: egress host allowlist and granted static buckets."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from lattice.core.names import check_bucket
from lattice.errors import ValidationFailed
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import plugin_policies

__all__ = ["SqlPluginPolicies"]

MAX_ENTRIES = 64


class SqlPluginPolicies:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _row(self, plugin_id: str) -> tuple[str | None, str | None]:
        with self._db.read() as conn:
            row = conn.execute(
                select(plugin_policies.c.allow_hosts, plugin_policies.c.static_buckets).where(
                    plugin_policies.c.plugin_id == plugin_id
                )
            ).first()
        return (row.allow_hosts, row.static_buckets) if row else (None, None)

    def allow_hosts(self, plugin_id: str) -> list[str] | None:
        """The operator's host allowlist, or ``None`` for "any public host"."""
        hosts, _ = self._row(plugin_id)
        return list(json.loads(hosts)) if hosts is not None else None

    def static_buckets(self, plugin_id: str) -> list[str]:
        _, buckets = self._row(plugin_id)
        return list(json.loads(buckets)) if buckets is not None else [f"plugin:{plugin_id}"]

    def _upsert(self, plugin_id: str, **values: str | None) -> None:
        insert = sqlite_insert if self._db.is_sqlite else pg_insert
        stmt = insert(plugin_policies).values(plugin_id=plugin_id, updated_at=now_iso(), **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[plugin_policies.c.plugin_id],
            set_={**values, "updated_at": stmt.excluded.updated_at},
        )
        with self._db.write() as conn:
            conn.execute(stmt)

    def set_allow_hosts(self, plugin_id: str, hosts: list[str] | None) -> None:
        if hosts is not None and len(hosts) > MAX_ENTRIES:
            raise ValidationFailed(f"at most {MAX_ENTRIES} allowed hosts")
        self._upsert(plugin_id, allow_hosts=json.dumps(hosts) if hosts is not None else None)

    def set_static_buckets(self, plugin_id: str, buckets: list[str]) -> None:
        if len(buckets) > MAX_ENTRIES:
            raise ValidationFailed(f"at most {MAX_ENTRIES} buckets")
        clean = sorted({check_bucket(b) for b in buckets})
        for b in clean:
            if b.startswith("plugin:") and b != f"plugin:{plugin_id}":
                raise ValidationFailed(f"bucket {b!r} belongs to another plugin")
        self._upsert(plugin_id, static_buckets=json.dumps(clean))
