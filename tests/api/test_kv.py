"""KV over real HTTP: round trips, listing, name rules, size caps, scopes, audit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import LiveServer

ALL_BYTES = bytes(range(256))


@pytest.fixture
def rw(live: LiveServer) -> httpx.Client:
    return live.client(live.token("kv:read", "kv:write"))


def assert_error(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """Status matches and the body is the JSON error shape naming every needle."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}
    for needle in needles:
        assert needle in body["error"], body
    return body  # type: ignore[no-any-return]


def audit_events(live: LiveServer, action: str) -> list[dict[str, Any]]:
    auditor = live.client(live.token("audit:read"))
    r = auditor.get("/api/audit", params={"action": action, "order": "asc", "limit": 500})
    assert r.status_code == 200, r.text
    return r.json()["events"]  # type: ignore[no-any-return]


# -- round trips ---------------------------------------------------------------


def test_binary_round_trip_keeps_every_byte_value(rw: httpx.Client) -> None:
    put = rw.put("/api/kv/b1/all-bytes", content=ALL_BYTES)
    assert put.status_code == 200, put.text
    assert put.json() == {"bucket": "b1", "key": "all-bytes", "size": 256}
    got = rw.get("/api/kv/b1/all-bytes")
    assert got.status_code == 200
    assert got.content == ALL_BYTES
    assert got.headers["content-type"] == "application/octet-stream"


def test_keys_of_every_allowed_shape_round_trip(rw: httpx.Client) -> None:
    keys = ["a/b/c", "with space", "ünïcødé-ключ", "emoji-\U0001f600", "a%b_c", "x" * 512, "-.:~"]
    for key in keys:
        url = "/api/kv/bucket/" + quote(key, safe="/")
        assert rw.put(url, content=key.encode()).status_code == 200, key
        assert rw.get(url).content == key.encode()
    assert rw.get("/api/kv/bucket", params={"limit": 1000}).json()["keys"] == sorted(keys)


def test_empty_value_is_a_value(rw: httpx.Client) -> None:
    assert rw.put("/api/kv/b/empty", content=b"").status_code == 200
    got = rw.get("/api/kv/b/empty")
    assert got.status_code == 200 and got.content == b""


def test_overwrite_replaces_value(rw: httpx.Client) -> None:
    rw.put("/api/kv/b/k", content=b"first")
    rw.put("/api/kv/b/k", content=b"second, longer")
    assert rw.get("/api/kv/b/k").content == b"second, longer"
    assert rw.get("/api/kv/b").json()["keys"] == ["k"]


def test_buckets_are_separate(rw: httpx.Client) -> None:
    rw.put("/api/kv/one/k", content=b"1")
    rw.put("/api/kv/two/k", content=b"2")
    assert rw.get("/api/kv/one/k").content == b"1"
    assert rw.get("/api/kv/two/k").content == b"2"


def test_delete_then_missing_is_404(rw: httpx.Client) -> None:
    rw.put("/api/kv/b/gone", content=b"x")
    r = rw.delete("/api/kv/b/gone")
    assert r.status_code == 200 and r.json() == {"deleted": "gone"}
    assert_error(rw.get("/api/kv/b/gone"), 404, "no key")
    assert_error(rw.delete("/api/kv/b/gone"), 404, "no key")
    assert_error(rw.get("/api/kv/b/never"), 404, "'never'")


# -- listing --------------------------------------------------------------------


def test_list_with_prefix_paginates_over_several_pages(rw: httpx.Client) -> None:
    wanted = [f"page/{i:03d}" for i in range(25)]
    for key in [*wanted, "other/1", "pagf", "pag"]:
        assert rw.put(f"/api/kv/lst/{key}", content=b"v").status_code == 200
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"prefix": "page/", "limit": 10}
        if cursor is not None:
            params["cursor"] = cursor
        body = rw.get("/api/kv/lst", params=params).json()
        assert len(body["keys"]) <= 10
        seen += body["keys"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == wanted


def test_list_page_exactly_full_has_no_next_cursor(rw: httpx.Client) -> None:
    for i in range(4):
        rw.put(f"/api/kv/full/k{i}", content=b"v")
    body = rw.get("/api/kv/full", params={"limit": 4}).json()
    assert body == {"bucket": "full", "keys": ["k0", "k1", "k2", "k3"], "next_cursor": None}


def test_list_empty_bucket(rw: httpx.Client) -> None:
    assert rw.get("/api/kv/nothing").json() == {
        "bucket": "nothing",
        "keys": [],
        "next_cursor": None,
    }


def test_like_wildcards_in_prefix_are_literal(rw: httpx.Client) -> None:
    for key in ["%x", "a%b", "a/b", "a_b", "ab", "Ab", "xab"]:
        assert rw.put("/api/kv/wild/" + quote(key, safe="/"), content=b"v").status_code == 200
    cases = {
        "a%": ["a%b"],
        "a_": ["a_b"],
        "%": ["%x"],
        "_": [],
        "a/": ["a/b"],
        "a": ["a%b", "a/b", "a_b", "ab"],
    }
    for prefix, expected in cases.items():
        keys = rw.get("/api/kv/wild", params={"prefix": prefix}).json()["keys"]
        assert keys == expected, prefix


def test_prefix_is_case_sensitive_on_every_backend(rw: httpx.Client) -> None:
    # SQLite's LIKE ignores ASCII case; the listing must not.
    for key in ["Abc", "abc", "ABC"]:
        rw.put(f"/api/kv/case/{key}", content=b"v")
    assert rw.get("/api/kv/case", params={"prefix": "a"}).json()["keys"] == ["abc"]
    assert rw.get("/api/kv/case", params={"prefix": "A"}).json()["keys"] == ["ABC", "Abc"]


BAD_LISTING: list[tuple[dict[str, Any], str]] = [
    ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"prefix": "a..b"}, "'..'"),
    ({"prefix": "x" * 513}, "prefix"),
    ({"prefix": "a\x01"}, "control"),
    ({"cursor": "a\x00b"}, "control"),
    ({"cursor": "x" * 513}, "cursor"),
]


