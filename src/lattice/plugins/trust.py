"""Operator trust policy and the manifest verifier.

Policy file (JSON, strict; every field optional, defaults fail closed)::

    {"trusted_publishers": {
        "<publisher id>": "<standard base64 of a 32-byte Ed25519 key>",
        "<publisher id>": {"key": "<base64 key>", "namespaces": ["acme.", "dev.acme"]}},
     "allow_unsigned": false,
     "allow_unsigned_host_risk": false}

A publisher entry is either its key (unbound: it may ship any id no other entry
reserves) or an object with exactly ``key`` and ``namespaces`` (bound: it may ship
only ids inside its namespaces).  A namespace ending in ``.`` or ``-`` covers the
ids that start with it (``acme.`` covers ``acme.x``); any other namespace covers
that id and the ids below it (``dev.acme`` covers ``dev.acme`` and ``dev.acme.x``,
not ``dev.acmex``).  Namespaces also reserve: an id inside a bound publisher's
namespace is refused from any other publisher and from unsigned bundles.

No file means :meth:`TrustPolicy.default`: no trusted publishers, both flags false,
so every bundle is refused.  ``allow_unsigned`` admits unsigned bundles without
host-risk capabilities; an unsigned bundle holding a host-risk capability needs
*both* flags.  ``http:egress`` always needs a trusted signature.  Policy errors
raise :class:`~lattice.errors.ConfigError` (the file is operator configuration).

:class:`Verifier` turns a manifest plus its artifact digest into a
:class:`Verification` or raises :class:`~lattice.errors.VerificationError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lattice.errors import ConfigError, LatticeError, VerificationError
from lattice.plugins.capabilities import Risk, host_risk, needs_signature, risk_of
from lattice.plugins.manifest import Manifest, check_identifier, decode_json_object

__all__ = [
    "INSECURE_FLAGS",
    "MAX_POLICY_BYTES",
    "TrustPolicy",
    "Verification",
    "Verifier",
    "b64decode_exact",
    "check_namespace",
    "decode_public_key",
    "namespace_covers",
]

INSECURE_FLAGS: tuple[str, ...] = ("allow_unsigned", "allow_unsigned_host_risk")
MAX_POLICY_BYTES = 1024 * 1024
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9.-]{0,127}")
_ENTRY_FIELDS = frozenset({"key", "namespaces"})
MAX_NAMESPACES = 64


def check_namespace(value: object) -> str:
    """Validate one id prefix from a trust entry; raises ConfigError."""
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value) or ".." in value:
        shown = repr(value[:64]) if isinstance(value, str) else type(value).__name__
        raise ConfigError(
            f"trust policy: namespace {shown} must be 1-128 characters of [a-z0-9.-], "
            "start alphanumeric, and not contain '..'"
        )
    return value


def namespace_covers(namespace: str, plugin_id: str) -> bool:
    """Whether ``plugin_id`` is inside ``namespace`` (see the module docstring)."""
    if namespace.endswith((".", "-")):
        return plugin_id.startswith(namespace) and len(plugin_id) > len(namespace)
    return plugin_id == namespace or plugin_id.startswith(namespace + ".")


def b64decode_exact(text: str, size: int) -> bytes:
    """Decode canonical standard base64 (padded or unpadded) of exactly ``size`` bytes.

    Raises ValueError with a short reason; callers wrap it in their own error.
    """
    if not _B64.fullmatch(text):
        raise ValueError("not standard base64")
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise ValueError("not standard base64") from exc
    if len(raw) != size:
        raise ValueError(f"decodes to {len(raw)} bytes, expected {size}")
    if base64.b64encode(raw).decode().rstrip("=") != text.rstrip("="):
        raise ValueError("not canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Trusted publishers and the (loud, insecure) unsigned flags."""

    #: publisher id -> raw 32-byte Ed25519 public key
    trusted_publishers: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    allow_unsigned: bool = False
    allow_unsigned_host_risk: bool = False
    #: publisher id -> the id prefixes it is bound to (absent: unbound)
    namespaces: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name in INSECURE_FLAGS:
            if type(getattr(self, name)) is not bool:
                raise ConfigError(f"trust policy field {name!r} must be a boolean")
        keys: dict[str, bytes] = {}
        for publisher, key in dict(self.trusted_publishers).items():
            try:
                check_identifier(publisher, "publisher")
            except LatticeError as exc:
                raise ConfigError(f"trust policy: {exc}") from exc
            if type(key) is not bytes or len(key) != 32:
                raise ConfigError(f"trust policy: key for {publisher!r} must be 32 bytes")
            keys[publisher] = key
        object.__setattr__(self, "trusted_publishers", MappingProxyType(keys))
        bound: dict[str, tuple[str, ...]] = {}
        for publisher, prefixes in dict(self.namespaces).items():
            if publisher not in keys:
                raise ConfigError(f"trust policy: namespaces for unknown publisher {publisher!r}")
            bound[publisher] = _check_namespaces(publisher, prefixes)
        object.__setattr__(self, "namespaces", MappingProxyType(bound))

    @classmethod
    def default(cls) -> TrustPolicy:
        """Fail closed: nobody trusted, nothing unsigned."""
        return cls()

    @classmethod
    def from_json(cls, data: bytes | str) -> TrustPolicy:
        try:
            obj = decode_json_object(data, "trust policy")
        except LatticeError as exc:
            raise ConfigError(str(exc)) from exc
        unknown = sorted(k for k in obj if k not in ("trusted_publishers", *INSECURE_FLAGS))
        if unknown:
            shown = ", ".join(repr(k[:64]) for k in unknown[:5])
            raise ConfigError(f"trust policy has unknown field(s): {shown}")
        publishers = obj.get("trusted_publishers", {})
        if not isinstance(publishers, dict):
            raise ConfigError("trust policy field 'trusted_publishers' must be an object")
        keys: dict[str, bytes] = {}
        bound: dict[str, tuple[str, ...]] = {}
        for publisher, entry in publishers.items():
            if isinstance(entry, dict):
                label = repr(publisher[:64])
                unknown_keys = sorted(k for k in entry if k not in _ENTRY_FIELDS)
                if unknown_keys:
                    shown = ", ".join(repr(k[:64]) for k in unknown_keys[:5])
                    raise ConfigError(
                        f"trust policy: entry for {label} has unknown field(s): {shown}"
                    )
                if "key" not in entry:
                    raise ConfigError(f"trust policy: entry for {label} needs a 'key'")
                keys[publisher] = decode_public_key(publisher, entry["key"])
                if "namespaces" in entry:
                    bound[publisher] = _check_namespaces(publisher, entry["namespaces"])
            else:
                keys[publisher] = decode_public_key(publisher, entry)
        return cls(
            trusted_publishers=keys,
            allow_unsigned=obj.get("allow_unsigned", False),
            allow_unsigned_host_risk=obj.get("allow_unsigned_host_risk", False),
            namespaces=bound,
        )

    @classmethod
    def from_file(cls, path: Path) -> TrustPolicy:
        """Read a policy file (regular file, no symlink, at most 1 MiB); every
        error names the file."""
        try:
            return cls._read_file(path)
        except ConfigError as exc:
            raise ConfigError(f"trust policy file {path}: {exc.message}") from exc
        except OSError as exc:
            raise ConfigError(
                f"trust policy file {path}: cannot read it: {_strerror(exc)}"
            ) from exc

    @classmethod
    def _read_file(cls, path: Path) -> TrustPolicy:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot open trust policy file: {_strerror(exc)}") from exc
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError("trust policy file is not a regular file")
            data = fh.read(MAX_POLICY_BYTES + 1)
        if len(data) > MAX_POLICY_BYTES:
            raise ConfigError(f"trust policy file exceeds {MAX_POLICY_BYTES} bytes")
        return cls.from_json(data)

    def insecure_flags(self) -> tuple[str, ...]:
        """Names of the insecure flags that are on (warn at startup, show in the API)."""
        return tuple(name for name in INSECURE_FLAGS if getattr(self, name))

    def public_key_b64(self, publisher: str) -> str:
        return base64.b64encode(self.trusted_publishers[publisher]).decode()

    def owners_of(self, plugin_id: str) -> tuple[str, ...]:
        """The bound publishers whose namespaces cover ``plugin_id``."""
        return tuple(
            sorted(
                p
                for p, prefixes in self.namespaces.items()
                if any(namespace_covers(n, plugin_id) for n in prefixes)
            )
        )

    def _entry(self, publisher: str) -> str | dict[str, Any]:
        if publisher in self.namespaces:
            return {
                "key": self.public_key_b64(publisher),
                "namespaces": list(self.namespaces[publisher]),
            }
        return self.public_key_b64(publisher)

    def to_dict(self) -> dict[str, Any]:
        """The file form (keys as standard base64; bound publishers as objects)."""
        return {
            "trusted_publishers": {p: self._entry(p) for p in sorted(self.trusted_publishers)},
            "allow_unsigned": self.allow_unsigned,
            "allow_unsigned_host_risk": self.allow_unsigned_host_risk,
        }

    def to_public_dict(self) -> dict[str, Any]:
        """API form: publisher names and flags, no key material."""
        return {
            "trusted_publishers": sorted(self.trusted_publishers),
            "namespaces": {p: list(self.namespaces[p]) for p in sorted(self.namespaces)},
            "allow_unsigned": self.allow_unsigned,
            "allow_unsigned_host_risk": self.allow_unsigned_host_risk,
            "insecure_flags": list(self.insecure_flags()),
        }


