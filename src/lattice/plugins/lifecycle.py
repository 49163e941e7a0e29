"""The plugin lifecycle registry: one persisted, audited record per plugin that
ever passed the loader.

States and the only transitions allowed::

    verified -> installed -> active -> disabled -> active
                          \\-> disabled

Re-consent: installing (and activating with ``approve_digest``) records the
whole identity the operator agreed to: publisher, type, entrypoint, artifact
digest and capability set.  When a later scan finds the same id with any of
those changed, the record gets ``review_required``; an active plugin is moved to
``disabled``; activation then needs ``approve_digest`` equal to the current
digest.  ``review`` in the API names each change.

Records approved before publisher, type and entrypoint were recorded (migration
0007) have them filled from the record by the migration (publisher, type) or
adopted from the bundle by the first scan that finds digest, capabilities,
publisher and type as approved (entrypoint, which was not stored before).

Concurrency: every transition is a compare-and-set on the prior status inside
one write transaction, under a per-plugin lock; two racing requests cannot both
move a plugin from the same prior state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from lattice.core.auditsink import AuditSink
from lattice.errors import Conflict, LifecycleError, NotFound
from lattice.plugins.loader import LoadedPlugin
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import plugins

__all__ = ["STATUSES", "TRANSITIONS", "LifecycleRecord", "LifecycleRegistry"]

STATUSES = ("verified", "installed", "active", "disabled")
TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("verified", "installed"),
        ("installed", "active"),
        ("installed", "disabled"),
        ("active", "disabled"),
        ("disabled", "active"),
    }
)
_STAMP = {"installed": "installed_at", "active": "activated_at", "disabled": "disabled_at"}


@dataclass(frozen=True)
class LifecycleRecord:
    id: str
    name: str
    type: str
    version: str
    publisher: str
    entrypoint: str
    capabilities: list[str]
    digest_sha256: str
    approved_digest: str | None
    approved_capabilities: list[str] | None
    approved_publisher: str | None
    approved_type: str | None
    approved_entrypoint: str | None
    status: str
    review_required: bool
    created_at: str
    verified_at: str | None
    installed_at: str | None
    activated_at: str | None
    disabled_at: str | None
    updated_at: str

    def capability_diff(self) -> dict[str, list[str]] | None:
        if not self.review_required or self.approved_capabilities is None:
            return None
        now, then = set(self.capabilities), set(self.approved_capabilities)
        return {"added": sorted(now - then), "removed": sorted(then - now)}

    def changes(self) -> list[str]:
        """What differs from the approved identity (empty without an approval)."""
        if self.approved_digest is None:
            return []
        return _changed(
            approved=(
                self.approved_digest,
                self.approved_capabilities,
                self.approved_publisher,
                self.approved_type,
                self.approved_entrypoint,
            ),
            current=(
                self.digest_sha256,
                self.capabilities,
                self.publisher,
                self.type,
                self.entrypoint,
            ),
        )

    def review(self) -> dict[str, Any] | None:
        """What the operator is asked to approve again, field by field."""
        if not self.review_required:
            return None
        changed = self.changes()

        def pair(name: str, then: str | None, now: str) -> dict[str, str | None] | None:
            return {"approved": then, "current": now} if name in changed else None

        return {
            "changed": changed,
            "approved_digest": self.approved_digest,
            "digest": pair("digest", self.approved_digest, self.digest_sha256),
            "capabilities": self.capability_diff(),
            "publisher": pair("publisher", self.approved_publisher, self.publisher),
            "type": pair("type", self.approved_type, self.type),
            "entrypoint": pair("entrypoint", self.approved_entrypoint, self.entrypoint),
        }

    def to_public_dict(self, *, available: bool) -> dict[str, Any]:
        """The API shape: no bundle location, ever."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "version": self.version,
            "publisher": self.publisher,
            "entrypoint": self.entrypoint,
            "capabilities": list(self.capabilities),
            "digest_sha256": self.digest_sha256,
            "available": available,
            "status": self.status,
            "review_required": self.review_required,
            "review": self.review(),
            "created_at": self.created_at,
            "verified_at": self.verified_at,
            "installed_at": self.installed_at,
            "activated_at": self.activated_at,
            "disabled_at": self.disabled_at,
            "updated_at": self.updated_at,
        }


