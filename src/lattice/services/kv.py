"""KV storage: buckets of string keys to byte values.

``KVStore`` is the protocol the broker and the API depend on; ``SqlKV`` is the
implementation over the store.  Names are validated here, so every caller (API,
broker, worker runtime) gets the same rules.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from lattice.core.names import check_bucket, check_key, check_listing_arg
from lattice.errors import PayloadTooLarge, ValidationFailed
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import kv_entries

__all__ = ["KVStore", "SqlKV"]

MAX_LIST = 1000
_KEY_MAX = 512
# Built and compiled once (``Database.prepare``): on SQLite the ORM-free path
# is a tenth of the cost (bench/http_paths.py, KV GET).
_GET = select(kv_entries.c.value).where(
    kv_entries.c.bucket == bindparam("bucket"), kv_entries.c.key == bindparam("key")
)


class KVStore(Protocol):
    def get(self, bucket: str, key: str) -> bytes | None: ...

    def put(self, bucket: str, key: str, value: bytes) -> None: ...

    def delete(self, bucket: str, key: str) -> bool: ...

    def list(
        self, bucket: str, *, prefix: str = "", cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]: ...


class SqlKV:
    def __init__(self, db: Database, *, max_value_bytes: int) -> None:
        self._db = db
        self.max_value_bytes = max_value_bytes
        self._get = db.prepare(_GET)

    def get(self, bucket: str, key: str) -> bytes | None:
        check_bucket(bucket)
        check_key(key)
        row = self._get.first(bucket=bucket, key=key)
        return bytes(row.value) if row is not None else None

    def put(self, bucket: str, key: str, value: bytes) -> None:
        check_bucket(bucket)
        check_key(key)
        if len(value) > self.max_value_bytes:
            raise PayloadTooLarge(
                f"value is {len(value)} bytes; the limit is {self.max_value_bytes}"
            )
        row = {"bucket": bucket, "key": key, "value": bytes(value), "updated_at": now_iso()}
        insert = sqlite_insert if self._db.is_sqlite else pg_insert
        stmt = insert(kv_entries).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[kv_entries.c.bucket, kv_entries.c.key],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        )
        with self._db.write() as conn:
            conn.execute(stmt)

    def delete(self, bucket: str, key: str) -> bool:
        check_bucket(bucket)
        check_key(key)
        with self._db.write() as conn:
            result = conn.execute(
                delete(kv_entries).where(kv_entries.c.bucket == bucket, kv_entries.c.key == key)
            )
        return bool(result.rowcount)

    def list(
        self, bucket: str, *, prefix: str = "", cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Keys in ``bucket`` starting with ``prefix``, after ``cursor``, in order.

        Returns the page and the cursor for the next page (``None`` at the end).
        """
        check_bucket(bucket)
        if not 1 <= limit <= MAX_LIST:
            raise ValidationFailed(f"limit must be between 1 and {MAX_LIST}")
        if prefix:
            check_key(prefix)
        if cursor:
            check_listing_arg("cursor", cursor, max_len=_KEY_MAX)
        c = kv_entries.c
        stmt = select(c.key).where(c.bucket == bucket)
        if prefix:
            # LIKE (wildcards escaped) narrows the scan; the substr comparison makes
            # the match exact, because SQLite's LIKE ignores ASCII case.
            stmt = stmt.where(
                c.key.startswith(prefix, autoescape=True),
                func.substr(c.key, 1, len(prefix)) == prefix,
            )
        if cursor:
            stmt = stmt.where(c.key > cursor)
        stmt = stmt.order_by(c.key).limit(limit + 1)
        with self._db.read() as conn:
            keys = [str(k) for k in conn.execute(stmt).scalars()]
        more = len(keys) > limit
        keys = keys[:limit]
        return keys, (keys[-1] if more else None)