def decode_public_key(publisher: object, key: object) -> bytes:
    """Decode a trust-file key (standard base64 of 32 bytes; hex refused) or raise
    ConfigError."""
    label = repr(publisher[:64]) if isinstance(publisher, str) else "?"
    if not isinstance(key, str):
        raise ConfigError(f"trust policy: key for {label} must be a base64 string")
    if _HEX64.fullmatch(key):
        raise ConfigError(
            f"trust policy: key for {label} looks like hex; "
            "use standard base64 of the 32-byte Ed25519 public key"
        )
    try:
        return b64decode_exact(key, 32)
    except ValueError as exc:
        raise ConfigError(f"trust policy: key for {label} is invalid: {exc}") from exc


def _check_namespaces(publisher: str, prefixes: object) -> tuple[str, ...]:
    label = repr(publisher[:64])
    if not isinstance(prefixes, list | tuple) or not prefixes:
        raise ConfigError(
            f"trust policy: namespaces for {label} must be a non-empty list of id prefixes "
            "(leave the field out for a publisher that may ship any id)"
        )
    if len(prefixes) > MAX_NAMESPACES:
        raise ConfigError(f"trust policy: at most {MAX_NAMESPACES} namespaces for {label}")
    checked = tuple(check_namespace(n) for n in prefixes)
    if len(set(checked)) != len(checked):
        raise ConfigError(f"trust policy: duplicate namespace for {label}")
    return checked


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__


