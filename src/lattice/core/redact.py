"""Redacting URLs before they are audited or logged.

A URL a plugin dials may carry credentials in its userinfo (``user:pass@``) or
in query values (``?api_key=...``).  :func:`redact_url` keeps what says *where*
a request went (scheme, host, port, path and the query's keys) and replaces
what may be secret::

    https://user:pw@api.test:8443/v1/items?api_key=s3cret&page=2#top
    -> https://***@api.test:8443/v1/items?api_key=***&page=***

A query item without ``=`` is one opaque value and becomes ``***`` as a whole;
the fragment is dropped.  Anything that does not parse as
``scheme://host[:port]...`` becomes the placeholder ``<invalid url>``: a
redactor must never raise and must never guess where a secret ends.
"""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["INVALID_URL", "MASK", "redact_url"]

MASK = "***"
INVALID_URL = "<invalid url>"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_PORT = re.compile(r"^[0-9]{0,5}$")
#: a registered name or IPv4 literal (no delimiter or space), or a bracketed IPv6 literal
_HOST = re.compile(r"^(?:[^\s/?#@\[\]:\\]+|\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\])$")


def redact_url(url: object) -> str:
    """``url`` with userinfo and query values masked and no fragment (never raises)."""
    try:
        text = url if isinstance(url, str) else str(url)
        return _redact(text)
    except Exception:
        return INVALID_URL


def _redact(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if not _SCHEME.match(parts.scheme):
        return INVALID_URL
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, port = _split_port(hostport)
    if host is None or not _HOST.match(host) or not _PORT.match(port):
        return INVALID_URL
    authority = (f"{MASK}@" if at else "") + hostport
    query = "&".join(_mask_item(item) for item in parts.query.split("&")) if parts.query else ""
    del userinfo  # never used: whatever stood before the last "@" may be a secret
    return urllib.parse.urlunsplit((parts.scheme, authority, parts.path, query, ""))


def _split_port(hostport: str) -> tuple[str | None, str]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            return None, ""
        rest = hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            return None, ""
        return hostport[: end + 1], rest[1:]
    host, _colon, port = hostport.partition(":")
    return host, port


def _mask_item(item: str) -> str:
    key, eq, _value = item.partition("=")
    return f"{key}={MASK}" if eq else (MASK if item else "")
