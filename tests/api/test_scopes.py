"""The auth matrix: every API route declares a scope and enforces it."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute

from lattice.api.deps import RequireScope
from lattice.api.workers import serve_router
from lattice.app import ROUTERS
from lattice.core.scopes import SCOPES
from tests.conftest import LiveServer

# Worker routes (/w/...) are public or need any authenticated caller, per worker:
# tests/api/test_workers.py covers them.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/api/login", "/openapi.json", "/docs", "/redoc"}


def declared_scopes(live: LiveServer) -> list[tuple[str, str, str | None]]:
    out = []
    for route in (r for router in ROUTERS if router is not serve_router for r in router.routes):
        if not isinstance(route, APIRoute) or route.path in PUBLIC:
            continue
        scopes = [
            d.call.scope for d in route.dependant.dependencies if isinstance(d.call, RequireScope)
        ]
        assert len(scopes) == 1, f"{route.path} must declare exactly one scope, has {scopes}"
        for method in sorted(route.methods):
            out.append((method, route.path, scopes[0]))
    return out


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_catalog_has_the_required_scopes() -> None:
    required = {
        "plugin:admin", "plugin:verify", "plugin:read", "audit:read", "kv:read", "kv:write",
        "static:read", "static:write", "worker:deploy", "notify:admin", "node:read",
        "node:admin", "task:read", "task:run", "approval:admin",
    }  # fmt: skip
    assert required <= set(SCOPES)


def test_every_route_needs_credentials_and_its_scope(live: LiveServer) -> None:
    routes = declared_scopes(live)
    assert len(routes) >= 10
    anon = live.client()
    for method, path, scope in routes:
        url = concrete(path)
        r = anon.request(method, url)
        assert r.status_code == 401, (method, path, r.status_code)
        if scope is None:
            continue
        other = next(s for s in SCOPES if s != scope)
        wrong = live.client(live.token(other)).request(method, url)
        assert wrong.status_code == 403, (method, path, wrong.status_code)
        assert wrong.json()["detail"] == {"missing_scope": scope}
        right = live.client(live.token(scope)).request(method, url)
        assert right.status_code not in (401, 403), (method, path, right.text)
