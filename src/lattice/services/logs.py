"""Plugin logs: bounded, structured lines stamped with the plugin id.

``PluginLogs`` is the protocol the broker depends on; ``SqlPluginLogs`` keeps
the newest ``keep`` lines per plugin in the store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, func, select

from lattice.errors import ValidationFailed
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import plugin_logs

__all__ = ["LEVELS", "LogLine", "PluginLogs", "SqlPluginLogs", "check_log_line"]

LEVELS = ("debug", "info", "warn", "error")
MAX_MESSAGE = 4096
MAX_FIELDS = 16
MAX_FIELD_KEY = 64
MAX_FIELD_VALUE = 1024


@dataclass(frozen=True)
class LogLine:
    id: int
    plugin_id: str
    ts: str
    level: str
    message: str
    fields: dict[str, Any]
    correlation_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_log_line(level: str, message: str, fields: dict[str, Any] | None) -> dict[str, Any]:
    """Validate one line; return a private copy of its fields."""
    if level not in LEVELS:
        raise ValidationFailed(f"log level must be one of {', '.join(LEVELS)}")
    if not isinstance(message, str) or len(message) > MAX_MESSAGE:
        raise ValidationFailed(f"log message must be a string of at most {MAX_MESSAGE} characters")
    out: dict[str, Any] = {}
    for key, value in (fields or {}).items():
        if len(out) >= MAX_FIELDS:
            raise ValidationFailed(f"at most {MAX_FIELDS} log fields")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_FIELD_KEY:
            raise ValidationFailed(f"log field names must be 1-{MAX_FIELD_KEY} characters")
        if isinstance(value, str):
            if len(value) > MAX_FIELD_VALUE:
                raise ValidationFailed(f"log field {key!r} is longer than {MAX_FIELD_VALUE}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationFailed(f"log field {key!r} must be a finite number")
        elif value is not None and not isinstance(value, bool | int):
            raise ValidationFailed(f"log field {key!r} must be a string, number, bool or null")
        out[key] = value
    return out


class PluginLogs(Protocol):
    def write(
        self,
        plugin_id: str,
        level: str,
        message: str,
        fields: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> None: ...

    def list(
        self, plugin_id: str, *, cursor: int | None = None, limit: int = 100
    ) -> tuple[list[LogLine], int | None]: ...


class SqlPluginLogs:
    def __init__(self, db: Database, *, keep: int = 10_000) -> None:
        self._db = db
        self._keep = keep
        self._writes = 0

    def write(
        self,
        plugin_id: str,
        level: str,
        message: str,
        fields: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        clean = check_log_line(level, message, fields)
        with self._db.write() as conn:
            conn.execute(
                plugin_logs.insert().values(
                    plugin_id=plugin_id,
                    ts=now_iso(),
                    level=level,
                    message=message,
                    fields=json.dumps(clean, sort_keys=True),
                    correlation_id=correlation_id,
                )
            )
        self._writes += 1
        if self._writes % 500 == 0:
            self.prune(plugin_id)

    def prune(self, plugin_id: str) -> None:
        c = plugin_logs.c
        with self._db.write() as conn:
            total = conn.execute(
                select(func.count()).select_from(plugin_logs).where(c.plugin_id == plugin_id)
            ).scalar_one()
            if total <= self._keep:
                return
            cutoff = conn.execute(
                select(c.id)
                .where(c.plugin_id == plugin_id)
                .order_by(c.id.desc())
                .offset(self._keep)
                .limit(1)
            ).scalar_one()
            conn.execute(delete(plugin_logs).where(c.plugin_id == plugin_id, c.id <= cutoff))

    def list(
        self, plugin_id: str, *, cursor: int | None = None, limit: int = 100
    ) -> tuple[list[LogLine], int | None]:
        if not 1 <= limit <= 1000:
            raise ValidationFailed("limit must be between 1 and 1000")
        c = plugin_logs.c
        stmt = select(plugin_logs).where(c.plugin_id == plugin_id)
        if cursor is not None:
            stmt = stmt.where(c.id < cursor)
        stmt = stmt.order_by(c.id.desc()).limit(limit + 1)
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        lines = [
            LogLine(
                id=int(r.id),
                plugin_id=r.plugin_id,
                ts=r.ts,
                level=r.level,
                message=r.message,
                fields=json.loads(r.fields),
                correlation_id=r.correlation_id,
            )
            for r in rows[:limit]
        ]
        return lines, (lines[-1].id if len(rows) > limit else None)