#: the identity fields consent covers, in the order ``review.changed`` lists them
IDENTITY = ("digest", "capabilities", "publisher", "type", "entrypoint")


def _changed(
    *,
    approved: tuple[str, list[str] | None, str | None, str | None, str | None],
    current: tuple[str, list[str], str, str, str],
) -> list[str]:
    """Names of the identity fields whose current value differs from the approved
    one.  An approved value of None (not recorded yet, see the module docstring)
    counts as unchanged."""
    out = []
    for name, then, now in zip(IDENTITY, approved, current, strict=True):
        if name == "capabilities":
            differs = sorted(then or []) != sorted(now)
        else:
            differs = then is not None and then != now
        if differs:
            out.append(name)
    return out


def _row_changes(row: Any, plugin: LoadedPlugin) -> list[str]:
    m = plugin.manifest
    return _changed(
        approved=(
            row.approved_digest,
            json.loads(row.approved_capabilities or "[]"),
            row.approved_publisher,
            row.approved_type,
            row.approved_entrypoint,
        ),
        current=(plugin.digest_sha256, _caps(plugin), m.publisher, m.type, m.entrypoint),
    )


def _approval(record: LifecycleRecord) -> dict[str, Any]:
    """The columns that record consent to ``record``'s current identity."""
    return {
        "approved_digest": record.digest_sha256,
        "approved_capabilities": json.dumps(record.capabilities),
        "approved_publisher": record.publisher,
        "approved_type": record.type,
        "approved_entrypoint": record.entrypoint,
        "review_required": False,
    }


def _record(row: Any) -> LifecycleRecord:
    return LifecycleRecord(
        id=row.id,
        name=row.name,
        type=row.type,
        version=row.version,
        publisher=row.publisher,
        entrypoint=row.entrypoint,
        capabilities=json.loads(row.capabilities),
        digest_sha256=row.digest_sha256,
        approved_digest=row.approved_digest,
        approved_capabilities=(
            json.loads(row.approved_capabilities) if row.approved_capabilities else None
        ),
        approved_publisher=row.approved_publisher,
        approved_type=row.approved_type,
        approved_entrypoint=row.approved_entrypoint,
        status=row.status,
        review_required=bool(row.review_required),
        created_at=row.created_at,
        verified_at=row.verified_at,
        installed_at=row.installed_at,
        activated_at=row.activated_at,
        disabled_at=row.disabled_at,
        updated_at=row.updated_at,
    )


def _caps(plugin: LoadedPlugin) -> list[str]:
    return sorted(plugin.manifest.capabilities)


