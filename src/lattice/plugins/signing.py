"""Publisher keys, bundle signing and trust-file edits (used by ``lattice plugin``).

Private key file format: PEM-encoded, unencrypted PKCS#8 (``-----BEGIN PRIVATE
KEY-----``), the form ``openssl genpkey -algorithm ed25519`` writes, so
``openssl pkey -in KEY -pubout`` works on it.  It is created with mode 0600,
``O_CREAT | O_EXCL | O_NOFOLLOW`` (never overwritten, never through a symlink), and
loading refuses symlinks, non-regular files and files readable by group or others.

Public key form: standard base64 of the raw 32 bytes, as in the trust file.

All writes of manifests and trust files are atomic: a temporary file in the same
directory, fsync, ``os.replace``, fsync of the directory.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from lattice.errors import ConfigError, LatticeError, ManifestError
from lattice.plugins.loader import MANIFEST_FILE, read_bundle
from lattice.plugins.manifest import Manifest, check_identifier, decode_json_object
from lattice.plugins.trust import TrustPolicy, decode_public_key

__all__ = [
    "KeyPair",
    "add_to_trust_file",
    "generate_key",
    "keygen",
    "load_private_key",
    "public_key_b64",
    "sign_bundle",
    "sign_manifest",
    "write_atomic",
    "write_private_key",
]

MAX_KEY_FILE_BYTES = 16 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class KeyPair:
    publisher: str
    private_key_path: Path
    public_key_path: Path
    public_key_b64: str


def generate_key() -> tuple[Ed25519PrivateKey, str]:
    """A fresh Ed25519 key and its public key as standard base64."""
    key = Ed25519PrivateKey.generate()
    return key, public_key_b64(key)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _create_new(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(name, _NEW_FILE, mode, dir_fd=dir_fd)
    except FileExistsError as exc:
        raise ConfigError(f"refusing to overwrite existing file {name!r}") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _open_dir_nofollow(path: Path, create: bool) -> int:
    if create and not os.path.lexists(path):
        path.mkdir(mode=0o700, parents=True)
    try:
        return os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(f"refusing to use symlinked directory {str(path)!r}") from exc
        raise ConfigError(f"cannot open directory {str(path)!r}: {exc.strerror}") from exc


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600; refuses to overwrite or follow symlinks."""
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = _open_dir_nofollow(path.parent, create=False)
    try:
        _create_new(fd, path.name, pem, 0o600)
    finally:
        os.close(fd)


def keygen(out_dir: Path, publisher: str) -> KeyPair:
    """Create ``<out_dir>/<publisher>.key`` (0600) and ``<publisher>.pub``."""
    check_identifier(publisher, "publisher")
    key, pub = generate_key()
    fd = _open_dir_nofollow(out_dir, create=True)
    try:
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        for name in (f"{publisher}.key", f"{publisher}.pub"):  # check both first
            if os.path.lexists(out_dir / name):
                raise ConfigError(f"refusing to overwrite existing file {name!r}")
        _create_new(fd, f"{publisher}.key", pem, 0o600)
        _create_new(fd, f"{publisher}.pub", (pub + "\n").encode(), 0o644)
    finally:
        os.close(fd)
    return KeyPair(publisher, out_dir / f"{publisher}.key", out_dir / f"{publisher}.pub", pub)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM Ed25519 private key written by :func:`keygen`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open private key file: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("private key file is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                "private key file must not be accessible by group or others (chmod 600)"
            )
        data = fh.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError("private key file is too large")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("private key file is not an unencrypted PKCS#8 PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("private key file does not hold an Ed25519 key")
    return key


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey, publisher: str) -> Manifest:
    """``manifest`` with ``publisher`` set and a fresh signature over the v1 payload."""
    unsigned = replace(manifest, publisher=publisher, signature_ed25519="")
    signature = key.sign(unsigned.signing_payload())
    return replace(unsigned, signature_ed25519=base64.b64encode(signature).decode("ascii"))


def sign_bundle(bundle_dir: Path, key_path: Path, publisher: str | None = None) -> Manifest:
    """Fill publisher, digest and signature into ``bundle_dir/manifest.json``.

    The manifest may be a draft: ``publisher``, ``digest_sha256`` and
    ``signature_ed25519`` are (re)computed; every other v1 field must be valid.
    ``publisher`` defaults to the one already in the manifest.
    """
    key = load_private_key(key_path)
    raw = read_bundle(bundle_dir)
    draft = decode_json_object(raw.manifest_bytes)
    who = publisher or draft.get("publisher")
    if not isinstance(who, str) or not who:
        raise ManifestError("no publisher: pass one or set 'publisher' in the manifest")
    draft.update(publisher=who, digest_sha256=raw.artifact_sha256, signature_ed25519="")
    signed = sign_manifest(Manifest.from_mapping(draft), key, who)
    write_atomic(Path(bundle_dir) / MANIFEST_FILE, signed.to_json(), mode=0o644)
    return signed


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (temp file in the same directory)."""
    fd = _open_dir_nofollow(path.parent, create=False)
    tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        _create_new(fd, tmp, data, mode)
        try:
            os.replace(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError:
            os.unlink(tmp, dir_fd=fd)
            raise
        os.fsync(fd)
    finally:
        os.close(fd)


def add_to_trust_file(trust_path: Path, publisher: str, pubkey_b64: str) -> TrustPolicy:
    """Add ``publisher`` to the trust file (created fail-closed if missing).

    Re-adding the same key is a no-op; a different key for a trusted publisher is
    refused (remove the old entry by hand first).
    """
    try:
        check_identifier(publisher, "publisher")
    except LatticeError as exc:
        raise ConfigError(str(exc)) from exc
    key = decode_public_key(publisher, pubkey_b64)
    exists = os.path.lexists(trust_path)
    policy = TrustPolicy.from_file(trust_path) if exists else TrustPolicy.default()
    current = policy.trusted_publishers.get(publisher)
    if current == key:
        return policy
    if current is not None:
        raise ConfigError(f"publisher {publisher!r} is already trusted with a different key")
    updated = replace(policy, trusted_publishers={**policy.trusted_publishers, publisher: key})
    text = json.dumps(updated.to_dict(), indent=2) + "\n"
    write_atomic(Path(trust_path), text.encode(), mode=0o644)
    return updated
