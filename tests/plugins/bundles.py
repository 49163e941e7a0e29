"""Test helpers: real Ed25519 publishers, signed bundles, trust files, audit sink.

Bundles are built here without going through ``lattice.plugins.signing`` (the
signing payload is spelled out independently), so tests of the production code
are not checked against themselves.  Reused by the API and lifecycle tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "Publisher",
    "RecordingSink",
    "make_bundle",
    "make_publisher",
    "payload_for",
    "read_manifest",
    "sign_dict",
    "write_manifest",
    "write_trust",
]


class Publisher(NamedTuple):
    id: str
    key: Ed25519PrivateKey
    public_b64: str


def make_publisher(publisher_id: str = "acme.dev") -> Publisher:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Publisher(publisher_id, key, base64.b64encode(raw).decode())


def payload_for(m: dict[str, Any]) -> bytes:
    """The v1 signing payload, written out independently of Manifest."""
    fields = [
        "lattice-plugin-manifest-v1",
        m["id"],
        m["name"],
        m["type"],
        m["version"],
        m["entrypoint"],
        m["publisher"],
        m["digest_sha256"],
        "\x00".join(sorted(m["capabilities"])),
    ]
    return "\n".join(fields).encode("utf-8")


def sign_dict(m: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``m`` with a fresh signature over its current fields."""
    return {**m, "signature_ed25519": base64.b64encode(key.sign(payload_for(m))).decode()}


def write_manifest(bundle: Path, manifest: dict[str, Any] | str | bytes) -> None:
    if isinstance(manifest, dict):
        manifest = json.dumps(manifest, indent=2)
    data = manifest.encode() if isinstance(manifest, str) else manifest
    (bundle / "manifest.json").write_bytes(data)


def read_manifest(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_bytes())
    return data


def make_bundle(
    root: Path,
    *,
    id: str = "demo.plugin",
    name: str = "Demo plugin",
    type: str = "wasm",
    capabilities: Sequence[str] = ("kv:read",),
    artifact: bytes = b"\x00asm demo artifact",
    key: Ed25519PrivateKey | None = None,
    publisher: str = "",
    signed: bool = True,
    entrypoint: str = "main",
    version: str = "1.0.0",
    bundle: str | None = None,
) -> Path:
    """Create ``root/<bundle or id>/`` with manifest.json + artifact; return its path.

    ``signed=True`` needs ``key`` and ``publisher`` (see :func:`make_publisher`);
    ``signed=False`` writes an unsigned manifest (publisher kept if given).
    """
    path = root / (bundle or id)
    path.mkdir(parents=True)
    (path / "artifact").write_bytes(artifact)
    manifest: dict[str, Any] = {
        "id": id,
        "name": name,
        "type": type,
        "capabilities": list(capabilities),
        "version": version,
        "entrypoint": entrypoint,
        "publisher": publisher,
        "digest_sha256": hashlib.sha256(artifact).hexdigest(),
        "signature_ed25519": "",
    }
    if signed:
        if key is None or not publisher:
            raise ValueError("signed=True needs key= and publisher=")
        manifest = sign_dict(manifest, key)
    write_manifest(path, manifest)
    return path


def write_trust(
    path: Path,
    publishers: Iterable[Publisher] = (),
    *,
    allow_unsigned: bool = False,
    allow_unsigned_host_risk: bool = False,
    namespaces: dict[str, list[str]] | None = None,
) -> Path:
    """A trust file; publishers named in ``namespaces`` get the bound (object) form."""
    bound = namespaces or {}
    doc = {
        "trusted_publishers": {
            p.id: {"key": p.public_b64, "namespaces": bound[p.id]}
            if p.id in bound
            else p.public_b64
            for p in publishers
        },
        "allow_unsigned": allow_unsigned,
        "allow_unsigned_host_risk": allow_unsigned_host_risk,
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


class RecordingSink:
    """An AuditSink that keeps events as dicts in ``events``."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def append(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        decision: str = "allow",
        reason: str = "",
        correlation_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.events.append(
            {
                "actor": actor,
                "action": action,
                "target": target,
                "decision": decision,
                "reason": reason,
                "correlation_id": correlation_id,
                "detail": detail,
            }
        )

    def actions(self) -> list[tuple[str, str]]:
        return [(e["action"], e["target"]) for e in self.events]