class LifecycleRegistry:
    def __init__(self, db: Database, audit: AuditSink) -> None:
        self._db = db
        self._audit = audit
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, plugin_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(plugin_id, threading.Lock())

    # -- reading -----------------------------------------------------------

    def get(self, plugin_id: str) -> LifecycleRecord:
        with self._db.read() as conn:
            row = conn.execute(select(plugins).where(plugins.c.id == plugin_id)).first()
        if row is None:
            raise NotFound(f"no plugin with id {plugin_id!r}")
        return _record(row)

    def all(self) -> list[LifecycleRecord]:
        with self._db.read() as conn:
            rows = conn.execute(select(plugins).order_by(plugins.c.id)).all()
        return [_record(r) for r in rows]

    def bundle_of(self, plugin_id: str) -> str:
        """Server-private: the bundle directory name a record was last seen in."""
        with self._db.read() as conn:
            value = conn.execute(
                select(plugins.c.bundle).where(plugins.c.id == plugin_id)
            ).scalar_one_or_none()
        if value is None:
            raise NotFound(f"no plugin with id {plugin_id!r}")
        return str(value)

    def owners(self) -> dict[str, str]:
        """id -> the publisher a record stands for: the approved one when the
        operator consented, else the one last verified.  The loader uses it to
        settle duplicate ids."""
        with self._db.read() as conn:
            rows = conn.execute(
                select(plugins.c.id, plugins.c.publisher, plugins.c.approved_publisher)
            ).all()
        return {
            str(r.id): str(
                r.approved_publisher if r.approved_publisher is not None else r.publisher
            )
            for r in rows
        }

    # -- following the loader ----------------------------------------------

    def sync(self, loaded: Mapping[str, LoadedPlugin]) -> list[str]:
        """Create or refresh records for the loaded set.

        Returns the ids that now need review and were disarmed by this call
        (their status moved ``active -> disabled``).
        """
        disabled: list[str] = []
        for plugin in loaded.values():
            with self._lock(plugin.id):
                if self._sync_one(plugin):
                    disabled.append(plugin.id)
        return disabled

    def _sync_one(self, plugin: LoadedPlugin) -> bool:
        m, now = plugin.manifest, now_iso()
        identity = {
            "name": m.name,
            "type": m.type,
            "version": m.version,
            "publisher": m.publisher,
            "entrypoint": m.entrypoint,
            "capabilities": json.dumps(_caps(plugin)),
            "digest_sha256": plugin.digest_sha256,
            "bundle": plugin.bundle,
        }
        with self._db.write() as conn:
            row = conn.execute(select(plugins).where(plugins.c.id == plugin.id)).first()
            if row is None:
                conn.execute(
                    plugins.insert().values(
                        id=plugin.id,
                        status="verified",
                        review_required=False,
                        created_at=now,
                        verified_at=now,
                        updated_at=now,
                        **identity,
                    )
                )
                return False
            consented = row.approved_digest is not None
            legacy = consented and (
                row.approved_publisher is None
                or row.approved_type is None
                or row.approved_entrypoint is None
            )
            unchanged = all(getattr(row, k) == v for k, v in identity.items())
            if unchanged and not legacy:
                return False
            changes: dict[str, Any] = {**identity, "verified_at": now, "updated_at": now}
            changed = _row_changes(row, plugin) if consented else []
            differs = bool(changed)
            disarm = False
            if legacy and not differs:  # approved before 0007: adopt what was approved
                adopted = {
                    "approved_publisher": m.publisher,
                    "approved_type": m.type,
                    "approved_entrypoint": m.entrypoint,
                }
                changes.update({k: v for k, v in adopted.items() if getattr(row, k) is None})
            if differs:
                changes["review_required"] = True
                if row.status == "active":
                    changes.update(status="disabled", disabled_at=now)
                    disarm = True
            elif consented and row.review_required:
                changes["review_required"] = False  # back to what was approved
            conn.execute(update(plugins).where(plugins.c.id == plugin.id).values(**changes))
        if differs:
            self._audit.append(
                actor="system",
                action="plugin.review_required",
                target=plugin.id,
                decision="deny",
                reason="bundle changed since the operator approved it: " + ", ".join(changed),
                detail={
                    "changed": changed,
                    "approved_digest": row.approved_digest,
                    "digest_sha256": plugin.digest_sha256,
                    "capabilities": _caps(plugin),
                    "approved_capabilities": json.loads(row.approved_capabilities or "[]"),
                    "publisher": m.publisher,
                    "approved_publisher": row.approved_publisher,
                    "type": m.type,
                    "approved_type": row.approved_type,
                    "entrypoint": m.entrypoint,
                    "approved_entrypoint": row.approved_entrypoint,
                },
            )
        if disarm:
            self._audit.append(
                actor="system",
                action="plugin.status",
                target=plugin.id,
                reason="bundle changed; review required",
                detail={"from": "active", "to": "disabled"},
            )
        return disarm

    # -- operator transitions ----------------------------------------------

    def transition(
        self,
        plugin_id: str,
        status: str,
        *,
        actor: str,
        available: bool,
        current: LoadedPlugin | None,
        approve_digest: str | None = None,
    ) -> tuple[LifecycleRecord, str | None]:
        """Move a plugin to ``status``; return the record and the prior status
        (``None`` when it was already there: a no-op with no audit event).

        Every precondition is checked before anything is written.
        """
        if status not in STATUSES:
            raise LifecycleError(
                f"unknown status {status!r}; use installed, active or disabled",
                plugin_id=plugin_id,
            )
        with self._lock(plugin_id):
            record = self.get(plugin_id)
            prior = record.status
            if prior == status:
                return record, None
            # 1. the transition is one of the five allowed
            if (prior, status) not in TRANSITIONS:
                raise LifecycleError(
                    f"cannot move plugin {plugin_id!r} from {prior!r} to {status!r}",
                    plugin_id=plugin_id,
                    detail={"from": prior, "to": status},
                )
            # 2. installing or activating needs the bundle in the verified loader set
            if status in ("installed", "active") and (not available or current is None):
                raise LifecycleError(
                    f"plugin {plugin_id!r} is not available: its bundle is not in the "
                    "current verified loader set",
                    plugin_id=plugin_id,
                    detail={"from": prior, "to": status, "available": False},
                )
            # 3. a changed bundle needs the operator to approve its digest
            needs_approval = status == "active" and record.review_required
            if needs_approval and approve_digest != record.digest_sha256:
                raise LifecycleError(
                    f"plugin {plugin_id!r} changed since it was approved; activate with "
                    '"approve_digest" set to its current digest_sha256 to accept',
                    plugin_id=plugin_id,
                    detail={
                        "from": prior,
                        "to": status,
                        "review_required": True,
                        "capabilities": record.capability_diff(),
                        "review": record.review(),
                    },
                )
            if approve_digest is not None and approve_digest != record.digest_sha256:
                raise LifecycleError(
                    "approve_digest does not match the plugin's current digest_sha256",
                    plugin_id=plugin_id,
                )
            now = now_iso()
            values: dict[str, Any] = {"status": status, "updated_at": now, _STAMP[status]: now}
            if status == "installed" or approve_digest is not None:
                values.update(_approval(record))
            with self._db.write() as conn:
                result = conn.execute(
                    update(plugins)
                    .where(plugins.c.id == plugin_id, plugins.c.status == prior)
                    .values(**values)
                )
                if result.rowcount != 1:
                    raise Conflict(f"plugin {plugin_id!r} changed concurrently; retry")
            self._audit.append(
                actor=actor,
                action="plugin.status",
                target=plugin_id,
                detail={
                    "from": prior,
                    "to": status,
                    **({"approved_digest": approve_digest} if approve_digest else {}),
                },
            )
            return self.get(plugin_id), prior

    def force_disable(self, plugin_id: str, *, actor: str, reason: str) -> None:
        """Runtime failure path: move to ``disabled`` from wherever it is."""
        with self._lock(plugin_id):
            record = self.get(plugin_id)
            if record.status == "disabled":
                return
            now = now_iso()
            with self._db.write() as conn:
                conn.execute(
                    update(plugins)
                    .where(plugins.c.id == plugin_id)
                    .values(status="disabled", disabled_at=now, updated_at=now)
                )
            self._audit.append(
                actor=actor,
                action="plugin.status",
                target=plugin_id,
                reason=reason,
                detail={"from": record.status, "to": "disabled"},
            )

    def ids_with_status(self, status: str) -> Iterable[str]:
        with self._db.read() as conn:
            return [
                str(v)
                for v in conn.execute(select(plugins.c.id).where(plugins.c.status == status))
                .scalars()
                .all()
            ]
