"""The Apprise edge: parse, mask and deliver one channel URL; keep secrets out of logs.

Everything Lattice knows about Apprise lives here, so the rest of the notify
service deals in plain values and Lattice errors:

* :func:`parse_channel_url` turns an operator's URL into a :class:`ChannelTarget`
  (service name, masked URL, network destinations) or raises
  ``ValidationFailed`` naming the service - never echoing the URL;
* :class:`PreparedChannel` holds the Apprise plugin for one URL; its ``send``
  delivers one message or raises :class:`DeliveryFailed` with a reason already
  scrubbed of the URL's secrets;
* :data:`SCRUBBER` is a ``logging.Filter`` installed on the ``apprise`` and
  ``urllib3.connectionpool`` loggers.  Apprise logs URLs and request paths at
  several levels (``Unparseable URL ...`` at ERROR, request URLs at DEBUG); the
  filter rewrites every record from those loggers, replacing secret fragments
  of every channel URL this process has handled and the userinfo/path/query of
  any ``scheme://`` text.  Apprise's per-call result capture is a handler on the
  same logger, so the failure reasons it collects are scrubbed the same way.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import apprise

from lattice.errors import ValidationFailed

__all__ = [
    "SCRUBBER",
    "ChannelTarget",
    "DeliveryFailed",
    "PreparedChannel",
    "SecretScrubber",
    "clip",
    "install_log_filters",
    "parse_channel_url",
]

MASK = "****"
MAX_MASKED = 512
MAX_REASON = 500
#: loggers whose records may carry a channel URL or a request path
FILTERED_LOGGERS = ("apprise", "urllib3.connectionpool")
#: class attributes that are documentation links, not where a plugin dials
_DOC_ATTRS = frozenset({"service_url", "setup_url"})
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]{0,31})://", re.IGNORECASE)
_ANY_URL = re.compile(r"\b([a-z][a-z0-9+.-]{1,31})://([^\s'\"<>]*)", re.IGNORECASE)
_HOSTLIKE = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9-]+(\.[a-z0-9-]+)+|localhost)(:\d{1,5})?$", re.I)
_SPLIT = re.compile(r"[/:@?&=#,;+\s]+")


class DeliveryFailed(Exception):
    """One delivery attempt did not succeed; ``reason`` is safe to store and show.

    Internal to the notify service: the worker turns it into a retry or a failed
    delivery record; it never reaches the API or a plugin.
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


# ------------------------------------------------------------------ scrubbing


def secret_fragments(url: str) -> tuple[set[str], str | None]:
    """Pieces of ``url`` that may be secret, and the host it names (not secret).

    A password counts from 3 characters, every other piece from 6.  Both the
    raw and the percent-decoded forms are returned.
    """
    rest = _SCHEME.sub("", url, count=1)
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, _, hostport = netloc.rpartition("@")
    host = hostport.rsplit(":", 1)[0] if not hostport.startswith("[") else hostport
    host = host if _HOSTLIKE.match(hostport or "-") else None
    found: set[str] = set()
    user, _, password = userinfo.partition(":")
    if len(user) >= 6:
        found.add(user)
    if len(password) >= 3:
        found.add(password)
    for piece in _SPLIT.split(rest):
        if len(piece) >= 6 and piece != host and piece != hostport:
            found.add(piece)
    found |= {urllib.parse.unquote(f) for f in found}
    return {f for f in found if len(f) >= 3}, host


def _looks_secret(fragment: str) -> bool:
    """A path or query piece that is plausibly a token (not a word like 'webhooks')."""
    return len(fragment) >= 6 and (
        any(ch.isdigit() for ch in fragment) or fragment.lower() != fragment or len(fragment) >= 20
    )


