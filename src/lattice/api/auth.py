"""Login, logout, the current user, and personal access tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from lattice.api.deps import SESSION_COOKIE, AnyUser, container
from lattice.api.models import LoginBody, TokenBody
from lattice.container import Container

router = APIRouter(prefix="/api", tags=["auth"])

C = Annotated[Container, Depends(container)]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/login")
def login(body: LoginBody, request: Request, response: Response, c: C) -> dict[str, Any]:
    session, csrf, principal = c.auth.login(body.username, body.password, client=_client(request))
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=c.settings.session_ttl_hours * 3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return {"user": principal.username, "scopes": sorted(principal.scopes), "csrf_token": csrf}


@router.post("/logout")
def logout(request: Request, response: Response, principal: AnyUser, c: C) -> dict[str, Any]:
    cookie = request.cookies.get(SESSION_COOKIE)
    if principal.via == "session" and cookie:
        c.auth.logout(principal, cookie)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return {"ok": True}


@router.get("/me")
def me(principal: AnyUser) -> dict[str, Any]:
    return {
        "user": principal.username,
        "scopes": sorted(principal.scopes),
        "via": principal.via,
        "token_id": principal.token_id,
    }


@router.post("/tokens", status_code=201)
def create_token(body: TokenBody, principal: AnyUser, c: C) -> dict[str, Any]:
    token, info = c.auth.create_token(
        principal, name=body.name, scopes=body.scopes, expires_in_days=body.expires_in_days
    )
    return {"token": token, **info.to_dict()}


@router.get("/tokens")
def list_tokens(principal: AnyUser, c: C) -> dict[str, Any]:
    return {"tokens": [t.to_dict() for t in c.auth.list_tokens(principal)]}


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, principal: AnyUser, c: C) -> dict[str, Any]:
    c.auth.revoke_token(principal, token_id)
    return {"revoked": token_id}
