"""SQL for notification channels, the outbox and delivery records.

No Apprise and no plaintext URLs here: channel URLs arrive and leave as
AES-GCM blobs sealed by the caller (``seal(channel_id) -> bytes``), so the
encryption context can be the channel's immutable row id.

Delivery rows move ``pending -> delivered | failed``.  A worker *claims* a due
row by moving its ``next_attempt_at`` forward by a lease (compare-and-set on
the old value), so two server processes never send the same attempt twice and
a crashed worker's claim simply expires.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from lattice.errors import Conflict, NotFound, StoreError, ValidationFailed
from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.tables import notify_channels, notify_deliveries, notify_messages

__all__ = ["STATUSES", "Channel", "DueDelivery", "NotifyStore"]

STATUSES = ("pending", "delivered", "failed")
MAX_PAGE = 500

Seal = Callable[[int], bytes]


@dataclass(frozen=True)
class Channel:
    id: int
    name: str
    service: str
    url_masked: str
    tags: list[str]
    enabled: bool
    rate_per_minute: int
    created_at: str
    updated_at: str

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "service": self.service,
            "url_masked": self.url_masked,
            "tags": list(self.tags),
            "enabled": self.enabled,
            "rate_per_minute": self.rate_per_minute,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class DueDelivery:
    id: int
    message_id: int
    channel_id: int | None
    channel_name: str
    attempts: int
    next_attempt_at: str
    title: str
    body: str
    source: str
    enabled: bool
    rate_per_minute: int
    url_encrypted: bytes | None


def _channel(row: Any) -> Channel:
    return Channel(
        id=int(row.id),
        name=row.name,
        service=row.service,
        url_masked=row.url_masked,
        tags=list(json.loads(row.tags)),
        enabled=bool(row.enabled),
        rate_per_minute=int(row.rate_per_minute),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _new_id(result: Any) -> int:
    key = result.inserted_primary_key
    if not key or key[0] is None:
        raise StoreError("the database did not return the new row id")
    return int(key[0])


def _public_columns() -> list[Any]:
    return [c for c in notify_channels.c if c.name != "url_encrypted"]


class NotifyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- channels -----------------------------------------------------------

    def create_channel(
        self,
        *,
        name: str,
        service: str,
        url_masked: str,
        tags: Sequence[str],
        enabled: bool,
        rate_per_minute: int,
        seal: Seal,
    ) -> Channel:
        now = now_iso()
        try:
            with self._db.write() as conn:
                result = conn.execute(
                    notify_channels.insert().values(
                        name=name,
                        url_encrypted=b"",
                        url_masked=url_masked,
                        service=service,
                        tags=json.dumps(list(tags)),
                        enabled=enabled,
                        rate_per_minute=rate_per_minute,
                        created_at=now,
                        updated_at=now,
                    )
                )
                channel_id = _new_id(result)
                conn.execute(
                    update(notify_channels)
                    .where(notify_channels.c.id == channel_id)
                    .values(url_encrypted=seal(channel_id))
                )
        except Conflict:
            raise Conflict(f"a notification channel named {name!r} already exists") from None
        return self.get_channel(channel_id)

    def get_channel(self, channel_id: int) -> Channel:
        with self._db.read() as conn:
            row = conn.execute(
                select(*_public_columns()).where(notify_channels.c.id == channel_id)
            ).first()
        if row is None:
            raise NotFound(f"no notification channel {channel_id}")
        return _channel(row)

    def list_channels(self) -> list[Channel]:
        with self._db.read() as conn:
            rows = conn.execute(select(*_public_columns()).order_by(notify_channels.c.id)).all()
        return [_channel(r) for r in rows]

    def update_channel(
        self, channel_id: int, values: dict[str, Any], *, seal: Seal | None = None
    ) -> Channel:
        row = dict(values)
        if "tags" in row:
            row["tags"] = json.dumps(list(row["tags"]))
        if seal is not None:
            row["url_encrypted"] = seal(channel_id)
        row["updated_at"] = now_iso()
        try:
            with self._db.write() as conn:
                result = conn.execute(
                    update(notify_channels).where(notify_channels.c.id == channel_id).values(**row)
                )
        except Conflict:
            raise Conflict(
                f"a notification channel named {values.get('name')!r} already exists"
            ) from None
        if not result.rowcount:
            raise NotFound(f"no notification channel {channel_id}")
        return self.get_channel(channel_id)

    def delete_channel(self, channel_id: int) -> Channel:
        """Delete a channel; its pending deliveries fail with "channel deleted"."""
        channel = self.get_channel(channel_id)
        now = now_iso()
        d = notify_deliveries.c
        with self._db.write() as conn:
            conn.execute(
                update(notify_deliveries)
                .where(d.channel_id == channel_id, d.status == "pending")
                .values(status="failed", last_error="channel deleted", updated_at=now)
            )
            result = conn.execute(
                notify_channels.delete().where(notify_channels.c.id == channel_id)
            )
        if not result.rowcount:
            raise NotFound(f"no notification channel {channel_id}")
        return channel

    def sealed_url(self, channel_id: int) -> bytes:
        with self._db.read() as conn:
            blob = conn.execute(
                select(notify_channels.c.url_encrypted).where(notify_channels.c.id == channel_id)
            ).scalar_one_or_none()
        if blob is None:
            raise NotFound(f"no notification channel {channel_id}")
        return bytes(blob)

    # -- the outbox ---------------------------------------------------------

    def enqueue(
        self,
        *,
        title: str,
        body: str,
        tags: Sequence[str],
        source: str,
        channel_id: int | None = None,
    ) -> tuple[int, int]:
        """Write the message and one pending delivery per matching channel, atomically.

        With ``channel_id`` only that channel is chosen (it must exist and be
        enabled); otherwise every enabled channel sharing a tag with the message,
        or every enabled channel when the message has no tags.
        Returns ``(message_id, number_of_deliveries)``.
        """
        now = now_iso()
        wanted = set(tags)
        c = notify_channels.c
        with self._db.write() as conn:
            stmt = select(c.id, c.name, c.tags, c.enabled)
            if channel_id is not None:
                stmt = stmt.where(c.id == channel_id)
            channels = conn.execute(stmt.order_by(c.id)).all()
            if channel_id is not None:
                if not channels:
                    raise NotFound(f"no notification channel {channel_id}")
                if not channels[0].enabled:
                    raise ValidationFailed(f"notification channel {channels[0].name!r} is disabled")
            chosen = [
                ch
                for ch in channels
                if ch.enabled
                and (channel_id is not None or not wanted or wanted & set(json.loads(ch.tags)))
            ]
            result = conn.execute(
                notify_messages.insert().values(
                    title=title,
                    body=body,
                    tags=json.dumps(list(tags)),
                    source=source[:160],
                    created_at=now,
                )
            )
            message_id = _new_id(result)
            if chosen:
                conn.execute(
                    notify_deliveries.insert(),
                    [
                        {
                            "message_id": message_id,
                            "channel_id": int(ch.id),
                            "channel_name": ch.name,
                            "status": "pending",
                            "attempts": 0,
                            "next_attempt_at": now,
                            "last_error": None,
                            "created_at": now,
                            "updated_at": now,
                            "delivered_at": None,
                        }
                        for ch in chosen
                    ],
                )
        return message_id, len(chosen)

    # -- the worker's view --------------------------------------------------

    def due(self, now: str, *, busy: Collection[int] = (), limit: int = 64) -> list[DueDelivery]:
        """Pending deliveries due at ``now``, oldest first, skipping busy channels."""
        d, m, c = notify_deliveries.c, notify_messages.c, notify_channels.c
        stmt = (
            select(
                d.id,
                d.message_id,
                d.channel_id,
                d.channel_name,
                d.attempts,
                d.next_attempt_at,
                m.title,
                m.body,
                m.source,
                c.enabled,
                c.rate_per_minute,
                c.url_encrypted,
            )
            .select_from(
                notify_deliveries.join(notify_messages, d.message_id == m.id).outerjoin(
                    notify_channels, d.channel_id == c.id
                )
            )
            .where(d.status == "pending", d.next_attempt_at <= now)
        )
        if busy:
            stmt = stmt.where(d.channel_id.is_(None) | d.channel_id.not_in(sorted(busy)))
        stmt = stmt.order_by(d.next_attempt_at, d.id).limit(limit)
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        return [
            DueDelivery(
                id=int(r.id),
                message_id=int(r.message_id),
                channel_id=None if r.channel_id is None else int(r.channel_id),
                channel_name=r.channel_name,
                attempts=int(r.attempts),
                next_attempt_at=r.next_attempt_at,
                title=r.title,
                body=r.body,
                source=r.source,
                enabled=bool(r.enabled),
                rate_per_minute=int(r.rate_per_minute or 1),
                url_encrypted=None if r.url_encrypted is None else bytes(r.url_encrypted),
            )
            for r in rows
        ]

    def next_due(self, *, busy: Collection[int] = ()) -> str | None:
        """The earliest ``next_attempt_at`` of a pending delivery on a free channel."""
        d = notify_deliveries.c
        stmt = select(func.min(d.next_attempt_at)).where(d.status == "pending")
        if busy:
            stmt = stmt.where(d.channel_id.is_(None) | d.channel_id.not_in(sorted(busy)))
        with self._db.read() as conn:
            value = conn.execute(stmt).scalar_one_or_none()
        return None if value is None else str(value)

    def move(self, delivery_id: int, *, expected: str, next_attempt_at: str) -> bool:
        """Compare-and-set ``next_attempt_at`` (a claim lease or a rate-limit delay)."""
        d = notify_deliveries.c
        with self._db.write() as conn:
            result = conn.execute(
                update(notify_deliveries)
                .where(d.id == delivery_id, d.status == "pending", d.next_attempt_at == expected)
                .values(next_attempt_at=next_attempt_at, updated_at=now_iso())
            )
        return bool(result.rowcount)

    def finish(
        self,
        delivery_id: int,
        *,
        status: str,
        attempts: int,
        error: str | None,
        next_attempt_at: str | None = None,
    ) -> None:
        """Record one attempt's outcome: delivered, failed, or pending again."""
        if status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}")
        now = now_iso()
        values: dict[str, Any] = {
            "status": status,
            "attempts": attempts,
            "last_error": error,
            "updated_at": now,
        }
        if status == "delivered":
            values["delivered_at"] = now
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        with self._db.write() as conn:
            conn.execute(
                update(notify_deliveries)
                .where(notify_deliveries.c.id == delivery_id)
                .values(**values)
            )

    # -- reading records ----------------------------------------------------

    def list_deliveries(
        self,
        *,
        status: str | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
        cursor: int | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first; the cursor is the last id of the page."""
        if status is not None and status not in STATUSES:
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}")
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be between 1 and {MAX_PAGE}")
        d, m, c = notify_deliveries.c, notify_messages.c, notify_channels.c
        stmt = select(
            d.id,
            d.message_id,
            m.title,
            m.source,
            d.channel_id,
            d.channel_name,
            c.url_masked,
            d.status,
            d.attempts,
            d.last_error,
            d.next_attempt_at,
            d.created_at,
            d.updated_at,
            d.delivered_at,
        ).select_from(
            notify_deliveries.join(notify_messages, d.message_id == m.id).outerjoin(
                notify_channels, d.channel_id == c.id
            )
        )
        if status is not None:
            stmt = stmt.where(d.status == status)
        if channel_id is not None:
            stmt = stmt.where(d.channel_id == channel_id)
        if message_id is not None:
            stmt = stmt.where(d.message_id == message_id)
        if cursor is not None:
            stmt = stmt.where(d.id < cursor)
        stmt = stmt.order_by(d.id.desc()).limit(limit + 1)
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        items = [
            {
                "id": int(r.id),
                "message_id": int(r.message_id),
                "title": r.title,
                "source": r.source,
                "channel_id": None if r.channel_id is None else int(r.channel_id),
                "channel_name": r.channel_name,
                "channel_url_masked": r.url_masked,
                "status": r.status,
                "attempts": int(r.attempts),
                "last_error": r.last_error,
                "next_attempt_at": r.next_attempt_at if r.status == "pending" else None,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
                "delivered_at": r.delivered_at,
            }
            for r in rows[:limit]
        ]
        return items, (items[-1]["id"] if len(rows) > limit else None)
