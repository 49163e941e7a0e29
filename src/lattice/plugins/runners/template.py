"""The template runtime: one pass over the source, no recursion.

``{{path}}`` becomes the request path, ``{{kv:bucket/key}}`` the KV value and
``{{static:bucket/path}}`` the static object's text.  Substitution is a single
``re.sub`` over the *source*: inserted values are never scanned again, so a
path or a KV value containing ``{{...}}`` comes out literally.  A reference the
worker may not read (no capability, a private bucket, a missing key, a bad
name) renders as the empty string, without echoing the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lattice.errors import LatticeError

__all__ = ["TEMPLATE_TAG", "render"]

TEMPLATE_TAG = re.compile(
    r"\{\{\s*(?:(?P<path>path)|(?P<kind>kv|static):(?P<bucket>[^/{}\s]{1,128})/(?P<name>[^{}\s]{1,1024}))\s*\}\}"
)

Lookup = Callable[[str, str], bytes | None]


def render(source: str, *, path: str, kv: Lookup, static: Lookup) -> str:
    """Render ``source`` for one request; lookups return bytes or None."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("path"):
            return path
        lookup = kv if match.group("kind") == "kv" else static
        try:
            value = lookup(match.group("bucket"), match.group("name"))
        except LatticeError:
            return ""
        return value.decode("utf-8", errors="replace") if value is not None else ""

    return TEMPLATE_TAG.sub(substitute, source)
