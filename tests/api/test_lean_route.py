"""LeanRoute: the direct-call shortcut refuses any endpoint it could get wrong."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, Query, Request, Response

from lattice.api.deps import LeanRoute, container, lean_get, scope
from lattice.api.kv import router as kv_router
from lattice.container import Container
from lattice.core.auth import Principal
from lattice.core.metrics import HttpStats

Reader = Annotated[Principal, scope("kv:read")]
C = Annotated[Container, Depends(container)]


def test_kv_get_is_lean_and_keeps_its_scope() -> None:
    (route,) = [r for r in kv_router.routes if getattr(r, "name", "") == "get_value"]
    assert isinstance(route, LeanRoute)
    (dep,) = route.dependant.dependencies[:1]
    assert getattr(dep.call, "scope", None) == "kv:read"


def test_a_supported_endpoint_builds() -> None:
    router = APIRouter()

    @lean_get(router, "/x/{a}/{b:path}")
    async def ok(a: str, b: str, request: Request, p: Reader, c: C) -> Response:
        return Response(b"")

    assert isinstance(router.routes[0], LeanRoute)


def _fails(fn: Any, path: str = "/x/{a}") -> None:
    with pytest.raises(TypeError):
        lean_get(APIRouter(), path)(fn)


def test_query_parameters_are_refused() -> None:
    async def fn(a: str, p: Reader, q: Annotated[int, Query()] = 1) -> Response:
        return Response(b"")

    _fails(fn)


def test_non_string_path_parameters_are_refused() -> None:
    async def fn(a: int, p: Reader) -> Response:  # FastAPI would validate the int
        return Response(b"")

    _fails(fn)


def test_an_endpoint_without_a_scope_is_refused() -> None:
    async def fn(a: str, c: C) -> Response:
        return Response(b"")

    _fails(fn)


def test_other_dependencies_are_refused() -> None:
    def other() -> int:
        return 1

    async def fn(a: str, p: Reader, x: Annotated[int, Depends(other)]) -> Response:
        return Response(b"")

    _fails(fn)


def test_sync_endpoints_are_refused() -> None:
    def fn(a: str, p: Reader) -> Response:
        return Response(b"")

    _fails(fn)


def test_http_stats_histogram_is_cumulative() -> None:
    stats = HttpStats(buckets=(0.01, 0.1))
    for seconds in (0.005, 0.05, 0.05, 3.0):
        stats.record("GET", "/r", 200, seconds)
    stats.record("GET", "/r", 404, 0.001)
    families = {f.name: f for f in stats.collect()}
    counts = {
        s.labels["status"]: s.value
        for s in families["lattice_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert counts == {"200": 4, "404": 1}
    hist = {
        (s.name, s.labels.get("le")): s.value
        for s in families["lattice_http_request_duration_seconds"].samples
    }
    assert hist[("lattice_http_request_duration_seconds_bucket", "0.01")] == 2
    assert hist[("lattice_http_request_duration_seconds_bucket", "0.1")] == 4
    assert hist[("lattice_http_request_duration_seconds_bucket", "+Inf")] == 5
    assert hist[("lattice_http_request_duration_seconds_count", None)] == 5
    assert hist[("lattice_http_request_duration_seconds_sum", None)] == pytest.approx(3.106)
