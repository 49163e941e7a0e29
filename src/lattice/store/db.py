"""Engine setup and transaction helpers for SQLite and PostgreSQL.

``Database.read()`` yields a connection for queries (on SQLite each statement
is its own snapshot); ``Database.write()``
yields one inside a transaction that commits on success and rolls back on any
error.  On SQLite writes start with ``BEGIN IMMEDIATE`` so two writers queue on
the database lock (``busy_timeout``) instead of failing mid-transaction.
:meth:`Database.prepare` compiles a hot read once; on SQLite it runs on a
per-thread driver connection (see :class:`Prepared`).
Driver errors are translated here, at the edge: an integrity violation becomes
:class:`~lattice.errors.Conflict`, a value the database cannot store (NUL in
PostgreSQL text, an over-long string) :class:`~lattice.errors.ValidationFailed`,
anything else :class:`~lattice.errors.StoreError`.

``Database.insert_rows()`` is the hot path for append-only tables (the audit
chain): one committed transaction that runs one driver-level ``INSERT`` per
row, with no SQL compilation.  On SQLite it uses one connection kept for it
(set up by the same connect hook, so the same pragmas) whose statement stays
prepared in the driver's statement cache; a single row is one autocommit
statement, which SQLite runs as its own transaction and which takes the write
lock at its start like ``BEGIN IMMEDIATE`` (it waits on ``busy_timeout``, and
there is no earlier read that could go stale).  On PostgreSQL it is a pooled
``write()`` with ``exec_driver_sql``.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Connection, Engine, Select, create_engine, event, text
from sqlalchemy import types as satypes
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from lattice.errors import Conflict, StoreError, ValidationFailed

__all__ = ["Database", "Prepared"]

_WRITE = "lattice_write"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Writes end their own transactions (``write()``) and reads run in
            # autocommit, so returning a connection to the pool needs no ROLLBACK.
            self.engine: Engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_reset_on_return=None,
            )
            _install_sqlite_hooks(self.engine)
            memory = not parsed.database or parsed.database == ":memory:" or parsed.query
            self._sqlite_file: str | None = None if memory else parsed.database
        else:
            self._sqlite_file = None
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._kept: Any = None  # SQLite: the pooled connection insert_rows() keeps
        self._kept_lock = threading.Lock()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise _translate(exc) from exc
        except OverflowError as exc:  # sqlite3 refuses ints beyond 64 bits
            raise ValidationFailed("a number is out of range (at most 64-bit)") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise _translate(exc) from exc
        except OverflowError as exc:  # sqlite3 refuses ints beyond 64 bits
            raise ValidationFailed("a number is out of range (at most 64-bit)") from exc

    def insert_rows(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run the driver-level ``sql`` once per row in one committed transaction.

        ``sql`` uses the driver's placeholders (``?`` on SQLite, ``%s`` on
        PostgreSQL) and must be a constant: on SQLite it stays prepared.  Errors
        are translated like ``write()``'s: a duplicate key is ``Conflict``."""
        if not rows:
            return
        if not self.is_sqlite:
            with self.write() as conn:
                conn.exec_driver_sql(sql, list(rows) if len(rows) > 1 else rows[0])
            return
        with self._kept_lock:
            if self._kept is None:
                try:
                    raw = self.engine.raw_connection()
                except SQLAlchemyError as exc:
                    raise _translate(exc) from exc
                raw.detach()  # ours until dispose(); the pool opens another
                self._kept = raw
            driver: sqlite3.Connection = self._kept.dbapi_connection
            try:
                if len(rows) == 1:  # one statement: its own transaction (module docstring)
                    driver.execute(sql, rows[0])
                    return
                driver.execute("BEGIN IMMEDIATE")
                try:
                    driver.executemany(sql, rows)
                    driver.execute("COMMIT")
                except BaseException:
                    if driver.in_transaction:
                        driver.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate_sqlite(exc) from exc
            except OverflowError as exc:  # sqlite3 refuses ints beyond 64 bits
                raise ValidationFailed("a number is out of range (at most 64-bit)") from exc

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def prepare(self, stmt: Select[Any]) -> Prepared:
        return Prepared(self, stmt)

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's read-only driver connection to the SQLite file, or None
        (PostgreSQL, in-memory SQLite)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None or self._sqlite_file is None:
            return conn
        conn = sqlite3.connect(
            self._sqlite_file, timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA query_only=ON")  # this connection can never write
        conn.execute("PRAGMA busy_timeout=30000")
        with self._readers_lock:
            self._readers.append(conn)
        self._local.conn = conn
        return conn

    def dispose(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self._local = threading.local()
        with self._kept_lock:
            if self._kept is not None:
                self._kept.close()
                self._kept = None
        self.engine.dispose()


_PLAIN_TYPES = (satypes.String, satypes.Integer, satypes.LargeBinary, satypes.Boolean)


class Prepared:
    """A read statement on a hot path, compiled once.

    On a SQLite file it runs on the calling thread's own driver connection
    (``PRAGMA query_only``, autocommit: each statement is its own snapshot and
    sees every committed write, exactly like :meth:`Database.read`), skipping
    SQLAlchemy's per-call connection checkout, compilation cache lookup and
    result wrapping, which cost several times the query itself.  Results are
    fully fetched, so no statement holds a read snapshot open.  Elsewhere it
    runs through SQLAlchemy.  Rows are named tuples with the selected column
    names; only column types SQLite returns as the Python value (text,
    integer, blob, boolean) are allowed, so both paths give the same values.
    """

    def __init__(self, db: Database, stmt: Select[Any]) -> None:
        self._db = db
        self._stmt = stmt
        columns = list(stmt.selected_columns)
        for col in columns:
            if not isinstance(col.type, _PLAIN_TYPES):
                raise TypeError(f"Prepared cannot return a {col.type!r} column ({col.key})")
        self._row = collections.namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]
        self._bools = [i for i, c in enumerate(columns) if isinstance(c.type, Boolean)]
        compiled = stmt.compile(dialect=db.engine.dialect)
        self._sql = str(compiled)
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ())

    def all(self, **params: Any) -> list[Any]:
        conn = self._db._reader()
        if conn is None:
            with self._db.read() as sa:
                return [self._row(*r) for r in sa.execute(self._stmt, params)]
        args = [params[name] for name in self._names]
        try:
            rows = conn.execute(self._sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {type(exc).__name__}") from exc
        except OverflowError as exc:
            raise ValidationFailed("a number is out of range (at most 64-bit)") from exc
        if self._bools:
            rows = [self._fix(r) for r in rows]
        make: Callable[..., Any] = self._row
        return [make(*r) for r in rows]

    def first(self, **params: Any) -> Any | None:
        rows = self.all(**params)
        return rows[0] if rows else None

    def _fix(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for i in self._bools:
            values[i] = None if values[i] is None else bool(values[i])
        return tuple(values)


def _translate(exc: SQLAlchemyError) -> Exception:
    if isinstance(exc, IntegrityError):
        return Conflict("the change conflicts with existing data")
    if isinstance(exc, DataError):
        # a value the database cannot store (NUL in text on PostgreSQL, a string
        # longer than its column): the caller's input, so a 400, never a 503
        reason = str(exc.orig).splitlines()[0][:200] if exc.orig else "invalid value"
        return ValidationFailed(f"the database refused a value: {reason}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return StoreError("database connection lost")
    return StoreError(
        f"database error: {type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__}"
    )


def _translate_sqlite(exc: sqlite3.Error) -> Exception:
    """``_translate`` for errors straight from the sqlite3 driver."""
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict("the change conflicts with existing data")
    if isinstance(exc, sqlite3.DataError):
        return ValidationFailed(f"the database refused a value: {str(exc)[:200]}")
    return StoreError(f"database error: {type(exc).__name__}")


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below own transaction boundaries.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the database lock up front; readers run each statement
        # in SQLite's own implicit transaction (no BEGIN round trip).
        if conn.get_execution_options().get(_WRITE, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def secure_sqlite_file(url: str) -> None:
    """Keep the SQLite file (and WAL side files) private to the server user."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    for suffix in ("", "-wal", "-shm"):
        path = parsed.database + suffix
        if os.path.exists(path):
            os.chmod(path, 0o600)
