"""Plugin manifest v1: strict decoding, validation and the signing payload.

A :class:`Manifest` cannot exist in an invalid state: the dataclass validates
itself on construction, and :meth:`Manifest.from_json` adds the JSON-level checks
(duplicate keys, unknown or missing fields, wrong types, NaN, trailing data).

Field rules (v1):

* ``id``, ``publisher``: 3-128 characters of ``[a-z0-9.-]``, starting and ending
  alphanumeric, no ``..``.  ``publisher`` may be empty (unsigned bundle).
* ``name``: 1-80 characters passing :func:`lattice.core.names.check_visible_name`:
  printable, no control, bidi-override/isolate, zero-width or format characters,
  no look-alike blank (U+3164, U+2800, ...) and at least one visible character.
* ``type``: ``system``, ``wasm`` or ``worker``.
* ``capabilities``: non-empty list, each known, unique and allowed for the type.
* ``version``: ``[0-9A-Za-z][0-9A-Za-z.+-]{0,63}``.
* ``entrypoint``: empty, or up to 128 characters of ``[A-Za-z0-9._:/-]``, no ``..``,
  not starting with ``/``.  It names something inside the artifact for the runner (a
  module, an export, ``module:function``); it is never joined to a server path.  Empty
  is valid in the manifest (Lattice v1 writes it so); a runner that needs one refuses
  to start the plugin.
* ``digest_sha256``: exactly 64 *lowercase* hex characters.  Uppercase is refused:
  the digest is part of the signed payload, so it has one spelling.
* ``signature_ed25519``: empty (unsigned) or at most 128 characters of standard
  base64; the verifier decodes it and requires exactly 64 bytes.

Optional on input: ``publisher`` and ``signature_ed25519`` may be absent, which
means empty (the original Lattice v1 omits them from unsigned bundles); every
other field is required.  :meth:`Manifest.to_json` always writes all nine, and
the signing payload is the same either way.

Signed vs unsigned: a manifest with both ``publisher`` and ``signature_ed25519``
empty is unsigned.  A manifest that names a publisher must verify against that
publisher's trusted key whatever the policy flags (the verifier refuses a named
publisher with no signature); a signature without a publisher is refused too.

Evolution rule (append-only, versioned): the v1 field set and the v1 signing
payload below never change.  A future format adds fields only at the end, with
defaults that keep v1 meaning, and signs under a new domain tag
(``lattice-plugin-manifest-v2``) whose payload appends the new fields after the v1
ones; v1 manifests keep verifying with the v1 payload forever.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from lattice.core.names import check_visible_name
from lattice.errors import ManifestError, ValidationFailed
from lattice.plugins.capabilities import PLUGIN_TYPES, check_capabilities

__all__ = [
    "FIELDS",
    "OPTIONAL_FIELDS",
    "SIGNING_DOMAIN",
    "Manifest",
    "check_identifier",
    "decode_json_object",
]

#: v1 fields, in canonical (written) order
FIELDS: tuple[str, ...] = (
    "id",
    "name",
    "type",
    "capabilities",
    "version",
    "entrypoint",
    "publisher",
    "digest_sha256",
    "signature_ed25519",
)
#: fields that may be absent on input, meaning ""
OPTIONAL_FIELDS: tuple[str, ...] = ("publisher", "signature_ed25519")
SIGNING_DOMAIN = "lattice-plugin-manifest-v1"

_IDENT = re.compile(r"[a-z0-9][a-z0-9.-]{1,126}[a-z0-9]")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,63}")
_ENTRYPOINT = re.compile(r"[A-Za-z0-9._:/-]{0,128}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{0,126}={0,2}")
_NAME_MAX = 80


def check_identifier(value: str, field: str) -> None:
    """Validate an id or publisher id (see the module docstring)."""
    if not _IDENT.fullmatch(value) or ".." in value:
        raise ManifestError(
            f"{field} {value[:140]!r} must be 3-128 characters of [a-z0-9.-], "
            "start and end alphanumeric, and not contain '..'"
        )


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= _NAME_MAX:
        raise ManifestError(f"name must be 1-{_NAME_MAX} characters, got {len(name)}")
    try:
        check_visible_name("name", name)
    except ValidationFailed as exc:
        raise ManifestError(exc.message) from None


def _reject_constant(token: str) -> Any:
    raise ManifestError(f"manifest contains {token}, which is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def decode_json_object(data: bytes | str, what: str = "manifest") -> dict[str, Any]:
    """Strictly decode one JSON object: UTF-8, no duplicate keys, no NaN/Infinity,
    nothing after the object.  Raises ManifestError (``what`` names the document)."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{what} is not valid UTF-8") from exc
    else:
        text = data
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, end = json.JSONDecoder(
            object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        ).raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc.msg} at offset {exc.pos}") from exc
    except (ValueError, RecursionError) as exc:  # int digit limit, deep nesting
        raise ManifestError(f"{what} is not valid JSON: {type(exc).__name__}") from exc
    if text[end:].strip(" \t\r\n"):
        raise ManifestError(f"{what} has trailing data after the JSON object (offset {end})")
    if not isinstance(value, dict):
        raise ManifestError(f"{what} must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    if value is None:
        return "null"
    return names.get(type(value), "object")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated v1 manifest.  Build it with :meth:`from_json` or keywords."""

    id: str
    name: str
    type: str
    capabilities: tuple[str, ...]
    version: str
    entrypoint: str
    publisher: str
    digest_sha256: str
    signature_ed25519: str

    def __post_init__(self) -> None:
        caps: object = self.capabilities
        if type(caps) is list:  # JSON arrays arrive as lists
            object.__setattr__(self, "capabilities", tuple(caps))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "capabilities":
                self._check_capability_list(value)
            elif type(value) is not str:
                raise ManifestError(f"field {f.name!r} must be a string, got {_json_type(value)}")
        # 1. identity
        check_identifier(self.id, "id")
        if self.publisher:
            check_identifier(self.publisher, "publisher")
        _check_name(self.name)
        # 2. type and capabilities (the capability table decides)
        if self.type not in PLUGIN_TYPES:
            raise ManifestError(f"type {self.type[:32]!r} must be one of {', '.join(PLUGIN_TYPES)}")
        if not self.capabilities:
            raise ManifestError("capabilities must list at least one capability")
        check_capabilities(self.type, self.capabilities)
        # 3. the remaining string shapes
        if not _VERSION.fullmatch(self.version):
            raise ManifestError(
                f"version {self.version[:80]!r} must match [0-9A-Za-z][0-9A-Za-z.+-]{{0,63}}"
            )
        if (
            not _ENTRYPOINT.fullmatch(self.entrypoint)
            or ".." in self.entrypoint
            or self.entrypoint.startswith("/")
        ):
            raise ManifestError(
                f"entrypoint {self.entrypoint[:140]!r} must be empty or up to 128 "
                "characters of [A-Za-z0-9._:/-], not absolute, and not contain '..'"
            )
        if not _DIGEST.fullmatch(self.digest_sha256):
            raise ManifestError("digest_sha256 must be 64 lowercase hex characters")
        if not _SIGNATURE.fullmatch(self.signature_ed25519):
            raise ManifestError(
                "signature_ed25519 must be empty or standard base64 (at most 128 characters)"
            )

    @staticmethod
    def _check_capability_list(value: object) -> None:
        if type(value) is not tuple:
            raise ManifestError(f"field 'capabilities' must be an array, got {_json_type(value)}")
        for item in value:
            if type(item) is not str:
                raise ManifestError(
                    f"capabilities must contain only strings, got {_json_type(item)}"
                )

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Decode and validate; raises ManifestError or CapabilityError."""
        return cls.from_mapping(decode_json_object(data))

    @classmethod
    def from_mapping(cls, obj: dict[str, Any]) -> Manifest:
        """Validate an already-decoded JSON object (exact v1 field set; the
        optional fields default to "")."""
        missing = [f for f in FIELDS if f not in obj and f not in OPTIONAL_FIELDS]
        if missing:
            raise ManifestError(f"manifest is missing field(s): {', '.join(missing)}")
        unknown = sorted(k for k in obj if k not in FIELDS)
        if unknown:
            shown = ", ".join(repr(k[:64]) for k in unknown[:5])
            raise ManifestError(f"manifest has unknown field(s): {shown}")
        return cls(**{f: obj.get(f, "") for f in FIELDS})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in canonical field order."""
        out = asdict(self)
        out["capabilities"] = list(self.capabilities)
        return {f: out[f] for f in FIELDS}

    def to_json(self) -> bytes:
        """Canonical file form: 2-space indent, canonical key order, trailing newline."""
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode()

    @property
    def signed(self) -> bool:
        """Carries a signature (not: the signature is valid; see Verifier)."""
        return bool(self.signature_ed25519)

    def signing_payload(self) -> bytes:
        """The exact bytes signed with Ed25519 (v1; never change this)."""
        parts = [
            SIGNING_DOMAIN,
            self.id,
            self.name,
            self.type,
            self.version,
            self.entrypoint,
            self.publisher,
            self.digest_sha256,
            "\x00".join(sorted(self.capabilities)),
        ]
        return "\n".join(parts).encode("utf-8")

    def without_signature(self) -> Manifest:
        return replace(self, signature_ed25519="")
