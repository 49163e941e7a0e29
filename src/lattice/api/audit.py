"""Reading the audit log (scope ``audit:read``)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from lattice.api.deps import container, scope
from lattice.container import Container
from lattice.core.audit import MAX_PAGE, AuditQuery
from lattice.core.auth import Principal
from lattice.errors import ValidationFailed

router = APIRouter(prefix="/api", tags=["audit"])

C = Annotated[Container, Depends(container)]
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?Z?)?$")


def _ts(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not _TS.match(value):
        raise ValidationFailed(f"{name} must be an ISO-8601 UTC time like 2026-01-31T12:00:00Z")
    return value


@router.get("/audit")
def list_audit(
    _p: Annotated[Principal, scope("audit:read")],
    c: C,
    action: Annotated[str | None, Query(max_length=128, description="action prefix")] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    target: Annotated[str | None, Query(max_length=512)] = None,
    decision: Annotated[str | None, Query(pattern="^(allow|deny)$")] = None,
    since: Annotated[str | None, Query(max_length=32)] = None,
    until: Annotated[str | None, Query(max_length=32)] = None,
    cursor: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> dict[str, Any]:
    events, next_cursor = c.audit.query(
        AuditQuery(
            action_prefix=action,
            actor=actor,
            target=target,
            decision=decision,
            since=_ts("since", since),
            until=_ts("until", until),
            cursor=cursor,
            limit=limit,
            descending=order == "desc",
        )
    )
    return {"events": [e.to_dict() for e in events], "next_cursor": next_cursor}
