"""Authentication and scope dependencies: every API route declares one scope.

``require("kv:read")`` returns a dependency that resolves the caller from a
``Bearer`` token or the session cookie, checks CSRF for cookie-authenticated
mutating requests, and checks the scope.  No credential → 401; a credential
without the scope → 403 naming the missing scope.  ``authenticated()`` is for
routes any logged-in caller may use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from lattice.container import Container
from lattice.core.auth import Principal
from lattice.core.names import check_bucket, is_plugin_bucket
from lattice.errors import AuthError, CsrfError, ScopeDenied

__all__ = [
    "SESSION_COOKIE",
    "AnyUser",
    "RequireScope",
    "container",
    "guard_bucket",
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
