"""The interactive API docs (Swagger UI), served entirely from this server.

FastAPI's default page loads Swagger UI from a CDN and is blank offline; here
its assets come from the ``swagger-ui-bundle`` package, under a fixed list of
file names (nothing else in that directory is reachable).
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from lattice.errors import NotFound

__all__ = ["ASSETS_PREFIX", "router"]

ASSETS_PREFIX = "/docs/assets"
_ASSET_DIR = Path(swagger_ui_bundle.swagger_ui_path)
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Lattice API",
        swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PREFIX}/favicon-32x32.png",
        # no badge fetched from validator.swagger.io
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(ASSETS_PREFIX + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no docs asset named {name!r}")
    return FileResponse(
        _ASSET_DIR / name, media_type=media_type, headers={"Cache-Control": "max-age=86400"}
    )
