"""Plugins over HTTP: the loaded set, trust policy, verify, rescan, lifecycle,
logs and per-plugin egress policy.  No response ever carries a filesystem path.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from lattice.api.deps import AnyUser, container, scope
from lattice.api.models import Strict
from lattice.container import Container
from lattice.core.auth import Principal
from lattice.errors import LatticeError, ValidationFailed
from lattice.plugins.manifest import Manifest, decode_json_object
from lattice.plugins.platform import PluginPlatform
from lattice.services.egress_policy import validate_allow_hosts

router = APIRouter(prefix="/api/plugins", tags=["plugins"])

C = Annotated[Container, Depends(container)]
Admin = Annotated[Principal, scope("plugin:admin")]
Reader = Annotated[Principal, scope("plugin:read")]
Verifier = Annotated[Principal, scope("plugin:verify")]


def platform(c: Container) -> PluginPlatform:
    return c.plugins


class LifecycleBody(Strict):
    id: str = Field(min_length=1, max_length=128)
    status: str = Field(min_length=1, max_length=32)
    approve_digest: str | None = Field(default=None, min_length=64, max_length=64)


class EgressBody(Strict):
    allow_hosts: list[str] | None = Field(max_length=64)


class StaticGrantBody(Strict):
    buckets: list[str] = Field(max_length=64)


@router.get("")
def list_plugins(_p: Reader, c: C) -> dict[str, Any]:
    plat = platform(c)
    return {
        "loaded": [p.to_public_dict() for p in plat.loader.loaded.values()],
        "rejected": [
            {"bundle": r.bundle, "reason": r.reason, "seen_at": r.seen_at.isoformat()}
            for r in plat.loader.rejected
        ],
    }


@router.get("/trust")
def trust_policy(_p: AnyUser, c: C) -> dict[str, Any]:
    return platform(c).policy.to_public_dict()


@router.post("/verify")
async def verify(request: Request, p: Verifier, c: C) -> dict[str, Any]:
    raw = await request.body()
    return await run_in_threadpool(_verify, c, p, raw)


def _verify(c: Container, p: Principal, raw: bytes) -> dict[str, Any]:
    plat = platform(c)
    target = ""
    try:
        body = decode_json_object(raw, "request body")
        unknown = set(body) - {"manifest", "artifact_base64"}
        if unknown:
            raise ValidationFailed(f"unknown field {sorted(unknown)[0]!r}")
        if not isinstance(body.get("manifest"), dict):
            raise ValidationFailed("manifest must be a JSON object")
        if not isinstance(body.get("artifact_base64"), str):
            raise ValidationFailed("artifact_base64 must be a base64 string")
        target = str(body["manifest"].get("id", ""))[:128]
        try:
            artifact = base64.b64decode(body["artifact_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ValidationFailed("artifact_base64 is not valid standard base64") from None
        manifest = Manifest.from_mapping(body["manifest"])
        verification = plat.verifier.verify(manifest, artifact)
    except LatticeError as exc:
        c.audit.append(
            actor=p.actor,
            action="plugin.verify",
            target=target,
            decision="deny",
            reason=exc.message,
        )
        if exc.status_code >= 500:
            raise
        raise ValidationFailed(exc.message, detail=exc.detail) from None
    c.audit.append(
        actor=p.actor,
        action="plugin.verify",
        target=manifest.id,
        detail={"digest_sha256": verification.digest_sha256, "signed": verification.signed},
    )
    public = manifest.to_dict()
    public.pop("signature_ed25519", None)
    return {
        "trusted": True,
        "signed": verification.signed,
        "manifest": public,
        "artifact_sha256": verification.digest_sha256,
        "capabilities": [
            {"name": name, "risk": str(risk)} for name, risk in verification.capabilities.items()
        ],
    }


@router.post("/rescan")
def rescan(p: Admin, c: C) -> dict[str, Any]:
    diff = platform(c).rescan(actor=p.actor)
    return {
        "added": list(diff.added),
        "changed": list(diff.changed),
        "removed": list(diff.removed),
        "rejected": [{"bundle": r.bundle, "reason": r.reason} for r in diff.rejected],
        "cleared": list(diff.cleared),
    }


@router.get("/lifecycle")
def lifecycle(_p: Admin, c: C) -> dict[str, Any]:
    return {"plugins": platform(c).lifecycle()}


@router.post("/lifecycle")
def set_lifecycle(body: LifecycleBody, p: Admin, c: C) -> dict[str, Any]:
    return platform(c).set_status(
        body.id, body.status, actor=p.actor, approve_digest=body.approve_digest
    )


@router.get("/{plugin_id}/logs")
def plugin_logs(
    plugin_id: str,
    _p: Reader,
    c: C,
    cursor: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    platform(c).require_known(plugin_id)
    lines, nxt = c.logs.list(plugin_id, cursor=cursor, limit=limit)
    return {"plugin_id": plugin_id, "logs": [line.to_dict() for line in lines], "next_cursor": nxt}


@router.put("/{plugin_id}/egress")
def set_egress(plugin_id: str, body: EgressBody, p: Admin, c: C) -> dict[str, Any]:
    platform(c).require_known(plugin_id)
    hosts = validate_allow_hosts(body.allow_hosts) if body.allow_hosts is not None else None
    c.policies.set_allow_hosts(plugin_id, hosts)
    c.audit.append(
        actor=p.actor, action="plugin.egress", target=plugin_id, detail={"allow_hosts": hosts}
    )
    return {"plugin_id": plugin_id, "allow_hosts": hosts}


@router.put("/{plugin_id}/static")
def set_static(plugin_id: str, body: StaticGrantBody, p: Admin, c: C) -> dict[str, Any]:
    platform(c).require_known(plugin_id)
    c.policies.set_static_buckets(plugin_id, body.buckets)
    buckets = c.policies.static_buckets(plugin_id)
    c.audit.append(
        actor=p.actor, action="plugin.static", target=plugin_id, detail={"buckets": buckets}
    )
    return {"plugin_id": plugin_id, "buckets": buckets}
