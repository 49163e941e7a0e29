"""Secrets at rest: AES-256-GCM under a key file only the server can read.

Blob format (versioned): ``b"L1" || nonce(12) || ciphertext+tag``.  The
associated data binds a ciphertext to its purpose (e.g. ``b"notify-channel:7"``)
so a blob copied into another row does not decrypt.  The same key file yields,
through HKDF (:func:`derive_key`), the audit chain's MAC keys.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lattice.errors import ConfigError, SecretError

__all__ = ["SecretBox", "derive_key", "load_key", "load_or_create_key"]

_VERSION = b"L1"
_KEY_BYTES = 32


def load_or_create_key(path: Path) -> bytes:
    """Read the 32-byte key, creating it (mode 0600) if it does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create secret key file {path}: {exc.strerror}") from exc
    else:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_random.token_bytes(_KEY_BYTES))
    return load_key(path)


def load_key(path: Path) -> bytes:
    """Read the existing 32-byte key; never creates one (``audit verify`` must not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = fh.read(_KEY_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"secret key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read secret key file {path}: {exc.strerror}") from exc
    if st.st_mode & 0o077:
        raise ConfigError(
            f"secret key file {path} is readable by group or others; run: chmod 600 {path}"
        )
    if len(key) != _KEY_BYTES:
        raise ConfigError(f"secret key file {path} must hold exactly {_KEY_BYTES} bytes")
    return key


def derive_key(key: bytes, info: bytes) -> bytes:
    """A 32-byte subkey for one purpose (HKDF-SHA256; ``info`` names the purpose),
    so the AES key itself is never used for anything else."""
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(key)


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ConfigError("secret key must be 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def encrypt(self, plaintext: bytes, *, context: bytes = b"") -> bytes:
        nonce = _random.token_bytes(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)

    def decrypt(self, blob: bytes, *, context: bytes = b"") -> bytes:
        if len(blob) < 2 + 12 + 16 or blob[:2] != _VERSION:
            raise SecretError("encrypted value is malformed or of an unknown version")
        try:
            return self._aead.decrypt(blob[2:14], blob[14:], context)
        except InvalidTag:
            raise SecretError(
                "encrypted value failed authentication (wrong key or tampered)"
            ) from None

    def encrypt_text(self, text: str, *, context: str = "") -> bytes:
        return self.encrypt(text.encode("utf-8"), context=context.encode("utf-8"))

    def decrypt_text(self, blob: bytes, *, context: str = "") -> str:
        return self.decrypt(blob, context=context.encode("utf-8")).decode("utf-8")
