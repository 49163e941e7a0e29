"""Workers: the operator API (scope ``worker:deploy``) and route serving at
``/w/{name}/{path}``."""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from lattice.api.deps import container, get_container, principal_from, read_store, scope
from lattice.api.errors import error_response
from lattice.api.models import Strict
from lattice.container import Container
from lattice.core.auth import Principal
from lattice.errors import (
    LatticeError,
    NotFound,
    PayloadTooLarge,
    ScopeDenied,
    WorkerError,
    WorkerTimeout,
)
from lattice.plugins.runners.js import WorkerRequest, WorkerResponse
from lattice.plugins.runners.template import TEMPLATE_TAG
from lattice.plugins.worker_registry import LiveWorker
from lattice.plugins.workers import GuardedReads, WorkerSpec, validate_spec
from lattice.services.worker_store import StoredWorker

router = APIRouter(prefix="/api/workers", tags=["workers"])
serve_router = APIRouter(tags=["workers"])

C = Annotated[Container, Depends(container)]
Deployer = Annotated[Principal, scope("worker:deploy")]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]{0,16384}")
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


#: the deployer must hold the scope that reads what a worker capability reads
_READ_SCOPES = {"kv:read": "kv:read", "static:read": "static:read"}


def _reads_of(spec: WorkerSpec) -> dict[str, list[str]]:
    """The buckets a worker reads: its bindings and the buckets its template names."""
    kv = {b["kv"] for b in spec.bindings.values() if "kv" in b}
    static = {b["static"] for b in spec.bindings.values() if "static" in b}
    if spec.kind == "template":
        for match in TEMPLATE_TAG.finditer(spec.source):
            if match.group("kind") == "kv":
                kv.add(match.group("bucket"))
            elif match.group("kind") == "static":
                static.add(match.group("bucket"))
    return {"kv": sorted(kv), "static": sorted(static)}


def _check_deployer(p: Principal, spec: WorkerSpec) -> None:
    """A worker reads only what its deployer could read: each read capability
    it holds needs the matching scope (and a public worker publishes it)."""
    for capability in sorted(spec.capabilities):
        scope_name = _READ_SCOPES.get(capability)
        if scope_name is not None and not p.has(scope_name):
            raise ScopeDenied(scope_name)


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
        _check_deployer(p, spec)
    except (WorkerError, ScopeDenied) as exc:
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
        deployed_by=p.actor,
    )
    await run_in_threadpool(
        c.audit.append,
        actor=p.actor,
        action="worker.upsert",
        target=name,
        reason="public: anyone can request it" if spec.public else "",
        detail={
            "kind": spec.kind,
            "revision": stored.revision,
            "public": spec.public,
            "capabilities": sorted(spec.capabilities),
            "reads": _reads_of(spec),
        },
    )
    return _public(stored)


@router.delete("/{name}")
async def delete_worker(name: str, p: Deployer, c: C) -> dict[str, Any]:
    if not await run_in_threadpool(c.worker_store.delete, name):
        raise NotFound(f"no worker named {name!r}")
    await c.workers.remove(name, origin="operator")
    await run_in_threadpool(c.audit.append, actor=p.actor, action="worker.delete", target=name)
    return {"deleted": name}


_HOP_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer"}
    | {"upgrade", "proxy-connection", "proxy-authenticate"}
)
#: headers that act on the whole origin (the control plane's), not on one
#: response: a worker may not log operators out, pin HSTS, redirect the origin's
#: traffic elsewhere, collect its network-error reports or widen service workers
_ORIGIN_HEADERS = frozenset(
    {
        "clear-site-data",
        "strict-transport-security",
        "alt-svc",
        "nel",
        "report-to",
        "reporting-endpoints",
        "service-worker-allowed",
        "origin-agent-cluster",
        "accept-ch",
        "critical-ch",
        "set-cookie2",
        "public-key-pins",
        "public-key-pins-report-only",
        "expect-ct",
    }
)
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWN_COOKIE_PREFIX = "lattice"
_WORKER_CSP = "sandbox allow-scripts allow-forms allow-popups allow-downloads"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _cookie_allowed(value: str) -> bool:
    """A worker's Set-Cookie passes only with a valid name that is not ours.

    ``=lattice_session=x`` has an empty name (browsers then treat the rest as
    the name), a name with odd characters may be normalized by a browser, and
    the ``__Host-``/``__Secure-`` prefixes are stripped before comparing."""
    pair = value.split(";", 1)[0]
    name, sep, _ = pair.partition("=")
    name = name.strip(" \t")
    if not sep or not _COOKIE_NAME.fullmatch(name):
        return False
    bare = name.lower().removeprefix("__host-").removeprefix("__secure-")
    return not bare.startswith(_OWN_COOKIE_PREFIX)


