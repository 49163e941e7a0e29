"""Workers: the operator API (scope ``worker:deploy``) and route serving at
``/w/{name}/{path}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from lattice.api.deps import container, principal_from, scope
from lattice.api.errors import error_response
from lattice.api.models import Strict
from lattice.container import Container
from lattice.core.auth import Principal
from lattice.errors import NotFound, PayloadTooLarge, WorkerError, WorkerTimeout
from lattice.plugins.runners.js import WorkerRequest
from lattice.plugins.workers import GuardedReads, WorkerSpec, validate_spec
from lattice.services.worker_store import StoredWorker

router = APIRouter(prefix="/api/workers", tags=["workers"])
serve_router = APIRouter(tags=["workers"])

C = Annotated[Container, Depends(container)]
Deployer = Annotated[Principal, scope("worker:deploy")]

_DROP_HEADERS = frozenset(
    {"authorization", "cookie", "x-csrf-token", "proxy-authorization", "host", "content-length"}
)


class WorkerBody(Strict):
    kind: str = Field(pattern="^(template|js)$")
    source: str = Field(min_length=1, max_length=256 * 1024)
    capabilities: list[str] = Field(min_length=1, max_length=8)
    bindings: dict[str, dict[str, str]] = Field(default_factory=dict, max_length=32)
    public: bool = False
    content_type: str | None = Field(default=None, max_length=255)


def spec_of(stored: StoredWorker) -> WorkerSpec:
    return validate_spec(
        name=stored.name,
        kind=stored.kind,
        source=stored.source,
        capabilities=stored.capabilities,
        bindings=stored.bindings,
        public=stored.public,
        content_type=stored.content_type,
        revision=stored.revision,
    )


def reads_for(c: Container, spec: WorkerSpec) -> GuardedReads:
    return GuardedReads(spec, kv=c.kv, static=c.static, logs=c.logs, audit=c.host_audit)


def _public(stored: StoredWorker) -> dict[str, Any]:
    return {**stored.__dict__, "origin": "operator"}


@router.get("")
def list_workers(_p: Deployer, c: C) -> dict[str, Any]:
    stored = [_public(w) for w in c.worker_store.all()]
    plugins = [
        spec.to_public_dict() for spec in c.workers.names().values() if spec.origin != "operator"
    ]
    return {"workers": stored + plugins}


@router.get("/{name}")
def get_worker(name: str, _p: Deployer, c: C) -> dict[str, Any]:
    stored = c.worker_store.get(name)
    if stored is None:
        raise NotFound(f"no worker named {name!r}")
    return _public(stored)


@router.get("/{name}/logs")
def worker_logs(
    name: str,
    _p: Deployer,
    c: C,
    cursor: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Console output and error stacks of an operator worker."""
    if c.worker_store.get(name) is None:
        raise NotFound(f"no worker named {name!r}")
    lines, nxt = c.logs.list(f"worker:{name}", cursor=cursor, limit=limit)
    return {"worker": name, "logs": [line.to_dict() for line in lines], "next_cursor": nxt}


@router.put("/{name}")
async def put_worker(name: str, body: WorkerBody, p: Deployer, c: C) -> dict[str, Any]:
    # 1. every rule, before anything is stored or swapped
    try:
        spec = validate_spec(
            name=name,
            kind=body.kind,
            source=body.source,
            capabilities=body.capabilities,
            bindings=body.bindings,
            public=body.public,
            content_type=body.content_type,
        )
    except WorkerError as exc:
        await run_in_threadpool(
            c.audit.append,
            actor=p.actor,
            action="worker.upsert",
            target=name[:64],
            decision="deny",
            reason=exc.message,
        )
        raise
    # 2. compile and swap in (a JS source that does not compile fails here)
    await c.workers.deploy(spec, reads_for(c, spec))
    # 3. persist, then audit
    stored = await run_in_threadpool(
        c.worker_store.upsert,
        name=spec.name,
        kind=spec.kind,
        source=spec.source,
        capabilities=sorted(spec.capabilities),
        bindings={k: dict(v) for k, v in spec.bindings.items()},
        public=spec.public,
        content_type=spec.content_type,
    )
    await run_in_threadpool(
        c.audit.append,
        actor=p.actor,
        action="worker.upsert",
        target=name,
        detail={"kind": spec.kind, "revision": stored.revision, "public": spec.public},
    )
    return _public(stored)


@router.delete("/{name}")
async def delete_worker(name: str, p: Deployer, c: C) -> dict[str, Any]:
    if not await run_in_threadpool(c.worker_store.delete, name):
        raise NotFound(f"no worker named {name!r}")
    await c.workers.remove(name, origin="operator")
    await run_in_threadpool(c.audit.append, actor=p.actor, action="worker.delete", target=name)
    return {"deleted": name}


_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_OWN_COOKIES = ("lattice_",)
_WORKER_CSP = "sandbox allow-scripts allow-forms allow-popups allow-downloads"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@serve_router.api_route("/w/{name}", methods=_METHODS, include_in_schema=False)
@serve_router.api_route("/w/{name}/{path:path}", methods=_METHODS, include_in_schema=False)
async def serve(name: str, request: Request, c: C, path: str = "") -> Response:
    """Serve a worker route (public workers; others need an authenticated caller)."""
    try:
        async with c.workers.lease(name) as live:
            if not live.spec.public:
                await run_in_threadpool(principal_from, request)
            worker_request = None
            if live.js is not None:  # a template needs only the path
                headers = [
                    (k, v) for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS
                ]
                worker_request = WorkerRequest(
                    method=request.method,
                    url=str(request.url),
                    headers=headers,
                    body=await request.body(),
                )
            result = await c.workers.run(live, worker_request, "/" + path)
    except NotFound:
        return error_response(404, f"no worker named {name!r}")
    except WorkerTimeout:
        return error_response(503, "worker exceeded its time limit; try again")
    except PayloadTooLarge:
        raise  # the request body was over the cap: 413
    except WorkerError:
        return error_response(500, "worker failed; its plugin log has details")
    response = Response(content=result.body, status_code=result.status)
    for key, value in result.headers:
        lower = key.lower()
        if lower in _HOP_HEADERS:
            continue
        if lower == "set-cookie" and value.lstrip().lower().startswith(_OWN_COOKIES):
            continue  # a worker may not touch the control plane's own cookies
        response.headers.append(key, value)
    # Workers share the API's origin: sandbox their pages into an opaque origin
    # so a worker's script can never read the API with an operator's session.
    response.headers.append("content-security-policy", _WORKER_CSP)
    response.headers["x-content-type-options"] = "nosniff"
    return response
