"""Notification fanout: operator-managed Apprise channels, an outbox, a delivery worker.

``NotifyService`` implements the broker's ``Notifier`` protocol
(``send(*, title, body, tags, source)``): a send writes one message and one
``pending`` delivery per matching enabled channel in ONE transaction and
returns the message id; :class:`~lattice.services.notify_worker.DeliveryWorker`
delivers asynchronously, so a restart resumes whatever is still pending.

Channel URLs carry credentials.  They are validated by Apprise, encrypted at
rest with the server's :class:`SecretBox` under the context
``notify-channel:<id>`` (the row id never changes, so a rename needs no
re-encryption), and only ever shown in Apprise's privacy rendering - in API
responses, audit details and (through ``notify_apprise.SCRUBBER``) log lines.

Module map: ``notify_apprise`` (the Apprise edge), ``notify_store`` (SQL),
``notify_worker`` (dispatcher, rate limits, backoff, egress pre-check),
``notify_http`` (Apprise's HTTP through the egress guard).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lattice.core.auditsink import AuditSink
from lattice.core.secrets import SecretBox
from lattice.errors import ValidationFailed
from lattice.services.egress import EgressGuard, Resolver
from lattice.services.egress_policy import EgressPolicy
from lattice.services.notify_apprise import SCRUBBER, install_log_filters, parse_channel_url
from lattice.services.notify_store import Channel, NotifyStore
from lattice.services.notify_worker import DeliveryWorker

__all__ = ["MAX_BODY", "MAX_TAGS", "MAX_TITLE", "NotifyService", "check_tags"]

MAX_TITLE = 256
MAX_BODY = 32 * 1024
MAX_TAGS = 16
MAX_URL = 2048
MAX_RATE = 6000
_TAG = re.compile(r"^[a-z0-9_-]{1,32}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_CHANGEABLE = frozenset({"name", "url", "tags", "enabled", "rate_per_minute"})
TEST_TITLE = "Lattice test notification"
TEST_BODY = "This is a test message from Lattice."


def check_tags(tags: Sequence[str]) -> list[str]:
    """At most 16 tags of 1-32 characters ``[a-z0-9_-]``; returns them sorted, unique."""
    if isinstance(tags, str) or len(tags) > MAX_TAGS:
        raise ValidationFailed(f"tags must be a list of at most {MAX_TAGS} tags")
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise ValidationFailed(f"tag {str(tag)[:40]!r} must be 1-32 characters of a-z 0-9 _ -")
    return sorted(set(tags))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationFailed(
            "channel name must be 1-64 characters of letters, digits, space . _ - "
            "starting with a letter or digit"
        )
    return name


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL:
        raise ValidationFailed(f"url must be 1-{MAX_URL} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValidationFailed("url must not contain whitespace or control characters")
    return url


def _check_rate(rate: int) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= MAX_RATE:
        raise ValidationFailed(f"rate_per_minute must be between 1 and {MAX_RATE}")
    return rate


def _check_message(title: str, body: str) -> None:
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise ValidationFailed(f"title must be at most {MAX_TITLE} characters")
    if not isinstance(body, str) or len(body) > MAX_BODY:
        raise ValidationFailed(f"body must be at most {MAX_BODY} characters")
    if not title.strip() and not body.strip():
        raise ValidationFailed("a notification needs a title or a body")


def _context(channel_id: int) -> str:
    return f"notify-channel:{channel_id}"


def _audit_detail(channel: Channel) -> dict[str, Any]:
    return {
        "name": channel.name,
        "service": channel.service,
        "url_masked": channel.url_masked,
        "tags": list(channel.tags),
        "enabled": channel.enabled,
        "rate_per_minute": channel.rate_per_minute,
    }


class NotifyService:
    """The ``Notifier`` host service plus the operator's channel administration."""

    def __init__(
        self,
        store: NotifyStore,
        secrets: SecretBox,
        audit: AuditSink,
        *,
        egress_policy: EgressPolicy,
        retry_base_seconds: float = 2.0,
        max_attempts: int = 8,
        timeout_seconds: float = 15.0,
        resolver: Resolver | None = None,
        egress: EgressGuard | None = None,
    ) -> None:
        install_log_filters()
        self._store = store
        self._box = secrets
        self._audit = audit
        self.worker = DeliveryWorker(
            store,
            unseal=self._unseal,
            audit=audit,
            egress_policy=egress_policy,
            retry_base=retry_base_seconds,
            max_attempts=max_attempts,
            timeout=timeout_seconds,
            resolver=resolver,
            egress=egress,
        )

    def __repr__(self) -> str:
        return "NotifyService(<channels hidden>)"

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        self.worker.close()

    # -- secrets --------------------------------------------------------------

    def _seal(self, url: str) -> Callable[[int], bytes]:
        return lambda channel_id: self._box.encrypt_text(url, context=_context(channel_id))

    def _unseal(self, channel_id: int, blob: bytes) -> str:
        return self._box.decrypt_text(blob, context=_context(channel_id))

    # -- channels -------------------------------------------------------------

    def list_channels(self) -> list[dict[str, Any]]:
        return [c.to_public_dict() for c in self._store.list_channels()]

    def get_channel(self, channel_id: int) -> dict[str, Any]:
        return self._store.get_channel(channel_id).to_public_dict()

    def create_channel(
        self,
        *,
        name: str,
        url: str,
        tags: Sequence[str] = (),
        enabled: bool = True,
        rate_per_minute: int = 30,
        actor: str,
    ) -> dict[str, Any]:
        # 1. validate everything (Apprise parses the URL) before any state change
        name = _check_name(name)
        if isinstance(url, str):
            SCRUBBER.remember(url)  # Apprise may log it while refusing it
        target = parse_channel_url(_check_url(url))
        clean_tags = check_tags(tags)
        rate = _check_rate(rate_per_minute)
        # 2. one transaction: insert, then seal the URL under the new row id
        channel = self._store.create_channel(
            name=name,
            service=target.service,
            url_masked=target.masked,
            tags=clean_tags,
            enabled=bool(enabled),
            rate_per_minute=rate,
            seal=self._seal(url),
        )
        # 3. audit with the masked URL only
        self._audit.append(
            actor=actor,
            action="notify.channel.create",
            target=_context(channel.id),
            detail=_audit_detail(channel),
        )
        return channel.to_public_dict()

    def update_channel(
        self, channel_id: int, changes: Mapping[str, Any], *, actor: str
    ) -> dict[str, Any]:
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise ValidationFailed(f"unknown field {sorted(unknown)[0]!r}")
        if not changes:
            raise ValidationFailed("nothing to change")
        self._store.get_channel(channel_id)  # 404 before validating a URL
        values: dict[str, Any] = {}
        seal = None
        if "name" in changes:
            values["name"] = _check_name(changes["name"])
        if "tags" in changes:
            values["tags"] = check_tags(changes["tags"])
        if "enabled" in changes:
            values["enabled"] = bool(changes["enabled"])
        if "rate_per_minute" in changes:
            values["rate_per_minute"] = _check_rate(changes["rate_per_minute"])
        if "url" in changes:
            url = changes["url"]
            if isinstance(url, str):
                SCRUBBER.remember(url)
            target = parse_channel_url(_check_url(url))
            values["service"] = target.service
            values["url_masked"] = target.masked
            seal = self._seal(url)
        channel = self._store.update_channel(channel_id, values, seal=seal)
        self._audit.append(
            actor=actor,
            action="notify.channel.update",
            target=_context(channel.id),
            detail={**_audit_detail(channel), "changed": sorted(changes)},
        )
        return channel.to_public_dict()

    def delete_channel(self, channel_id: int, *, actor: str) -> dict[str, Any]:
        channel = self._store.delete_channel(channel_id)
        self._audit.append(
            actor=actor,
            action="notify.channel.delete",
            target=_context(channel.id),
            detail=_audit_detail(channel),
        )
        return {"deleted": channel.id, "name": channel.name}

    # -- sending --------------------------------------------------------------

    def send(self, *, title: str, body: str, tags: Sequence[str], source: str) -> int:
        """Queue one message for every enabled channel sharing a tag; returns its id."""
        _check_message(title, body)
        clean_tags = check_tags(list(tags))
        message_id, _count = self._store.enqueue(
            title=title, body=body, tags=clean_tags, source=str(source)[:160]
        )
        self.worker.wake()
        return message_id

    def test(
        self,
        *,
        channel_id: int | None,
        title: str | None = None,
        body: str | None = None,
        actor: str,
    ) -> dict[str, Any]:
        """Queue a test message to one channel (or every enabled one) through the outbox."""
        title = TEST_TITLE if title is None else title
        body = TEST_BODY if body is None else body
        _check_message(title, body)
        message_id, count = self._store.enqueue(
            title=title, body=body, tags=[], source=f"test:{actor}", channel_id=channel_id
        )
        self.worker.wake()
        self._audit.append(
            actor=actor,
            action="notify.test",
            target=_context(channel_id) if channel_id is not None else "notify-channel:*",
            detail={"message_id": message_id, "channel_id": channel_id, "deliveries": count},
        )
        return {"message_id": message_id, "deliveries": count}

    def deliveries(
        self,
        *,
        status: str | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
        cursor: int | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int | None]:
        return self._store.list_deliveries(
            status=status, channel_id=channel_id, message_id=message_id, cursor=cursor, limit=limit
        )
