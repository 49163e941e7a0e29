"""Validation of user-supplied names: KV buckets and keys, static paths, and
display names (plugin names; reusable for token and channel names).

Everything here raises :class:`ValidationFailed` with a message that says what
rule the name broke.
"""

from __future__ import annotations

import re
import unicodedata

from lattice.errors import ValidationFailed

__all__ = [
    "check_bucket",
    "check_key",
    "check_listing_arg",
    "check_static_path",
    "check_visible_name",
    "is_plugin_bucket",
]

_BUCKET_MAX = 128
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_KEY_MAX = 512
_PATH_MAX = 1024
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~@+=,-]+")


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (NUL included)
_SURROGATES = re.compile("[\ud800-\udfff]")  # lone surrogates cannot be stored as UTF-8


def _no_controls(kind: str, value: str) -> None:
    if _CONTROLS.search(value):
        raise ValidationFailed(f"{kind} must not contain control characters")
    if _SURROGATES.search(value):
        raise ValidationFailed(f"{kind} must be valid Unicode (no surrogate code points)")


def check_bucket(bucket: str) -> str:
    if not bucket:
        raise ValidationFailed("bucket name must not be empty")
    if len(bucket) > _BUCKET_MAX:
        raise ValidationFailed(f"bucket name must be at most {_BUCKET_MAX} characters")
    _no_controls("bucket name", bucket)
    if ".." in bucket:
        raise ValidationFailed("bucket name must not contain '..'")
    if "\\" in bucket:
        raise ValidationFailed("bucket name must not contain backslashes")
    if not _BUCKET.fullmatch(bucket):
        raise ValidationFailed(
            "bucket name may hold only letters, digits, '.', '_', ':' or '-',"
            " starting with a letter or digit",
            detail={"bucket": bucket},
        )
    return bucket


def is_plugin_bucket(bucket: str) -> bool:
    """``plugin:*`` buckets are reserved; matched case-insensitively so that no
    backend collation can make ``PLUGIN:x`` alias a plugin's bucket."""
    return bucket[:7].lower() == "plugin:"


def check_key(key: str) -> str:
    if not key:
        raise ValidationFailed("key must not be empty")
    if len(key) > _KEY_MAX:
        raise ValidationFailed(f"key must be at most {_KEY_MAX} characters")
    _no_controls("key", key)
    if ".." in key:
        raise ValidationFailed("key must not contain '..'")
    if "\\" in key:
        raise ValidationFailed("key must not contain backslashes")
    return key


def check_static_path(path: str) -> str:
    if not path:
        raise ValidationFailed("path must not be empty")
    if len(path) > _PATH_MAX:
        raise ValidationFailed(f"path must be at most {_PATH_MAX} characters")
    _no_controls("path", path)  # includes NUL
    if "\\" in path:
        raise ValidationFailed("path must not contain backslashes")
    if path.startswith("/"):
        raise ValidationFailed("path must be relative (no leading '/')")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValidationFailed("path must not contain empty, '.' or '..' segments")
        if not _PATH_SEGMENT.fullmatch(segment):
            raise ValidationFailed(
                "path segments may hold only letters, digits and ._~@+=,-",
                detail={"segment": segment[:80]},
            )
    return path


def check_listing_arg(kind: str, value: str, *, max_len: int) -> str:
    """A listing ``prefix`` or ``cursor``: bounded, no control characters, valid
    Unicode (PostgreSQL refuses NUL in text, so this must be a 400, not a 503)."""
    if len(value) > max_len:
        raise ValidationFailed(f"{kind} must be at most {max_len} characters")
    _no_controls(kind, value)
    return value


_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
#: letters and symbols that render as nothing: Hangul fillers, the braille blank,
#: the Khitan filler.  (Space look-alikes such as U+00A0, U+2000-U+200A, U+202F,
#: U+205F, U+3000 and format characters such as U+00AD, U+180E are separators or
#: "other" in Unicode, so the printable check refuses them already.)
_BLANK_LOOKALIKES = frozenset("\u115f\u1160\u3164\uffa0\u2800\U00016fe4")
_VISIBLE_CATEGORIES = ("L", "N", "P", "S")


def _visible(ch: str) -> bool:
    return ch not in _BLANK_LOOKALIKES and unicodedata.category(ch)[0] in _VISIBLE_CATEGORIES


def check_visible_name(kind: str, value: str) -> str:
    """A name a person reads (plugin, token, channel name): every character is
    printable (no controls, bidi overrides, zero-width or format characters, no
    space other than U+0020), no look-alike blank appears anywhere, and at least
    one character is visible (a letter, digit, punctuation or symbol; combining
    marks alone do not count).  Length limits are the caller's."""
    for ch in value:
        if ch in _BIDI:
            raise ValidationFailed(f"{kind} contains bidi control character U+{ord(ch):04X}")
        if ch in _ZERO_WIDTH:
            raise ValidationFailed(f"{kind} contains zero-width character U+{ord(ch):04X}")
        if not ch.isprintable():
            raise ValidationFailed(f"{kind} contains non-printable character U+{ord(ch):04X}")
        if ch in _BLANK_LOOKALIKES:
            raise ValidationFailed(
                f"{kind} contains U+{ord(ch):04X}, a character that renders blank"
            )
    if not any(_visible(ch) for ch in value):
        raise ValidationFailed(
            f"{kind} must not be blank: it needs a visible character "
            "(a letter, digit, punctuation or symbol; not only spaces or combining marks)"
        )
    return value
