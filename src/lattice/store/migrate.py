"""Run Alembic migrations programmatically (startup and ``lattice db upgrade``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from lattice.errors import ConfigError, StoreError
from lattice.store.db import Database

__all__ = ["check_reachable", "current_revision", "file_lock", "head_revision", "upgrade"]

_SCRIPTS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x1A77_1CE0  # advisory lock id: one migrator at a time


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created 0600), held for the block;
    other processes asking for it wait."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _sqlite_lock_path(db: Database) -> Path | None:
    name = make_url(db.url).database
    if not db.is_sqlite or not name or name == ":memory:":
        return None
    return Path(name + ".lock")


@contextmanager
def _connect(db: Database) -> Iterator[Connection]:
    """A connection, or one line saying which database could not be reached."""
    try:
        conn = db.engine.connect()
    except (OperationalError, DBAPIError) as exc:
        raise StoreError(_unreachable(db, exc)) from exc
    with conn:
        yield conn


def _unreachable(db: Database, exc: DBAPIError) -> str:
    url = make_url(db.url)
    where = url.database if db.is_sqlite else f"{url.host or 'localhost'}:{url.port or 5432}"
    text_ = str(exc.orig) if exc.orig else str(exc)
    reason = " ".join(line.strip() for line in text_.splitlines() if line.strip())
    hint = "" if db.is_sqlite else "; check LATTICE_DATABASE_URL and that PostgreSQL is running"
    return f"cannot connect to the database at {where}: {reason[:300] or 'unknown error'}{hint}"


def check_reachable(db: Database) -> None:
    """Raise :class:`StoreError` naming host and port when the database is down."""
    with _connect(db) as conn:
        conn.execute(text("SELECT 1"))


def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate to ``revision``; one migrator at a time (a file lock next to a
    SQLite database, an advisory lock on PostgreSQL)."""
    lock = _sqlite_lock_path(db)
    if lock is None:
        _upgrade(db, revision)
        return
    with file_lock(lock):
        _upgrade(db, revision)


def _upgrade(db: Database, revision: str) -> None:
    cfg = _config()
    with _connect(db) as conn:
        if not db.is_sqlite:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        finally:
            if not db.is_sqlite:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()


def current_revision(db: Database) -> str | None:
    with _connect(db) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()
