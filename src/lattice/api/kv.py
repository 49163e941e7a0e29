"""KV over HTTP: raw byte values, JSON listings.

Buckets named ``plugin:*`` belong to plugins: reading or writing them needs
``plugin:admin`` on top of the KV scope.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from lattice.api.deps import container, guard_bucket, lean_get, read_store, scope
from lattice.container import Container
from lattice.core.auth import Principal
from lattice.errors import NotFound

router = APIRouter(prefix="/api/kv", tags=["kv"])

C = Annotated[Container, Depends(container)]
Reader = Annotated[Principal, scope("kv:read")]
Writer = Annotated[Principal, scope("kv:write")]


@router.get("/{bucket}")
def list_keys(
    bucket: str,
    p: Reader,
    c: C,
    prefix: Annotated[str, Query(max_length=512)] = "",
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    guard_bucket(p, bucket)
    keys, next_cursor = c.kv.list(bucket, prefix=prefix, cursor=cursor, limit=limit)
    return {"bucket": bucket, "keys": keys, "next_cursor": next_cursor}


@lean_get(
    router,
    "/{bucket}/{key:path}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the value"}},
)
async def get_value(bucket: str, key: str, request: Request, p: Reader, c: C) -> Response:
    guard_bucket(p, bucket)
    value = await read_store(request, c.kv.get, bucket, key)
    if value is None:
        raise NotFound(f"no key {key!r} in bucket {bucket!r}")
    return Response(value, media_type="application/octet-stream")


@router.put("/{bucket}/{key:path}")
async def put_value(bucket: str, key: str, request: Request, p: Writer, c: C) -> dict[str, Any]:
    guard_bucket(p, bucket)
    body = await request.body()
    return await run_in_threadpool(_store, c, p, bucket, key, body)


def _store(c: Container, p: Principal, bucket: str, key: str, body: bytes) -> dict[str, Any]:
    c.kv.put(bucket, key, body)
    c.audit.append(
        actor=p.actor, action="kv.put", target=f"{bucket}/{key}", detail={"size": len(body)}
    )
    return {"bucket": bucket, "key": key, "size": len(body)}


@router.delete("/{bucket}/{key:path}")
def delete_value(bucket: str, key: str, p: Writer, c: C) -> dict[str, Any]:
    guard_bucket(p, bucket)
    if not c.kv.delete(bucket, key):
        raise NotFound(f"no key {key!r} in bucket {bucket!r}")
    c.audit.append(actor=p.actor, action="kv.delete", target=f"{bucket}/{key}")
    return {"deleted": key}
