"""Operations surface over real HTTP: health, readiness, metrics, request ids,
body caps and request-parsing errors - and never a 500 for hostile input."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from lattice.store.db import Database
from tests.conftest import LiveServer

MiB = 1024 * 1024


def raw(live: LiveServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes exactly as given; return status, headers (lower-cased), body."""
    port = urlsplit(live.url).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def metric_lines(live: LiveServer, name: str) -> list[str]:
    text = live.client().get("/metrics").text
    return [line for line in text.splitlines() if line.startswith(name + "{")]


# -- health and readiness -----------------------------------------------------------------


def test_healthz_needs_no_credentials(live: LiveServer) -> None:
    r = live.client().get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_reports_the_database(live: LiveServer) -> None:
    r = live.client().get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "database": live.container.db.dialect}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readyz_is_503_json_when_the_database_is_gone(live: LiveServer) -> None:
    real = live.container.db
    broken = Database(f"postgresql+psycopg://nobody:secret-pw@127.0.0.1:{_closed_port()}/gone")
    live.container.db = broken
    try:
        r = live.client().get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "database unreachable"
        assert "secret-pw" not in r.text and "nobody" not in r.text
        # liveness is not readiness: the process itself is fine
        assert live.client().get("/healthz").status_code == 200
    finally:
        live.container.db = real
        broken.dispose()
    assert live.client().get("/readyz").status_code == 200


# -- metrics ------------------------------------------------------------------------------


def test_metrics_label_routes_by_template_not_raw_path(live: LiveServer) -> None:
    c = live.client(live.token("kv:read", "kv:write"))
    for i in range(3):
        assert c.put(f"/api/kv/bucket-{i}/secret-key-{i}", content=b"v").status_code == 200
    assert c.get("/api/kv/bucket-0/secret-key-0").status_code == 200
    assert c.get("/api/kv/bucket-0/missing").status_code == 404
    live.client().get("/no/such/route")

    r = live.client().get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "secret-key" not in text and "bucket-1" not in text and "/no/such" not in text
    route = 'route="/api/kv/{bucket}/{key:path}"'
    assert f'lattice_http_requests_total{{method="PUT",{route},status="200"}} 3.0' in text
    assert f'lattice_http_requests_total{{method="GET",{route},status="200"}} 1.0' in text
    assert f'lattice_http_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert f'lattice_http_request_duration_seconds_count{{method="PUT",{route}}} 3.0' in text
    assert 'lattice_audit_events_total{action="kv.put",decision="allow"} 3.0' in text


def test_unknown_methods_do_not_mint_metric_series(live: LiveServer) -> None:
    c = live.client()
    for method in ("PROPFIND", "PURGE", "MKCOL"):
        r = c.request(method, "/healthz")
        assert r.status_code in (400, 405, 501), (method, r.status_code)
    lines = metric_lines(live, "lattice_http_requests_total")
    methods = {re.search(r'method="([^"]*)"', line).group(1) for line in lines}  # type: ignore[union-attr]
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}


def test_audit_counter_counts_allows_and_denies(live: LiveServer) -> None:
    c = live.client(live.token("kv:read"))
    assert c.post("/api/tokens", json={"name": "ok", "scopes": ["kv:read"]}).status_code == 201
    # a token cannot mint a token with more than it holds: denied and audited
    denied = c.post("/api/tokens", json={"name": "no", "scopes": ["kv:write"]})
    assert denied.status_code == 400 and "kv:write" in denied.json()["error"]
    text = live.client().get("/metrics").text
    assert 'lattice_audit_events_total{action="token.create",decision="deny"} 1.0' in text
    # one by the fixture's token, one through the API
    assert 'lattice_audit_events_total{action="token.create",decision="allow"} 2.0' in text


# -- request ids ----------------------------------------------------------------------------


def test_request_id_is_generated(live: LiveServer) -> None:
    a = live.client().get("/healthz").headers["x-request-id"]
    b = live.client().get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", a) and re.fullmatch(r"[0-9a-f]{16}", b)
    assert a != b


def test_valid_request_id_is_echoed(live: LiveServer) -> None:
    rid = "req-2026.01_abcDEF"
    r = live.client().get("/healthz", headers={"X-Request-ID": rid})
    assert r.headers["x-request-id"] == rid
    # also on errors, including those answered by the body-limit middleware
    err = live.client().get("/api/kv/b/k", headers={"X-Request-ID": rid})
    assert err.status_code == 401 and err.headers["x-request-id"] == rid


def test_invalid_request_id_is_replaced(live: LiveServer) -> None:
    c = live.client()
    for bad in ["bad id", "short", "x" * 65, "semi;colon-123", "<script>x</script>", "ümlaut-12"]:
        r = c.get("/healthz", headers={b"X-Request-ID": bad.encode("latin-1", "replace")})
        assert r.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"]), bad