#: failures whose details (the JS stack) the runtime already wrote to the log
_LOGGED_BY_RUNTIME = frozenset({"worker threw an exception"})


def _logs_route(live: LiveWorker) -> str:
    own = live.spec.own_bucket
    if own is not None:
        return f"/api/plugins/{own.removeprefix('plugin:')}/logs"
    return f"/api/workers/{live.spec.name}/logs"


async def _log_failure(live: LiveWorker, message: str) -> None:
    with contextlib.suppress(LatticeError):
        await run_in_threadpool(live.reads.log, "error", message)


async def serve(c: Container, request: Request, name: str, path: str) -> Response:
    """Serve a worker route (public workers; others need an authenticated caller)."""
    try:
        async with c.workers.lease(name) as live:
            if not live.spec.public:
                await read_store(request, principal_from, request)
            try:
                result = await _run(c, live, request, path)
                return _response(result)
            except WorkerTimeout as exc:
                retry = (exc.detail or {}).get("retry_after_seconds")
                headers = {"Retry-After": str(max(1, round(retry)))} if retry else {}
                if retry:
                    return error_response(503, exc.message, exc.detail, **headers)
                return error_response(503, "worker exceeded its time limit; try again")
            except PayloadTooLarge:
                raise  # the request body was over the cap: 413
            except WorkerError as exc:
                route = _logs_route(live)
                if exc.message not in _LOGGED_BY_RUNTIME:
                    line = f"request {request.method} /{path} failed: {exc.message}"
                    await _log_failure(live, line)
                return error_response(
                    500, f"worker failed; see GET {route}", {"reason": exc.message}
                )
    except NotFound:
        return error_response(404, f"no worker named {name!r}")


class _ServeEndpoint:
    """``/w/{name}/{path}`` as a plain ASGI endpoint.

    The hottest public path skips FastAPI's per-request dependency solving and
    parameter parsing (a third of a template request's CPU): it takes its two
    path parameters from the match and the container from the app.  Errors
    still go through the app's exception handlers, and the request middleware
    (ids, access log, metrics, body cap) is the same as for every route."""

    def __init__(self, template: str) -> None:
        self.route = Route(template, self, methods=list(_METHODS), include_in_schema=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # the metric / access-log template
        request = Request(scope, receive)
        params = scope["path_params"]
        response = await serve(
            get_container(request), request, params["name"], params.get("path", "")
        )
        await response(scope, receive, send)


serve_router.routes.extend(
    _ServeEndpoint(template).route for template in ("/w/{name}", "/w/{name}/{path:path}")
)


async def _run(c: Container, live: LiveWorker, request: Request, path: str) -> WorkerResponse:
    worker_request = None
    if live.js is not None:  # a template needs only the path
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS]
        worker_request = WorkerRequest(
            method=request.method, url=str(request.url), headers=headers, body=await request.body()
        )
    return await c.workers.run(live, worker_request, "/" + path)


def _response(result: WorkerResponse) -> Response:
    response = Response(content=result.body, status_code=result.status)
    for key, value in result.headers:
        lower = key.lower()
        if not _HEADER_NAME.fullmatch(key) or not _HEADER_VALUE.fullmatch(value):
            raise WorkerError(f"worker returned an invalid header {key[:64]!r}")
        if lower in _HOP_HEADERS or lower in _ORIGIN_HEADERS:
            continue
        if lower == "set-cookie" and not _cookie_allowed(value):
            continue  # a worker may not touch the control plane's own cookies
        response.headers.append(key, value)
    # Workers share the API's origin: sandbox their pages into an opaque origin
    # so a worker's script can never read the API with an operator's session.
    response.headers.append("content-security-policy", _WORKER_CSP)
    response.headers["x-content-type-options"] = "nosniff"
    return response