def test_bad_listing_parameters_are_refused(rw: httpx.Client) -> None:
    for params, needle in BAD_LISTING:
        r = rw.get("/api/kv/b", params=params)
        assert r.status_code in (400, 422), (params, r.text)
        assert needle in r.json()["error"], (params, r.json())


# -- name rules -------------------------------------------------------------------


NAME_RULES = [
    ("/api/kv/b/a..b", "'..'"),
    ("/api/kv/b/%01", "control"),
    ("/api/kv/b/a%00b", "control"),
    ("/api/kv/b/a%7fb", "control"),
    ("/api/kv/b/a%5cb", "backslash"),
    ("/api/kv/b/" + "k" * 513, "at most 512"),
    ("/api/kv/b..c/k", "'..'"),
    ("/api/kv/" + "b" * 129 + "/k", "at most 128"),
    ("/api/kv/b%20c/k", "may hold only"),
    ("/api/kv/b$/k", "may hold only"),
    ("/api/kv/-b/k", "starting with a letter or digit"),
    ("/api/kv/%01b/k", "control"),
    ("/api/kv/b%5cc/k", "backslash"),
]


def test_name_rules_answer_400_naming_the_rule(rw: httpx.Client) -> None:
    # one server for the whole table: each case is three requests, not a restart
    for url, needle in NAME_RULES:
        for method in ("GET", "PUT", "DELETE"):
            r = rw.request(method, url, content=b"v" if method == "PUT" else None)
            assert r.status_code == 400, (method, url, r.text)
            assert_error(r, 400, needle)


def test_refused_names_store_nothing(live: LiveServer, rw: httpx.Client) -> None:
    rw.put("/api/kv/b/a..b", content=b"v")
    rw.put("/api/kv/b/%01", content=b"v")
    assert rw.get("/api/kv/b").json()["keys"] == []
    assert audit_events(live, "kv.") == []


def test_empty_key_is_refused(rw: httpx.Client) -> None:
    assert_error(rw.put("/api/kv/b/", content=b"v"), 400, "empty")


# -- size caps ------------------------------------------------------------------------


def test_value_at_the_limit_is_stored(rw: httpx.Client) -> None:
    big = b"\xab" * (1024 * 1024)
    assert rw.put("/api/kv/b/max", content=big).status_code == 200
    assert rw.get("/api/kv/b/max").content == big


def test_oversized_value_is_413_and_nothing_stored(live: LiveServer, rw: httpx.Client) -> None:
    r = rw.put("/api/kv/b/big", content=b"x" * (1024 * 1024 + 1))
    assert_error(r, 413, "limit")
    assert_error(rw.get("/api/kv/b/big"), 404)
    assert audit_events(live, "kv.put") == []