class SecretScrubber(logging.Filter):
    """Rewrites log records so no channel secret survives into a log line.

    Fragments are remembered process-wide (bounded, oldest forgotten first): a
    record may be logged by an Apprise worker thread after the call that caused
    it has returned.
    """

    def __init__(self, *, capacity: int = 4096) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._fragments: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._capacity = capacity

    def remember(self, url: str) -> None:
        fragments, _host = secret_fragments(url)
        fragments.add(url)
        rest = _SCHEME.sub("", url, count=1)
        if len(rest) >= 6:
            fragments.add(rest)
        with self._lock:
            changed = False
            for fragment in fragments:
                if fragment in self._fragments:
                    self._fragments.move_to_end(fragment)
                else:
                    self._fragments[fragment] = None
                    changed = True
            while len(self._fragments) > self._capacity:
                self._fragments.popitem(last=False)
                changed = True
            if changed:
                ordered = sorted(self._fragments, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def scrub(self, text: str) -> str:
        with self._lock:
            pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return _ANY_URL.sub(_mask_url_match, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: drop its arguments rather than leak them
            message = str(record.msg)
        clean = self.scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


def _mask_url_match(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    netloc, sep, tail = _split_netloc(rest)
    _userinfo, at, hostport = netloc.rpartition("@")
    shown = hostport if _HOSTLIKE.match(hostport or "-") else MASK
    prefix = f"{MASK}@" if at else ""
    suffix = f"/{MASK}" if tail or sep not in ("", "/") else sep
    return f"{scheme}://{prefix}{shown}{suffix}"


def _split_netloc(rest: str) -> tuple[str, str, str]:
    match = re.search(r"[/?#]", rest)
    if match is None:
        return rest, "", ""
    return rest[: match.start()], rest[match.start()], rest[match.end() :]


SCRUBBER = SecretScrubber()
_installed = threading.Lock()


def install_log_filters() -> None:
    """Put :data:`SCRUBBER` on every logger that may print a channel URL (idempotent)."""
    with _installed:
        for name in FILTERED_LOGGERS:
            logger = logging.getLogger(name)
            if SCRUBBER not in logger.filters:
                logger.addFilter(SCRUBBER)


# -------------------------------------------------------------- parse and mask


@dataclass(frozen=True)
class ChannelTarget:
    """What Lattice may know and show about a channel URL (never the URL itself)."""

    service: str
    masked: str
    #: (host, port) pairs the plugin dials; empty when it cannot be determined
    destinations: tuple[tuple[str, int], ...]


def _asset(timeout: float = 0.0) -> Any:
    # memory-only persistent store (nothing written under $HOME); masked logging
    return apprise.AppriseAsset(storage_mode="memory", secure_logging=True, service_timeout=timeout)


def _plugins() -> Any:
    """Apprise's (singleton) registry of notification plugins, by scheme."""
    return apprise.NotificationManager()  # type: ignore[no-untyped-call]


def _instantiate(url: str) -> Any:
    SCRUBBER.remember(url)
    scheme = _SCHEME.match(url)
    if scheme is None:
        raise ValidationFailed("url must be an Apprise URL such as 'tgram://...' or 'jsons://...'")
    name = scheme.group(1).lower()
    if name not in _plugins():
        raise ValidationFailed(f"url scheme {name!r} is not a notification service Apprise knows")
    plugin = apprise.Apprise.instantiate(url, asset=_asset())
    if plugin is None:
        service = _plugins()[name].service_name
        raise ValidationFailed(
            f"url is not a valid {service} URL ({name}://); "
            "check the service's URL format in the Apprise documentation"
        )
    return plugin


def _destinations(plugin: Any) -> tuple[tuple[str, int], ...]:
    """Where the plugin will connect: its own host, SMTP host, or fixed API URLs."""
    secure = bool(getattr(plugin, "secure", False))
    default_port = 443 if secure else 80
    port = int(getattr(plugin, "port", None) or 0)
    smtp_host = getattr(plugin, "smtp_host", None)
    if isinstance(smtp_host, str) and smtp_host:
        return ((smtp_host, port or (465 if secure else 25)),)
    host = getattr(plugin, "host", None)
    if "host" in getattr(plugin, "template_tokens", {}) and isinstance(host, str) and host:
        return ((host.strip("[]"), port or default_port),)
    found: list[tuple[str, int]] = []
    for attr in sorted(dir(type(plugin))):
        value = getattr(type(plugin), attr, None)
        if attr in _DOC_ATTRS or not isinstance(value, str):
            continue
        if value.startswith(("https://", "http://")):
            parts = urllib.parse.urlsplit(value.replace("{}", "x"))
            if parts.hostname:
                pair = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
                if pair not in found:
                    found.append(pair)
    return tuple(found)


def _masked(plugin: Any, url: str) -> str:
    masked = str(plugin.url(privacy=True))
    fragments, host = secret_fragments(url)
    userinfo = _SCHEME.sub("", url, count=1).split("/", 1)[0].rpartition("@")[0]
    if "host" in getattr(plugin, "template_tokens", {}):
        host = str(getattr(plugin, "host", "") or host or "")  # a real hostname: keep it
    hide = {f for f in fragments if _looks_secret(f) and f != host}
    password = userinfo.partition(":")[2]
    if len(password) >= 3:
        hide.add(password)  # always, however plain it looks
    for fragment in sorted(hide, key=len, reverse=True):
        masked = masked.replace(fragment, MASK)
        masked = masked.replace(urllib.parse.quote(fragment, safe=""), MASK)
    return masked if len(masked) <= MAX_MASKED else masked[: MAX_MASKED - 3] + "..."


class PreparedChannel:
    """A validated Apprise plugin for one channel URL, ready to send."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._plugin = _instantiate(url)
        self.target = ChannelTarget(
            service=str(type(self._plugin).service_name)[:32],
            masked=_masked(self._plugin, url),
            destinations=_destinations(self._plugin),
        )

    def __repr__(self) -> str:
        return f"PreparedChannel({self.target.masked!r})"

    def send(self, *, title: str, body: str, timeout: float) -> None:
        """Deliver within ``timeout`` seconds or raise :class:`DeliveryFailed`."""
        plugin = self._plugin
        # socket timeouts no longer than the overall budget, so Apprise's own
        # worker thread finishes soon after we stop waiting for it
        for attr, cap in (
            ("socket_connect_timeout", timeout / 2),
            ("socket_read_timeout", timeout),
        ):
            current = getattr(plugin, attr, None)
            if isinstance(current, int | float):
                setattr(plugin, attr, min(float(current), cap))
        sender = apprise.Apprise(asset=_asset(timeout))
        sender.add(plugin)
        try:
            result = sender.notify(body=body, title=title, timeout=timeout)
        except Exception as exc:  # Apprise reports service failures in the result
            raise DeliveryFailed(f"apprise error: {type(exc).__name__}") from None
        if not result:
            raise DeliveryFailed(clip(SCRUBBER.scrub(_reason(result))))


def parse_channel_url(url: str) -> ChannelTarget:
    """Validate ``url`` with Apprise; raises ``ValidationFailed`` that never echoes it."""
    return PreparedChannel(url).target


# ------------------------------------------------------------------ delivery


def _reason(result: Any) -> str:
    messages: list[str] = []
    for service_result in result:
        messages.extend(
            entry.message
            for entry in service_result.logs()
            if entry.level in ("WARNING", "ERROR", "CRITICAL")
        )
    status = getattr(result.status, "name", str(result.status)).lower()
    detail = messages[-1] if messages else "the service reported no detail"
    return f"{status}: {detail}"


def clip(text: str, limit: int = MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
