"""Persistence of operator-defined workers (the ``workers`` table)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import workers

__all__ = ["SqlWorkerStore", "StoredWorker"]


@dataclass(frozen=True)
class StoredWorker:
    name: str
    kind: str
    source: str
    capabilities: list[str]
    bindings: dict[str, dict[str, str]]
    public: bool
    content_type: str
    revision: int
    created_at: str
    updated_at: str
    deployed_by: str | None = None  # the actor whose scopes allowed its reads


def _stored(row: Any) -> StoredWorker:
    return StoredWorker(
        name=row.name,
        kind=row.kind,
        source=row.source,
        capabilities=json.loads(row.capabilities),
        bindings=json.loads(row.bindings),
        public=bool(row.public),
        content_type=row.content_type,
        revision=int(row.revision),
        created_at=row.created_at,
        updated_at=row.updated_at,
        deployed_by=row.deployed_by,
    )


class SqlWorkerStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, name: str) -> StoredWorker | None:
        with self._db.read() as conn:
            row = conn.execute(select(workers).where(workers.c.name == name)).first()
        return _stored(row) if row else None

    def all(self) -> list[StoredWorker]:
        with self._db.read() as conn:
            rows = conn.execute(select(workers).order_by(workers.c.name)).all()
        return [_stored(r) for r in rows]

    def upsert(
        self,
        *,
        name: str,
        kind: str,
        source: str,
        capabilities: list[str],
        bindings: dict[str, dict[str, str]],
        public: bool,
        content_type: str,
        deployed_by: str | None = None,
    ) -> StoredWorker:
        now = now_iso()
        values = {
            "kind": kind,
            "source": source,
            "capabilities": json.dumps(sorted(capabilities)),
            "bindings": json.dumps(bindings, sort_keys=True),
            "public": public,
            "content_type": content_type,
            "deployed_by": deployed_by,
            "updated_at": now,
        }
        with self._db.write() as conn:
            current = conn.execute(
                select(workers.c.revision).where(workers.c.name == name)
            ).scalar_one_or_none()
            if current is None:
                conn.execute(
                    workers.insert().values(name=name, revision=1, created_at=now, **values)
                )
            else:
                conn.execute(
                    update(workers)
                    .where(workers.c.name == name)
                    .values(revision=int(current) + 1, **values)
                )
        stored = self.get(name)
        assert stored is not None
        return stored

    def delete(self, name: str) -> bool:
        with self._db.write() as conn:
            result = conn.execute(delete(workers).where(workers.c.name == name))
        return bool(result.rowcount)
