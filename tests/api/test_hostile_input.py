"""Hostile text and numbers in names, fields and ids: a 4xx on both backends, never a 5xx."""

from tests.conftest import LiveServer


def test_nul_in_any_name_or_field_is_a_client_error(live: LiveServer) -> None:
    a = live.admin()
    cases = [
        ("POST", "/api/plugins/lifecycle", {"json": {"id": "a\x00b", "status": "installed"}}),
        ("GET", "/api/plugins/a%00b/logs", {}),
        ("PUT", "/api/plugins/a%00b/egress", {"json": {"allow_hosts": None}}),
        ("DELETE", "/api/tokens/a%00b", {}),
        ("GET", "/api/workers/a%00b", {}),
        ("DELETE", "/api/workers/a%00b", {}),
        ("GET", "/api/workers/a%00b/logs", {}),
        (
            "PUT",
            "/api/workers/a%00b",
            {"json": {"kind": "template", "source": "x\x00", "capabilities": ["worker:route"]}},
        ),
        (
            "PUT",
            "/api/workers/ok",
            {"json": {"kind": "template", "source": "x\x00", "capabilities": ["worker:route"]}},
        ),
        ("POST", "/api/tokens", {"json": {"name": "a\x00", "scopes": ["kv:read"]}}),
        ("POST", "/api/login", {"json": {"username": "a\x00", "password": "b"}}),
        (
            "POST",
            "/api/notify/channels",
            {"json": {"name": "a\x00", "url": "json://127.0.0.1/", "tags": []}},
        ),
        ("GET", "/w/a%00b/x", {}),
        ("GET", "/api/notify/deliveries?status=a%00", {}),
    ]
    bad = []
    for method, url, kw in cases:
        r = a.request(method, url, **kw)
        if r.status_code >= 500:
            bad.append((method, url, r.status_code, r.text[:200]))
    assert not bad, bad


def test_numbers_beyond_64_bits_are_a_client_error(live: LiveServer) -> None:
    a = live.admin()
    huge = 2**80
    for method, url, kw in (
        ("PATCH", f"/api/notify/channels/{huge}", {"json": {"enabled": False}}),
        ("DELETE", f"/api/notify/channels/{huge}", {}),
        ("GET", f"/api/audit?cursor={huge}", {}),
        ("GET", f"/api/plugins/x.y/logs?cursor={huge}", {}),
    ):
        r = a.request(method, url, **kw)
        assert 400 <= r.status_code < 500, (method, url, r.status_code, r.text)