_MINT = object()


@dataclass(frozen=True, slots=True)
class Verification:
    """Proof that a manifest passed the verifier.  Only :class:`Verifier` makes one."""

    manifest: Manifest
    digest_sha256: str
    signed: bool
    publisher: str
    #: capability -> risk, in manifest order
    capabilities: Mapping[str, Risk]
    _mint: object = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._mint is not _MINT:
            raise VerificationError("a Verification can only be produced by Verifier")


class Verifier:
    """Applies a TrustPolicy to manifests.  Deny by default: the only way out of
    :meth:`verify_digest` without an exception is through every numbered step."""

    def __init__(self, policy: TrustPolicy) -> None:
        self.policy = policy

    def verify(self, manifest: Manifest, artifact: bytes) -> Verification:
        return self.verify_digest(manifest, hashlib.sha256(artifact).hexdigest())

    def verify_digest(self, manifest: Manifest, actual_sha256_hex: str) -> Verification:
        pid = manifest.id
        # 1. Authenticity of the manifest: a named publisher must be trusted and must
        #    have signed exactly these fields, whatever the policy flags say.
        if manifest.signature_ed25519 and not manifest.publisher:
            raise VerificationError("signature present but no publisher", plugin_id=pid)
        signed = bool(manifest.publisher)
        if signed:
            self._check_signature(manifest)
        # 2. Unsigned bundles: each insecure allowance must be switched on explicitly.
        else:
            self._check_unsigned(manifest)
        # 3. The id is inside the publisher's namespaces and nobody else's.
        self._check_namespace(manifest)
        # 4. The artifact is the one the (authenticated) manifest names.
        if not hmac.compare_digest(
            actual_sha256_hex.encode("ascii", "replace"), manifest.digest_sha256.encode()
        ):
            raise VerificationError(
                "artifact digest mismatch: manifest digest_sha256 does not match the artifact",
                plugin_id=pid,
            )
        # 5. Every check passed.
        return Verification(
            manifest=manifest,
            digest_sha256=manifest.digest_sha256,
            signed=signed,
            publisher=manifest.publisher,
            capabilities=MappingProxyType({c: risk_of(c) for c in manifest.capabilities}),
            _mint=_MINT,
        )

    def _check_signature(self, manifest: Manifest) -> None:
        pid, publisher = manifest.id, manifest.publisher
        # 1a. the publisher is in the operator's trust policy
        key = self.policy.trusted_publishers.get(publisher)
        if key is None:
            raise VerificationError(f"publisher {publisher!r} is not trusted", plugin_id=pid)
        # 1b. a named publisher means a signature is required
        if not manifest.signature_ed25519:
            raise VerificationError(
                f"manifest names publisher {publisher!r} but carries no signature",
                plugin_id=pid,
            )
        # 1c. the signature is well-formed
        try:
            sig = b64decode_exact(manifest.signature_ed25519, 64)
        except ValueError as exc:
            raise VerificationError(f"malformed signature: {exc}", plugin_id=pid) from exc
        # 1d. the signature covers this manifest's signing payload
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(sig, manifest.signing_payload())
        except InvalidSignature as exc:
            raise VerificationError(
                f"signature invalid for publisher {publisher!r}", plugin_id=pid
            ) from exc

    def _check_namespace(self, manifest: Manifest) -> None:
        pid, publisher = manifest.id, manifest.publisher
        # 3a. a bound publisher ships only ids inside its namespaces
        own = self.policy.namespaces.get(publisher) if publisher else None
        if own is not None and not any(namespace_covers(n, pid) for n in own):
            raise VerificationError(
                f"plugin id {pid!r} is outside the namespaces of publisher {publisher!r} "
                f"({', '.join(own)})",
                plugin_id=pid,
            )
        # 3b. an id inside a bound publisher's namespace comes only from that publisher
        owners = self.policy.owners_of(pid)
        if owners and publisher not in owners:
            who = f"publisher {publisher!r}" if publisher else "an unsigned bundle"
            raise VerificationError(
                f"plugin id {pid!r} is in the namespace of publisher "
                f"{', '.join(repr(o) for o in owners)}; {who} may not ship it",
                plugin_id=pid,
            )

    def _check_unsigned(self, manifest: Manifest) -> None:
        pid = manifest.id
        # 2a. some capabilities need a trusted signature no matter what
        must_sign = needs_signature(manifest.capabilities)
        if must_sign:
            raise VerificationError(
                f"{must_sign[0]} always requires a trusted signature", plugin_id=pid
            )
        # 2b. unsigned at all
        if not self.policy.allow_unsigned:
            raise VerificationError(
                "unsigned bundle not allowed (allow_unsigned is false)", plugin_id=pid
            )
        # 2c. unsigned and host risk
        risky = host_risk(manifest.capabilities)
        if risky and not self.policy.allow_unsigned_host_risk:
            raise VerificationError(
                f"unsigned bundle with host-risk capability {risky[0]!r} requires "
                "allow_unsigned_host_risk",
                plugin_id=pid,
            )
