"""Authentication and scope dependencies: every API route declares one scope.

``require("kv:read")`` returns a dependency that resolves the caller from a
``Bearer`` token or the session cookie, checks CSRF for cookie-authenticated
mutating requests, and checks the scope.  No credential → 401; a credential
without the scope → 403 naming the missing scope.  ``authenticated()`` is for
routes any logged-in caller may use.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from lattice.container import Container
from lattice.core.auth import Principal
from lattice.core.names import check_bucket, is_plugin_bucket
from lattice.errors import AuthError, CsrfError, ScopeDenied

__all__ = [
    "SESSION_COOKIE",
    "AnyUser",
    "LeanRoute",
    "RequireScope",
    "container",
    "guard_bucket",
    "lean_get",
    "principal_from",
    "read_store",
    "scope",
]

T = TypeVar("T")

SESSION_COOKIE = "lattice_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def container(request: Request) -> Container:
    """The app's container (async: FastAPI would run a sync dependency on a thread)."""
    return get_container(request)


def get_container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c


async def read_store(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run a read-only store call.

    On SQLite the read runs inline: in WAL mode a reader never waits for a
    writer, and a local read (tens of microseconds) is cheaper than the thread
    hand-off.  On PostgreSQL (a network round trip) it runs on the threadpool so
    the event loop never waits on the network.  Never use this for writes.
    """
    if get_container(request).db.is_sqlite:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


def principal_from(request: Request) -> Principal:
    """Resolve (and cache on the request) who is calling, or raise 401/403."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    auth = get_container(request).auth
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthError("Authorization header must be 'Bearer <token>'")
        principal = auth.from_token(credential.strip())
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise AuthError("authentication required: send a bearer token or log in")
        principal = auth.from_session(cookie)
        if request.method not in _SAFE_METHODS and not auth.csrf_ok(
            principal, request.headers.get("x-csrf-token")
        ):
            raise CsrfError("missing or wrong X-CSRF-Token header for a cookie session")
    request.state.principal = principal
    return principal


class RequireScope:
    """Dependency object; tests enumerate routes and read ``.scope``."""

    def __init__(self, scope: str | None) -> None:
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:
        principal = await read_store(request, principal_from, request)
        if self.scope is not None and not principal.has(self.scope):
            raise ScopeDenied(self.scope)
        return principal


def guard_bucket(principal: Principal, bucket: str) -> None:
    """Check a KV/static bucket name; ``plugin:*`` buckets also need ``plugin:admin``."""
    check_bucket(bucket)
    if is_plugin_bucket(bucket) and not principal.has("plugin:admin"):
        raise ScopeDenied("plugin:admin")


def scope(name: str | None) -> Any:
    """``Annotated[Principal, scope("kv:read")]`` marks a route's required scope."""
    return Depends(RequireScope(name))


AnyUser = Annotated[Principal, Depends(RequireScope(None))]


class LeanRoute(APIRoute):
    """An API route whose endpoint is called directly, not through FastAPI's
    general dependency solver (which costs more than a whole KV read).

    Only for the hottest reads, and only for endpoints whose parameters are
    all of: ``str`` path parameters, the ``Request``, one ``scope(...)``
    principal and the container; anything else is refused when the route is
    built, so the shortcut can never skip a check FastAPI would have made.
    The route is still an ``APIRoute``: OpenAPI, the scope-per-route tests and
    the error handlers see it like any other, and the scope is checked by the
    same ``RequireScope`` object."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        d = self.dependant
        if d.query_params or d.header_params or d.cookie_params or d.body_params:
            raise TypeError(f"{self.path}: a LeanRoute takes path parameters only")
        if not inspect.iscoroutinefunction(self.endpoint):
            raise TypeError(f"{self.path}: a LeanRoute endpoint must be async")
        for field in d.path_params:
            if field.field_info.annotation is not str:
                raise TypeError(f"{self.path}: path parameter {field.name} must be a str")
        guard: tuple[str, RequireScope] | None = None
        holder: str | None = None
        for sub in d.dependencies:
            if isinstance(sub.call, RequireScope) and guard is None and sub.name:
                guard = (sub.name, sub.call)
            elif sub.call is container and sub.name:
                holder = sub.name
            else:
                raise TypeError(f"{self.path}: unsupported dependency {sub.call!r}")
        if guard is None:
            raise TypeError(f"{self.path}: a LeanRoute needs a scope(...) parameter")
        principal_name, require = guard
        request_name = d.request_param_name
        names = [f.name for f in d.path_params]
        endpoint: Callable[..., Awaitable[Response]] = self.endpoint

        async def handler(request: Request) -> Response:
            params = request.path_params
            kwargs: dict[str, Any] = {name: params[name] for name in names}
            kwargs[principal_name] = await require(request)
            if holder is not None:
                kwargs[holder] = get_container(request)
            if request_name is not None:
                kwargs[request_name] = request
            return await endpoint(**kwargs)

        return handler


def lean_get(router: APIRouter, path: str, **options: Any) -> Callable[[T], T]:
    """``@router.get(path)`` on a :class:`LeanRoute`."""

    def register(fn: T) -> T:
        router.add_api_route(path, fn, methods=["GET"], route_class_override=LeanRoute, **options)  # type: ignore[arg-type]
        return fn

    return register
