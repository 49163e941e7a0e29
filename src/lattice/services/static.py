"""Static storage: objects (bytes + content type) under bucket/path names.

``StaticStore`` is the protocol; ``SqlStatic`` keeps objects in the database so
that a write is one transaction on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from lattice.core.names import check_bucket, check_listing_arg, check_static_path
from lattice.errors import PayloadTooLarge, ValidationFailed
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import static_objects

__all__ = ["SqlStatic", "StaticObject", "StaticStore", "check_content_type"]

MAX_LIST = 1000
_PATH_MAX = 1024
_GET = select(static_objects).where(  # built once, like SqlKV's
    static_objects.c.bucket == bindparam("bucket"), static_objects.c.path == bindparam("path")
)
# Only spaces/tabs around ';' (never CR/LF: the value is echoed as a header),
# printable ASCII only (headers are latin-1), and fullmatch, since '$' would
# accept a trailing newline.
_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}"
    r"([ \t]*;[ \t]*[A-Za-z0-9_.-]+=(\"[\x20\x21\x23-\x7e]*\"|[A-Za-z0-9_.+-]+))*"
)


def check_content_type(value: str) -> str:
    if len(value) > 255 or not _CONTENT_TYPE.fullmatch(value):
        raise ValidationFailed("content type must look like type/subtype[; param=value]")
    return value


@dataclass(frozen=True)
class StaticObject:
    bucket: str
    path: str
    content_type: str
    size: int
    sha256: str
    updated_at: str
    data: bytes = b""

    def meta(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "updated_at": self.updated_at,
        }


class StaticStore(Protocol):
    def get(self, bucket: str, path: str) -> StaticObject | None: ...

    def put(self, bucket: str, path: str, data: bytes, content_type: str) -> StaticObject: ...

    def delete(self, bucket: str, path: str) -> bool: ...

    def list(
        self, bucket: str, *, prefix: str = "", cursor: str | None = None, limit: int = 100
    ) -> tuple[list[StaticObject], str | None]: ...


class SqlStatic:
    def __init__(self, db: Database, *, max_bytes: int) -> None:
        self._db = db
        self.max_bytes = max_bytes
        self._get = db.prepare(_GET)

    def get(self, bucket: str, path: str) -> StaticObject | None:
        check_bucket(bucket)
        check_static_path(path)
        row = self._get.first(bucket=bucket, path=path)
        if row is None:
            return None
        return StaticObject(
            bucket=row.bucket,
            path=row.path,
            content_type=row.content_type,
            size=int(row.size),
            sha256=row.sha256,
            updated_at=row.updated_at,
            data=bytes(row.data),
        )

    def put(self, bucket: str, path: str, data: bytes, content_type: str) -> StaticObject:
        check_bucket(bucket)
        check_static_path(path)
        check_content_type(content_type)
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"object is {len(data)} bytes; the limit is {self.max_bytes}")
        obj = StaticObject(
            bucket=bucket,
            path=path,
            content_type=content_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            updated_at=now_iso(),
            data=bytes(data),
        )
        insert = sqlite_insert if self._db.is_sqlite else pg_insert
        stmt = insert(static_objects).values(**obj.__dict__)
        stmt = stmt.on_conflict_do_update(
            index_elements=[static_objects.c.bucket, static_objects.c.path],
            set_={
                k: getattr(stmt.excluded, k)
                for k in ("content_type", "size", "sha256", "data", "updated_at")
            },
        )
        with self._db.write() as conn:
            conn.execute(stmt)
        return obj

    def delete(self, bucket: str, path: str) -> bool:
        check_bucket(bucket)
        check_static_path(path)
        c = static_objects.c
        with self._db.write() as conn:
            result = conn.execute(delete(static_objects).where(c.bucket == bucket, c.path == path))
        return bool(result.rowcount)

    def list(
        self, bucket: str, *, prefix: str = "", cursor: str | None = None, limit: int = 100
    ) -> tuple[list[StaticObject], str | None]:
        check_bucket(bucket)
        if not 1 <= limit <= MAX_LIST:
            raise ValidationFailed(f"limit must be between 1 and {MAX_LIST}")
        check_listing_arg("prefix", prefix, max_len=_PATH_MAX)
        if "\\" in prefix:
            raise ValidationFailed("prefix must not contain backslashes")
        if cursor:
            check_listing_arg("cursor", cursor, max_len=_PATH_MAX)
        c = static_objects.c
        stmt = select(c.bucket, c.path, c.content_type, c.size, c.sha256, c.updated_at).where(
            c.bucket == bucket
        )
        if prefix:
            # exact prefix match: SQLite's LIKE alone ignores ASCII case
            stmt = stmt.where(
                c.path.startswith(prefix, autoescape=True),
                func.substr(c.path, 1, len(prefix)) == prefix,
            )
        if cursor:
            stmt = stmt.where(c.path > cursor)
        stmt = stmt.order_by(c.path).limit(limit + 1)
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        objs = [
            StaticObject(
                bucket=r.bucket,
                path=r.path,
                content_type=r.content_type,
                size=int(r.size),
                sha256=r.sha256,
                updated_at=r.updated_at,
            )
            for r in rows[:limit]
        ]
        return objs, (objs[-1].path if len(rows) > limit else None)
