"""Liveness, readiness and Prometheus metrics (no authentication)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from lattice.api.deps import container
from lattice.api.errors import error_response
from lattice.container import Container
from lattice.errors import StoreError

router = APIRouter(tags=["ops"])

C = Annotated[Container, Depends(container)]


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(c: C) -> dict[str, Any] | Response:
    try:
        c.db.ping()
    except StoreError as exc:
        return error_response(503, "database unreachable", {"reason": exc.message})
    return {"status": "ready", "database": c.db.dialect}


@router.get("/metrics")
def metrics(c: C) -> Response:
    return Response(c.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
