"""Static storage over HTTP: bytes with their content type kept."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from lattice.api.deps import container, guard_bucket, scope
from lattice.container import Container
from lattice.core.auth import Principal
from lattice.errors import NotFound

router = APIRouter(prefix="/api/static", tags=["static"])

C = Annotated[Container, Depends(container)]
Reader = Annotated[Principal, scope("static:read")]
Writer = Annotated[Principal, scope("static:write")]
_SANDBOX = "default-src 'none'; sandbox"


@router.get("/{bucket}")
def list_objects(
    bucket: str,
    p: Reader,
    c: C,
    prefix: Annotated[str, Query(max_length=1024)] = "",
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    guard_bucket(p, bucket)
    objs, next_cursor = c.static.list(bucket, prefix=prefix, cursor=cursor, limit=limit)
    return {"bucket": bucket, "objects": [o.meta() for o in objs], "next_cursor": next_cursor}


@router.get("/{bucket}/{path:path}")
def get_object(bucket: str, path: str, p: Reader, c: C) -> Response:
    guard_bucket(p, bucket)
    obj = c.static.get(bucket, path)
    if obj is None:
        raise NotFound(f"no object {path!r} in bucket {bucket!r}")
    # Content-Type goes in as a header (not media_type) so Starlette does not
    # append a charset to what the uploader stored.  The CSP sandbox keeps an
    # uploaded HTML/SVG object from running script in the dashboard's origin.
    return Response(
        obj.data,
        headers={
            "content-type": obj.content_type,
            "etag": f'"{obj.sha256}"',
            "x-content-type-options": "nosniff",
            "content-security-policy": _SANDBOX,
        },
    )


@router.put("/{bucket}/{path:path}")
async def put_object(bucket: str, path: str, request: Request, p: Writer, c: C) -> dict[str, Any]:
    guard_bucket(p, bucket)
    content_type = request.headers.get("content-type") or "application/octet-stream"
    body = await request.body()
    return await run_in_threadpool(_store, c, p, bucket, path, body, content_type)


def _store(
    c: Container, p: Principal, bucket: str, path: str, body: bytes, content_type: str
) -> dict[str, Any]:
    obj = c.static.put(bucket, path, body, content_type)
    c.audit.append(
        actor=p.actor,
        action="static.put",
        target=f"{bucket}/{path}",
        detail={"size": obj.size, "sha256": obj.sha256},
    )
    return {"bucket": bucket, **obj.meta()}


@router.delete("/{bucket}/{path:path}")
def delete_object(bucket: str, path: str, p: Writer, c: C) -> dict[str, Any]:
    guard_bucket(p, bucket)
    if not c.static.delete(bucket, path):
        raise NotFound(f"no object {path!r} in bucket {bucket!r}")
    c.audit.append(actor=p.actor, action="static.delete", target=f"{bucket}/{path}")
    return {"deleted": path}