def test_oversized_chunked_value_is_413_and_nothing_stored(rw: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * (64 * 1024)

    r = rw.put("/api/kv/b/chunked", content=chunks())
    assert_error(r, 413, "limit")
    assert_error(rw.get("/api/kv/b/chunked"), 404)


def test_value_cap_follows_settings(settings_factory: Any) -> None:
    from tests.conftest import start_server

    srv = start_server(settings_factory(kv_max_value_bytes=10))
    try:
        c = srv.client(srv.token("kv:read", "kv:write"))
        assert c.put("/api/kv/b/ok", content=b"0123456789").status_code == 200
        assert_error(c.put("/api/kv/b/no", content=b"0123456789!"), 413)
        assert_error(c.get("/api/kv/b/no"), 404)
    finally:
        srv.stop()


# -- authorization -------------------------------------------------------------------


def test_no_credentials_is_401(live: LiveServer) -> None:
    anon = live.client()
    assert_error(anon.get("/api/kv/b/k"), 401, "authentication required")
    assert_error(anon.put("/api/kv/b/k", content=b"v"), 401)
    assert_error(anon.delete("/api/kv/b/k"), 401)
    assert_error(anon.get("/api/kv/b"), 401)


def test_bad_credentials_are_401(live: LiveServer) -> None:
    assert_error(live.client("lat_nope").get("/api/kv/b/k"), 401, "malformed")
    basic = live.client().get("/api/kv/b/k", headers={"Authorization": "Basic YTpi"})
    assert_error(basic, 401, "Bearer")


def test_read_scope_cannot_write(live: LiveServer) -> None:
    reader = live.client(live.token("kv:read"))
    assert_error(reader.put("/api/kv/b/k", content=b"v"), 403, "kv:write")
    assert_error(reader.delete("/api/kv/b/k"), 403, "kv:write")
    assert reader.get("/api/kv/b").status_code == 200


def test_write_scope_cannot_read(live: LiveServer) -> None:
    writer = live.client(live.token("kv:write"))
    assert writer.put("/api/kv/b/k", content=b"v").status_code == 200
    r = assert_error(writer.get("/api/kv/b/k"), 403, "kv:read")
    assert r["detail"] == {"missing_scope": "kv:read"}
    assert_error(writer.get("/api/kv/b"), 403, "kv:read")


def test_other_scopes_do_not_grant_kv(live: LiveServer) -> None:
    c = live.client(live.token("static:read", "static:write", "audit:read"))
    assert_error(c.get("/api/kv/b/k"), 403, "kv:read")
    assert_error(c.put("/api/kv/b/k", content=b"v"), 403, "kv:write")


@pytest.mark.parametrize("bucket", ["plugin:x", "plugin:com.example.thing", "PLUGIN:x"])
def test_plugin_buckets_need_plugin_admin(live: LiveServer, rw: httpx.Client, bucket: str) -> None:
    for r in (
        rw.put(f"/api/kv/{bucket}/k", content=b"v"),
        rw.get(f"/api/kv/{bucket}/k"),
        rw.delete(f"/api/kv/{bucket}/k"),
        rw.get(f"/api/kv/{bucket}"),
    ):
        body = assert_error(r, 403, "plugin:admin")
        assert body["detail"] == {"missing_scope": "plugin:admin"}
    admin = live.client(live.token("kv:read", "kv:write", "plugin:admin"))
    assert admin.put(f"/api/kv/{bucket}/k", content=b"v").status_code == 200
    assert admin.get(f"/api/kv/{bucket}/k").content == b"v"
    assert admin.get(f"/api/kv/{bucket}").json()["keys"] == ["k"]
    assert admin.delete(f"/api/kv/{bucket}/k").status_code == 200
    # plugin:admin alone does not stand in for the KV scopes
    only = live.client(live.token("plugin:admin"))
    assert_error(only.get(f"/api/kv/{bucket}/k"), 403, "kv:read")


def test_bucket_merely_containing_plugin_is_not_reserved(rw: httpx.Client) -> None:
    assert rw.put("/api/kv/myplugin:x/k", content=b"v").status_code == 200
    assert rw.put("/api/kv/plugin/k", content=b"v").status_code == 200


# -- audit ---------------------------------------------------------------------------------


def test_put_and_delete_are_audited(live: LiveServer) -> None:
    token = live.token("kv:read", "kv:write", name="kv-writer")
    c = live.client(token)
    c.put("/api/kv/aud/k1", content=b"12345")
    c.put("/api/kv/aud/k1", content=b"1")
    c.delete("/api/kv/aud/k1")
    c.get("/api/kv/aud")  # reads are not audited
    events = audit_events(live, "kv.")
    assert [(e["action"], e["target"]) for e in events] == [
        ("kv.put", "aud/k1"),
        ("kv.put", "aud/k1"),
        ("kv.delete", "aud/k1"),
    ]
    assert [e["detail"] for e in events[:2]] == [{"size": 5}, {"size": 1}]
    token_id = token.split("_")[1]
    assert {e["actor"] for e in events} == {f"user:admin/token:{token_id}"}
    assert all(e["decision"] == "allow" for e in events)
    assert live.container.audit.verify() >= 3


def test_failed_delete_is_not_audited(live: LiveServer, rw: httpx.Client) -> None:
    rw.delete("/api/kv/aud/missing")
    assert audit_events(live, "kv.delete") == []


def test_audit_requires_audit_read(live: LiveServer, rw: httpx.Client) -> None:
    assert_error(rw.get("/api/audit", params={"action": "kv."}), 403, "audit:read")
