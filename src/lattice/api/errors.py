"""Every error leaves the API as ``{"error": message, "detail": ...}``.

Lattice errors carry their own status; validation errors from request
parsing become 422 (400 for malformed JSON) with the failing field named; any
other exception is logged with its request id and answered with a bare 500
that reveals nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lattice.core.logging import request_id_var
from lattice.errors import LatticeError, RateLimited

__all__ = ["error_response", "install_error_handlers"]

log = logging.getLogger("lattice.api")


def error_response(status: int, message: str, detail: Any = None, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LatticeError)
    async def _lattice(_req: Request, exc: LatticeError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if exc.status_code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return error_response(exc.status_code, exc.message, exc.detail, **headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed JSON body", None)
        problems = [
            {"field": _field(e.get("loc", ())), "problem": str(e.get("msg", "invalid"))}
            for e in errors
        ]
        first = problems[0] if problems else {"field": "body", "problem": "invalid"}
        return error_response(422, f"{first['field']}: {first['problem']}", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, LatticeError):  # e.g. body cap hit while parsing
            return await _lattice(req, exc.__cause__)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message, None, **(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        rid = request_id_var.get()
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return error_response(
            500, "internal error; the server log has details", {"request_id": rid}
        )
