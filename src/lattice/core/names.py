"""Validation of user-supplied names: KV buckets and keys, static paths.

Everything here raises :class:`ValidationFailed` with a message that says what
rule the name broke.
"""

from __future__ import annotations

import re

from lattice.errors import ValidationFailed

__all__ = ["check_bucket", "check_key", "check_static_path", "is_plugin_bucket"]

_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_KEY_MAX = 512
_PATH_MAX = 1024
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~@+=,-]+$")


def _no_controls(kind: str, value: str) -> None:
    for ch in value:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValidationFailed(f"{kind} must not contain control characters")


def check_bucket(bucket: str) -> str:
    _no_controls("bucket name", bucket)
    if not _BUCKET.match(bucket):
        raise ValidationFailed(
            "bucket name must be 1-128 characters of letters, digits, '.', '_', ':' or '-',"
            " starting with a letter or digit",
            detail={"bucket": bucket[:140]},
        )
    if ".." in bucket:
        raise ValidationFailed("bucket name must not contain '..'")
    return bucket


def is_plugin_bucket(bucket: str) -> bool:
    return bucket.startswith("plugin:")


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
        if not _PATH_SEGMENT.match(segment):
            raise ValidationFailed(
                "path segments may hold only letters, digits and ._~@+=,-",
                detail={"segment": segment[:80]},
            )
    return path
