"""Static storage over real HTTP: content types, caps, hostile paths, scopes."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import LiveServer, start_server


@pytest.fixture
def rw(live: LiveServer) -> httpx.Client:
    return live.client(live.token("static:read", "static:write"))


def assert_error(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    for needle in needles:
        assert needle in body["error"], body
    return body  # type: ignore[no-any-return]


def raw_request(live: LiveServer, method: str, target: str, token: str, body: bytes = b"") -> int:
    """Send a request line exactly as given (httpx would normalize ``a/../b``)."""
    port = urlsplit(live.url).port
    assert port is not None
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


# -- round trips ---------------------------------------------------------------------


def test_content_type_is_kept_exactly(rw: httpx.Client) -> None:
    css = b"body { color: red }\n"
    put = rw.put("/api/static/site/css/app.css", content=css, headers={"content-type": "text/css"})
    assert put.status_code == 200, put.text
    meta = put.json()
    assert meta["content_type"] == "text/css"
    assert meta["size"] == len(css)
    assert meta["sha256"] == hashlib.sha256(css).hexdigest()
    got = rw.get("/api/static/site/css/app.css")
    assert got.status_code == 200
    assert got.headers["content-type"] == "text/css"  # no charset appended
    assert got.content == css
    assert got.headers["etag"] == f'"{meta["sha256"]}"'
    assert got.headers["x-content-type-options"] == "nosniff"


def test_content_type_parameters_are_kept(rw: httpx.Client) -> None:
    ct = "text/plain; charset=iso-8859-1"
    rw.put("/api/static/b/readme.txt", content=b"caf\xe9", headers={"content-type": ct})
    got = rw.get("/api/static/b/readme.txt")
    assert got.headers["content-type"] == ct
    assert got.content == b"caf\xe9"


def test_missing_content_type_defaults_to_octet_stream(rw: httpx.Client) -> None:
    r = rw.put("/api/static/b/blob", content=bytes(range(256)))
    assert r.json()["content_type"] == "application/octet-stream"
    got = rw.get("/api/static/b/blob")
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.content == bytes(range(256))


def test_uploaded_html_is_sandboxed(rw: httpx.Client) -> None:
    page = b"<script>fetch('/api/me')</script>"
    rw.put("/api/static/b/x.html", content=page, headers={"content-type": "text/html"})
    got = rw.get("/api/static/b/x.html")
    assert got.headers["content-type"] == "text/html"
    assert "sandbox" in got.headers["content-security-policy"]


def test_overwrite_replaces_data_and_type(rw: httpx.Client) -> None:
    rw.put("/api/static/b/f", content=b"one", headers={"content-type": "text/plain"})
    rw.put("/api/static/b/f", content=b"{}", headers={"content-type": "application/json"})
    got = rw.get("/api/static/b/f")
    assert got.content == b"{}"
    assert got.headers["content-type"] == "application/json"
    assert [o["path"] for o in rw.get("/api/static/b").json()["objects"]] == ["f"]


def test_delete_then_missing_is_404(rw: httpx.Client) -> None:
    rw.put("/api/static/b/a/b.txt", content=b"x", headers={"content-type": "text/plain"})
    r = rw.delete("/api/static/b/a/b.txt")
    assert r.status_code == 200 and r.json() == {"deleted": "a/b.txt"}
    assert_error(rw.get("/api/static/b/a/b.txt"), 404, "no object")
    assert_error(rw.delete("/api/static/b/a/b.txt"), 404, "no object")


def test_listing_with_prefix_and_pages(rw: httpx.Client) -> None:
    paths = [f"img/{i:02d}.png" for i in range(7)]
    for p in [*paths, "index.html", "IMG/x.png", "img_x"]:
        rw.put(f"/api/static/site/{p}", content=p.encode(), headers={"content-type": "image/png"})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"prefix": "img/", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = rw.get("/api/static/site", params=params).json()
        pages += 1
        seen += [o["path"] for o in body["objects"]]
        for o in body["objects"]:
            assert set(o) == {"path", "content_type", "size", "sha256", "updated_at"}
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == paths
    assert pages == 3
    # '_' and case do not widen the prefix
    img_ = rw.get("/api/static/site", params={"prefix": "img_"}).json()["objects"]
    assert [o["path"] for o in img_] == ["img_x"]


def test_listing_rejects_bad_arguments(rw: httpx.Client) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"prefix": "a\x00"}, "control"),
        ({"prefix": "a\\b"}, "backslash"),
        ({"cursor": "a\x00"}, "control"),
        ({"limit": 0}, "limit"),
    ]
    for params, needle in bad:
        r = rw.get("/api/static/b", params=params)
        assert r.status_code in (400, 422), (params, r.text)
        assert needle in r.json()["error"], params


# -- size caps ------------------------------------------------------------------------


def test_size_cap_from_settings(settings_factory: Any) -> None:
    srv = start_server(settings_factory(static_max_bytes=1000))
    try:
        c = srv.client(srv.token("static:read", "static:write"))
        ok = c.put("/api/static/b/ok", content=b"a" * 1000)
        assert ok.status_code == 200
        assert_error(c.put("/api/static/b/big", content=b"a" * 1001), 413, "1000")

        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b"b" * 300

        assert_error(c.put("/api/static/b/chunked", content=chunks()), 413)
        assert_error(c.get("/api/static/b/big"), 404)
        assert_error(c.get("/api/static/b/chunked"), 404)
        assert [o["path"] for o in c.get("/api/static/b").json()["objects"]] == ["ok"]
    finally:
        srv.stop()


# -- hostile paths ------------------------------------------------------------------------

HOSTILE = [
    "/api/static/b/a/../b",
    "/api/static/b/../b",
    "/api/static/b/%2e%2e/x",
    "/api/static/b/%2E%2E/x",
    "/api/static/b/..%2fx",
    "/api/static/b/x/%2e%2e%2f%2e%2e%2fetc",
    "/api/static/b/./x",
    "/api/static/b/a//b",
    "/api/static/b//etc/passwd",
    "/api/static/b/a%00b",
    "/api/static/b/a%5cb",
    "/api/static/b/..%5cx",
    "/api/static/b/a%0d%0ab",
    "/api/static/b/x/",
    "/api/static/b/a%20b",
    "/api/static/b/" + "x" * 1025,
    "/api/static/b%5c/x",
    "/api/static/..%2f/x",
]


def test_hostile_paths_are_refused_and_store_nothing(live: LiveServer) -> None:
    token = live.token("static:read", "static:write")
    for target in HOSTILE:
        for method in ("PUT", "GET", "DELETE"):
            status = raw_request(live, method, target, token, b"evil")
            assert status in (400, 404), (method, target, status)
    admin = live.admin()
    for bucket in ("b", "etc", "x"):
        assert admin.get(f"/api/static/{bucket}").json()["objects"] == []
    assert (
        live.client(live.token("audit:read"))
        .get("/api/audit", params={"action": "static."})
        .json()["events"]
        == []
    )


PATH_RULES = [
    ("%2e%2e/x", "'..'"),
    ("..%2fx", "'..'"),
    ("/etc/passwd", "relative"),
    ("a%00b", "control"),
    ("a%5cb", "backslash"),
    ("a%20b", "may hold only"),
    ("x" * 1025, "at most 1024"),
]

BAD_CONTENT_TYPES = [
    "text",
    "text/",
    "/css",
    "text/css;",
    "text/css; x",
    "t e/x",
    'a/b; x="\xe9"',
    "x" * 300,
]


def test_hostile_path_messages_name_the_rule(rw: httpx.Client) -> None:
    for path, needle in PATH_RULES:
        r = rw.put("/api/static/b/" + path, content=b"x", headers={"content-type": "text/plain"})
        assert_error(r, 400, needle)


def test_bad_content_type_is_400(rw: httpx.Client) -> None:
    for content_type in BAD_CONTENT_TYPES:
        r = rw.put(
            "/api/static/b/f",
            content=b"x",
            headers={b"content-type": content_type.encode("latin-1")},
        )
        assert_error(r, 400, "content type")
    assert_error(rw.get("/api/static/b/f"), 404)


# -- authorization ---------------------------------------------------------------------------


def test_scopes(live: LiveServer) -> None:
    anon = live.client()
    assert_error(anon.get("/api/static/b/f"), 401)
    assert_error(anon.put("/api/static/b/f", content=b"x"), 401)
    reader = live.client(live.token("static:read"))
    assert_error(reader.put("/api/static/b/f", content=b"x"), 403, "static:write")
    assert_error(reader.delete("/api/static/b/f"), 403, "static:write")
    writer = live.client(live.token("static:write"))
    assert writer.put("/api/static/b/f", content=b"x").status_code == 200
    assert_error(writer.get("/api/static/b/f"), 403, "static:read")
    assert_error(writer.get("/api/static/b"), 403, "static:read")
    kv = live.client(live.token("kv:read", "kv:write"))
    assert_error(kv.get("/api/static/b/f"), 403, "static:read")
    assert reader.get("/api/static/b/f").content == b"x"


def test_plugin_buckets_need_plugin_admin(live: LiveServer, rw: httpx.Client) -> None:
    assert_error(rw.put("/api/static/plugin:x/f", content=b"x"), 403, "plugin:admin")
    assert_error(rw.get("/api/static/plugin:x/f"), 403, "plugin:admin")
    assert_error(rw.get("/api/static/plugin:x"), 403, "plugin:admin")
    admin = live.client(live.token("static:read", "static:write", "plugin:admin"))
    assert admin.put("/api/static/plugin:x/f", content=b"x").status_code == 200
    assert admin.get("/api/static/plugin:x/f").content == b"x"


def test_put_and_delete_are_audited(live: LiveServer, rw: httpx.Client) -> None:
    rw.put("/api/static/b/f.txt", content=b"abc", headers={"content-type": "text/plain"})
    rw.delete("/api/static/b/f.txt")
    auditor = live.client(live.token("audit:read"))
    events = auditor.get("/api/audit", params={"action": "static.", "order": "asc"}).json()
    got = [(e["action"], e["target"], e["detail"]) for e in events["events"]]
    assert got == [
        ("static.put", "b/f.txt", {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}),
        ("static.delete", "b/f.txt", {}),
    ]