def test_request_id_with_newline_is_never_echoed(live: LiveServer) -> None:
    for value in (b"bad id\n", b"abcdefgh\n", b"abcdefghij\r"):
        status, headers, _ = raw(
            live,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: "
            + value
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert status in (200, 400)
        assert headers.get("x-request-id", "").strip() not in ("bad id", "abcdefgh")


# -- body caps and parsing -------------------------------------------------------------------


def test_json_body_over_cap_is_413(live: LiveServer) -> None:
    c = live.admin()
    body = b'{"name": "' + b"a" * MiB + b'", "scopes": ["kv:read"]}'
    r = c.post("/api/tokens", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"] == {"limit": MiB}
    assert len(c.get("/api/tokens").json()["tokens"]) == 1  # only the admin token


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"name": "'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'", "scopes": ["kv:read"]}'


def test_chunked_json_body_over_cap_is_413(live: LiveServer) -> None:
    c = live.admin()
    r = c.post(
        "/api/tokens",
        content=_chunks(2 * MiB),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413
    assert "limit" in r.json()["error"]


def test_chunked_json_body_under_cap_is_parsed(live: LiveServer) -> None:
    def small() -> Iterator[bytes]:
        yield b'{"name": "chunky",'
        yield b' "scopes": ["kv:read"]}'

    r = live.admin().post(
        "/api/tokens", content=small(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 201, r.text


def test_invalid_content_length_is_400(live: LiveServer) -> None:
    for value in (b"abc", b"-1", b"1e3", b"\xb2", b"0x10", b" 5 5", b"+5"):
        status, _, _ = raw(
            live,
            b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + value + b"\r\nConnection: close\r\n\r\n{}",
        )
        assert status == 400, value


def test_declared_length_over_cap_is_413_before_reading(live: LiveServer) -> None:
    status, headers, body = raw(
        live,
        b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2097152\r\nConnection: close\r\n\r\n{",
    )
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert b"limit" in body


def test_malformed_json_is_400(live: LiveServer) -> None:
    c = live.admin()
    for body in (b"{", b'{"name": }', b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b"nul"):
        r = c.post("/api/tokens", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), (body[:20], r.status_code, r.text)
        assert set(r.json()) == {"error", "detail"}
    r = c.post("/api/tokens", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] == "malformed JSON body"


def test_unknown_field_is_422_naming_it(live: LiveServer) -> None:
    r = live.admin().post(
        "/api/tokens", json={"name": "t", "scopes": ["kv:read"], "sneaky_extra": True}
    )
    assert r.status_code == 422
    body = r.json()
    assert "sneaky_extra" in body["error"]
    assert body["detail"][0]["field"] == "sneaky_extra"


def test_wrong_type_is_422_naming_the_field(live: LiveServer) -> None:
    c = live.admin()
    r = c.post("/api/tokens", json={"name": 5, "scopes": ["kv:read"]})
    assert r.status_code == 422 and r.json()["error"].startswith("name:")
    r = c.post("/api/tokens", json={"name": "t", "scopes": "kv:read"})
    assert r.status_code == 422 and r.json()["error"].startswith("scopes:")
    r = c.post("/api/tokens", json={"name": "t", "scopes": ["kv:read"], "expires_in_days": "1"})
    assert r.status_code == 422 and r.json()["error"].startswith("expires_in_days:")
    r = c.post("/api/tokens", json=["not", "an", "object"])
    assert r.status_code == 422
    r = c.post("/api/tokens", json={"scopes": ["kv:read"]})
    assert r.status_code == 422 and r.json()["error"].startswith("name:")


def test_openapi_is_served(live: LiveServer) -> None:
    r = live.client().get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["info"]["title"] == "Lattice"
    for path in ("/api/kv/{bucket}/{key}", "/api/kv/{bucket}", "/api/static/{bucket}/{path}"):
        assert path in spec["paths"], path
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


# -- never a 500 -------------------------------------------------------------------------------


def test_hostile_inputs_never_produce_a_500(live: LiveServer) -> None:
    token = live.admin_token
    auth = f"Authorization: Bearer {token}\r\n".encode()
    requests = [
        b"GET /api/kv/b/%ff%fe HTTP/1.1\r\nHost: x\r\n" + auth,
        b"GET /api/kv/%ff/k HTTP/1.1\r\nHost: x\r\n" + auth,
        b"GET /api/kv/b?prefix=%00&cursor=%ff HTTP/1.1\r\nHost: x\r\n" + auth,
        b"GET /api/kv/b?limit=99999999999999999999999 HTTP/1.1\r\nHost: x\r\n" + auth,
        b"GET /api/static/b?cursor=%00 HTTP/1.1\r\nHost: x\r\n" + auth,
        b"PUT /api/kv/b/%00 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n" + auth,
        b"PUT /api/static/b/../x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n" + auth,
        b"PUT /api/static/b/x HTTP/1.1\r\nHost: x\r\nContent-Type: \xff/\xfe\r\n"
        b"Content-Length: 1\r\n" + auth,
        b"GET /api/kv/b/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n",
        b"GET /api/kv/b/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n",
        b"GET /api/kv/b/k HTTP/1.1\r\nHost: x\r\nCookie: lattice_session=%00\r\n",
        b"GET /api/audit?since=%00 HTTP/1.1\r\nHost: x\r\n" + auth,
        b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1\r\n" + auth,
        b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 1\r\n" + auth,
        b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n",
    ]
    for head in requests:
        status, _, body = raw(live, head + b"Connection: close\r\n\r\nx")
        assert status < 500, (head, status, body[:200])
    lines = metric_lines(live, "lattice_http_requests_total")
    assert not [line for line in lines if 'status="5' in line], lines


def test_nul_in_audit_filters_is_a_client_error(live: LiveServer) -> None:
    c = live.client(live.token("audit:read"))
    for name in ("action", "actor", "target"):
        r = c.get("/api/audit", params={name: "a\x00b"})
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert "control characters" in r.json()["error"]


def test_errors_are_json_everywhere(live: LiveServer) -> None:
    c = live.client()
    for r in (
        c.get("/nope"),
        c.post("/healthz"),
        c.get("/api/kv/b/k"),
        c.get("/api/kv/b", params={"limit": "x"}),
    ):
        assert r.status_code in (401, 404, 405, 422)
        assert set(r.json()) == {"error", "detail"}
