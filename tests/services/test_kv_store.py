"""SqlKV against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from lattice.errors import PayloadTooLarge, ValidationFailed
from lattice.services.kv import KVStore, SqlKV
from lattice.store.db import Database
from lattice.store.migrate import upgrade


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def kv(db: Database) -> SqlKV:
    return SqlKV(db, max_value_bytes=1024)


def test_conforms_to_the_protocol(kv: SqlKV) -> None:
    store: KVStore = kv  # checked by mypy
    assert store.get("b", "missing") is None


def test_round_trip_all_byte_values(kv: SqlKV) -> None:
    kv.put("b", "k", bytes(range(256)))
    assert kv.get("b", "k") == bytes(range(256))
    kv.put("b", "view", memoryview(b"\x00\x01"))  # type: ignore[arg-type]
    assert kv.get("b", "view") == b"\x00\x01"


def test_overwrite_and_delete(kv: SqlKV) -> None:
    kv.put("b", "k", b"1")
    kv.put("b", "k", b"22")
    assert kv.get("b", "k") == b"22"
    assert kv.delete("b", "k") is True
    assert kv.delete("b", "k") is False
    assert kv.get("b", "k") is None


def test_size_cap_is_inclusive_and_stores_nothing_above(kv: SqlKV) -> None:
    kv.put("b", "max", b"x" * 1024)
    with pytest.raises(PayloadTooLarge, match="limit is 1024"):
        kv.put("b", "over", b"x" * 1025)
    assert kv.get("b", "over") is None
    kv.put("b", "max", b"small")
    with pytest.raises(PayloadTooLarge):
        kv.put("b", "max", b"x" * 2000)
    assert kv.get("b", "max") == b"small"


@pytest.mark.parametrize(
    ("bucket", "key", "match"),
    [
        ("b", "", "empty"),
        ("b", "a..b", r"'\.\.'"),
        ("b", "a\x00", "control"),
        ("b", "a\x85", "control"),
        ("b", "a\\b", "backslash"),
        ("b", "k" * 513, "at most 512"),
        ("b", "\ud800", "surrogate"),
        ("", "k", "empty"),
        ("b" * 129, "k", "at most 128"),
        ("a b", "k", "may hold only"),
        ("a..b", "k", r"'\.\.'"),
    ],
)
def test_every_operation_validates_names(kv: SqlKV, bucket: str, key: str, match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        kv.put(bucket, key, b"v")
    with pytest.raises(ValidationFailed, match=match):
        kv.get(bucket, key)
    with pytest.raises(ValidationFailed, match=match):
        kv.delete(bucket, key)


def test_list_pages_in_key_order(kv: SqlKV) -> None:
    keys = [f"k{i:02d}" for i in range(23)]
    for key in reversed(keys):
        kv.put("b", key, b"v")
    kv.put("other", "k00x", b"v")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = kv.list("b", cursor=cursor, limit=10)
        seen += page
        if cursor is None:
            break
    assert seen == keys


def test_list_prefix_is_literal_and_case_sensitive(kv: SqlKV) -> None:
    for key in ["a%b", "a_b", "ab", "Ab", "AB", "a/b", "b"]:
        kv.put("b", key, b"v")
    assert kv.list("b", prefix="a%")[0] == ["a%b"]
    assert kv.list("b", prefix="a_")[0] == ["a_b"]
    assert kv.list("b", prefix="a")[0] == ["a%b", "a/b", "a_b", "ab"]
    assert kv.list("b", prefix="A")[0] == ["AB", "Ab"]
    assert kv.list("b", prefix="a", cursor="a/b", limit=1) == (["a_b"], "a_b")


def test_list_rejects_bad_arguments(kv: SqlKV) -> None:
    with pytest.raises(ValidationFailed, match="limit"):
        kv.list("b", limit=0)
    with pytest.raises(ValidationFailed, match="limit"):
        kv.list("b", limit=1001)
    with pytest.raises(ValidationFailed, match="control"):
        kv.list("b", cursor="\x00")
    with pytest.raises(ValidationFailed, match="surrogate"):
        kv.list("b", cursor="\udfff")
    with pytest.raises(ValidationFailed, match=r"'\.\.'"):
        kv.list("b", prefix="..")


def test_concurrent_writers_to_one_key_never_conflict(kv: SqlKV) -> None:
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(15):
                kv.put("race", "k", f"{n}-{i}".encode())
        except BaseException as exc:  # collected for the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    value = kv.get("race", "k")
    assert value is not None and value.decode().endswith("-14")
