"""SqlStatic against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from lattice.errors import PayloadTooLarge, ValidationFailed
from lattice.services.static import SqlStatic, StaticStore, check_content_type
from lattice.store.db import Database
from lattice.store.migrate import upgrade


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def static(db: Database) -> SqlStatic:
    return SqlStatic(db, max_bytes=100)


def test_conforms_to_the_protocol(static: SqlStatic) -> None:
    store: StaticStore = static  # checked by mypy
    assert store.get("b", "missing") is None


def test_put_get_keeps_bytes_type_and_hash(static: SqlStatic) -> None:
    data = bytes(range(100))
    obj = static.put("site", "a/b.bin", data, "application/x-thing; v=1")
    assert obj.sha256 == hashlib.sha256(data).hexdigest()
    assert obj.size == 100
    got = static.get("site", "a/b.bin")
    assert got is not None
    assert got.data == data
    assert got.content_type == "application/x-thing; v=1"
    assert got.meta() == obj.meta()


def test_overwrite_and_delete(static: SqlStatic) -> None:
    static.put("b", "f", b"1", "text/plain")
    static.put("b", "f", b"{}", "application/json")
    got = static.get("b", "f")
    assert got is not None and (got.data, got.content_type) == (b"{}", "application/json")
    assert static.delete("b", "f") is True
    assert static.delete("b", "f") is False
    assert static.get("b", "f") is None


def test_size_cap(static: SqlStatic) -> None:
    static.put("b", "ok", b"x" * 100, "text/plain")
    with pytest.raises(PayloadTooLarge, match="limit is 100"):
        static.put("b", "big", b"x" * 101, "text/plain")
    assert static.get("b", "big") is None


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("", "empty"),
        ("../x", r"'\.\.'"),
        ("a/../b", r"'\.\.'"),
        ("a/./b", r"'\.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("/etc/passwd", "relative"),
        ("a\x00b", "control"),
        ("a\\b", "backslash"),
        ("a b", "may hold only"),
        ("é", "may hold only"),
        ("x" * 1025, "at most 1024"),
    ],
)
def test_paths_are_validated_by_every_operation(static: SqlStatic, path: str, match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        static.put("b", path, b"x", "text/plain")
    with pytest.raises(ValidationFailed, match=match):
        static.get("b", path)
    with pytest.raises(ValidationFailed, match=match):
        static.delete("b", path)


@pytest.mark.parametrize(
    "value",
    ["text", "text/", "text/css\n", "text/plain;\r\nSet-Cookie: a=b", 'a/b; q="\u20ac"', "a" * 256],
)
def test_bad_content_types(static: SqlStatic, value: str) -> None:
    with pytest.raises(ValidationFailed, match="content type"):
        check_content_type(value)
    with pytest.raises(ValidationFailed, match="content type"):
        static.put("b", "f", b"x", value)
    assert static.get("b", "f") is None


@pytest.mark.parametrize(
    "value", ["text/css", "image/svg+xml", "text/plain; charset=utf-8", 'multipart/x; b="a b"']
)
def test_good_content_types(value: str) -> None:
    assert check_content_type(value) == value


def test_list_pages_with_prefix_and_no_data(static: SqlStatic) -> None:
    paths = [f"img/{i}.png" for i in range(5)]
    for p in [*paths, "img_x", "IMG/a", "index.html"]:
        static.put("b", p, p.encode(), "image/png")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        objs, cursor = static.list("b", prefix="img/", cursor=cursor, limit=2)
        assert all(o.data == b"" for o in objs)  # listings never carry bodies
        seen += [o.path for o in objs]
        if cursor is None:
            break
    assert seen == paths
    assert [o.path for o in static.list("b", prefix="img_")[0]] == ["img_x"]
    assert [o.path for o in static.list("b", prefix="I")[0]] == ["IMG/a"]


def test_list_rejects_bad_arguments(static: SqlStatic) -> None:
    with pytest.raises(ValidationFailed, match="limit"):
        static.list("b", limit=0)
    with pytest.raises(ValidationFailed, match="control"):
        static.list("b", prefix="\x00")
    with pytest.raises(ValidationFailed, match="backslash"):
        static.list("b", prefix="a\\")
    with pytest.raises(ValidationFailed, match="control"):
        static.list("b", cursor="a\x00")
    with pytest.raises(ValidationFailed, match="at most 1024"):
        static.list("b", prefix="x" * 1025)
