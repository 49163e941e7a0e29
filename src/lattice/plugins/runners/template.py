"""The template runtime: one pass over the source, no recursion, bounded output.

``{{path}}`` becomes the request path, ``{{kv:bucket/key}}`` the KV value and
``{{static:bucket/path}}`` the static object's text.  Substitution is a single
scan over the *source*: inserted values are never scanned again, so a path or
a KV value containing ``{{...}}`` comes out literally.  A reference the worker
may not read (no capability, a private bucket, a missing key, a bad name)
renders as the empty string, without echoing the reference.

Bounds: a template holds at most :data:`MAX_TAGS` tags (checked at deploy),
each reference is looked up once per render, and the output is counted while
it is built: the render stops with ``WorkerError`` as soon as it would pass
``max_bytes``, before the memory is spent.  So one render reads at most
``max_bytes`` plus one value and never runs long on the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lattice.errors import LatticeError, WorkerError

__all__ = ["MAX_TAGS", "TEMPLATE_TAG", "check_template", "render"]

TEMPLATE_TAG = re.compile(
    r"\{\{\s*(?:(?P<path>path)|(?P<kind>kv|static):(?P<bucket>[^/{}\s]{1,128})/(?P<name>[^{}\s]{1,1024}))\s*\}\}"
)
MAX_TAGS = 256

Lookup = Callable[[str, str], bytes | None]


def check_template(source: str) -> None:
    """Refuse a template with more tags than a render may expand."""
    count = sum(1 for _ in TEMPLATE_TAG.finditer(source))
    if count > MAX_TAGS:
        raise WorkerError(
            f"template has {count} tags; at most {MAX_TAGS} are allowed",
            detail={"tags": count, "limit": MAX_TAGS},
        )


def render(
    source: str, *, path: str, kv: Lookup, static: Lookup, max_bytes: int = 1024 * 1024
) -> bytes:
    """Render ``source`` for one request (UTF-8); raises WorkerError past ``max_bytes``."""
    parts: list[bytes] = []
    size = 0
    cache: dict[tuple[str, str, str], bytes] = {}
    position = 0
    tags = 0

    def add(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size > max_bytes:
            raise WorkerError(
                f"worker response exceeds the {max_bytes}-byte response limit",
                detail={"limit": max_bytes},
            )
        parts.append(piece)

    for match in TEMPLATE_TAG.finditer(source):
        tags += 1
        if tags > MAX_TAGS:  # a stored template older than the deploy check
            check_template(source)
        add(source[position : match.start()].encode("utf-8", "replace"))
        position = match.end()
        if match.group("path"):
            add(path.encode("utf-8", "replace"))
            continue
        ref = (match.group("kind"), match.group("bucket"), match.group("name"))
        if ref not in cache:
            cache[ref] = _lookup(kv if ref[0] == "kv" else static, ref[1], ref[2], max_bytes)
        add(cache[ref])
    add(source[position:].encode("utf-8", "replace"))
    return b"".join(parts)


def _lookup(lookup: Lookup, bucket: str, name: str, max_bytes: int) -> bytes:
    try:
        value = lookup(bucket, name)
    except LatticeError:
        return b""
    if value is None:
        return b""
    if len(value) > max_bytes:
        raise WorkerError(
            f"worker response exceeds the {max_bytes}-byte response limit",
            detail={"limit": max_bytes},
        )
    # what the text means as UTF-8, with undecodable bytes replaced (as before)
    return value.decode("utf-8", errors="replace").encode("utf-8")
