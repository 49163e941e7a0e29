"""``Database.prepare``: hot reads outside SQLAlchemy give the same answers."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import bindparam, insert, select

from lattice.errors import StoreError
from lattice.services.kv import SqlKV
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from lattice.store.tables import audit_events, kv_entries, users


@pytest.fixture
def db(db_url: str) -> Database:
    database = Database(db_url)
    upgrade(database)
    return database


def _add_user(db: Database, name: str, *, disabled: bool) -> None:
    row = {
        "username": name,
        "password_hash": "x",
        "scopes": "[]",
        "disabled": disabled,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    with db.write() as conn:
        conn.execute(insert(users).values(**row))


def test_rows_match_sqlalchemy(db: Database) -> None:
    _add_user(db, "alice", disabled=True)
    _add_user(db, "bob", disabled=False)
    stmt = select(users).where(users.c.username == bindparam("name"))
    prepared = db.prepare(stmt)
    for name in ("alice", "bob"):
        with db.read() as conn:
            expected = conn.execute(stmt, {"name": name}).one()
        got = prepared.first(name=name)
        assert tuple(got) == tuple(expected)
        assert got.disabled is expected.disabled  # a bool, not SQLite's 0/1
        assert got.username == name
    assert prepared.first(name="nobody") is None
    assert prepared.all(name="nobody") == []


def test_every_committed_write_is_seen_at_once(db: Database) -> None:
    kv = SqlKV(db, max_value_bytes=1024)
    assert kv.get("b", "k") is None  # this thread's reader exists now
    for i in range(20):
        kv.put("b", "k", f"v{i}".encode())
        assert kv.get("b", "k") == f"v{i}".encode()
    kv.delete("b", "k")
    assert kv.get("b", "k") is None


def test_writes_from_another_thread_are_seen(db: Database) -> None:
    kv = SqlKV(db, max_value_bytes=1024)
    assert kv.get("b", "k") is None
    t = threading.Thread(target=kv.put, args=("b", "k", b"from-thread"))
    t.start()
    t.join()
    assert kv.get("b", "k") == b"from-thread"


def test_each_thread_reads_on_its_own_connection(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("driver connections are a SQLite path")
    seen: list[object] = []

    def grab() -> None:
        seen.append(db._reader())

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 3


def test_the_read_connection_cannot_write(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("driver connections are a SQLite path")
    reader = db._reader()
    assert reader is not None
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM kv_entries")


def test_only_plain_column_types(db: Database) -> None:
    from sqlalchemy import DateTime, column

    with pytest.raises(TypeError, match="cannot return"):
        db.prepare(select(column("at", DateTime())).select_from(audit_events))


def test_a_broken_database_is_a_store_error(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(db)
    prepared = db.prepare(select(kv_entries.c.value).where(kv_entries.c.key == bindparam("k")))
    assert prepared.first(k="a") is None
    reader = db._reader()
    assert reader is not None
    reader.execute("PRAGMA query_only=OFF")
    reader.execute("DROP TABLE kv_entries")  # what a damaged file looks like to a reader
    with pytest.raises(StoreError, match="database error"):
        prepared.first(k="a")


def test_dispose_closes_reader_connections(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(db)
    reader = db._reader()
    assert reader is not None
    db.dispose()
    with pytest.raises(sqlite3.ProgrammingError):
        reader.execute("SELECT 1")
    assert db._reader() is not reader  # a fresh one after dispose
