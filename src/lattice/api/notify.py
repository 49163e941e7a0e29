"""Notification channels, test sends and delivery records (scope ``notify:admin``).

A channel URL goes in once (POST, or PATCH of ``url``) and never comes back out:
every response carries ``url_masked`` (Apprise's privacy rendering) only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from lattice.api.deps import container, scope
from lattice.api.models import Strict
from lattice.container import Container
from lattice.core.auth import Principal

router = APIRouter(prefix="/api/notify", tags=["notify"])

C = Annotated[Container, Depends(container)]
Admin = Annotated[Principal, scope("notify:admin")]


class ChannelBody(Strict):
    name: str = Field(min_length=1, max_length=64)
    url: str = Field(min_length=1, max_length=2048)
    tags: list[str] = Field(default_factory=list, max_length=16)
    enabled: bool = True
    rate_per_minute: int = Field(default=30, ge=1, le=6000)


class ChannelPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=64)
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    tags: list[str] | None = Field(default=None, max_length=16)
    enabled: bool | None = None
    rate_per_minute: int | None = Field(default=None, ge=1, le=6000)


class TestBody(Strict):
    channel_id: int | None = None
    title: str | None = Field(default=None, max_length=256)
    body: str | None = Field(default=None, max_length=32 * 1024)


@router.get("/channels")
def list_channels(_p: Admin, c: C) -> dict[str, Any]:
    return {"channels": c.notify.list_channels()}


@router.post("/channels", status_code=201)
def create_channel(body: ChannelBody, p: Admin, c: C) -> dict[str, Any]:
    return c.notify.create_channel(
        name=body.name,
        url=body.url,
        tags=body.tags,
        enabled=body.enabled,
        rate_per_minute=body.rate_per_minute,
        actor=p.actor,
    )


@router.patch("/channels/{channel_id}")
def update_channel(channel_id: int, body: ChannelPatch, p: Admin, c: C) -> dict[str, Any]:
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    return c.notify.update_channel(channel_id, changes, actor=p.actor)


@router.delete("/channels/{channel_id}")
def delete_channel(channel_id: int, p: Admin, c: C) -> dict[str, Any]:
    return c.notify.delete_channel(channel_id, actor=p.actor)


@router.post("/test")
def test_send(body: TestBody, p: Admin, c: C) -> dict[str, Any]:
    return c.notify.test(
        channel_id=body.channel_id, title=body.title, body=body.body, actor=p.actor
    )


@router.get("/deliveries")
def list_deliveries(
    _p: Admin,
    c: C,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
    channel_id: Annotated[int | None, Query(ge=1)] = None,
    message_id: Annotated[int | None, Query(ge=1)] = None,
    cursor: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    items, nxt = c.notify.deliveries(
        status=status, channel_id=channel_id, message_id=message_id, cursor=cursor, limit=limit
    )
    return {"deliveries": items, "next_cursor": nxt}
