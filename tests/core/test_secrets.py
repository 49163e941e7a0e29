"""AES-256-GCM secrets at rest."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lattice.core.secrets import SecretBox, load_or_create_key
from lattice.errors import ConfigError, SecretError


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key


def test_round_trip_and_context_binding(tmp_path: Path) -> None:
    box = SecretBox(load_or_create_key(tmp_path / "k"))
    blob = box.encrypt_text("tgram://123:abc/456", context="channel:1")
    assert b"abc" not in blob
    assert box.decrypt_text(blob, context="channel:1") == "tgram://123:abc/456"
    with pytest.raises(SecretError, match="authentication"):
        box.decrypt_text(blob, context="channel:2")
    assert box.encrypt_text("x") != box.encrypt_text("x")  # fresh nonce each time
    assert "key" in repr(box) and "hidden" in repr(box)


def test_tampered_or_foreign_blobs_fail(tmp_path: Path) -> None:
    box = SecretBox(load_or_create_key(tmp_path / "k"))
    other = SecretBox(os.urandom(32))
    blob = bytearray(box.encrypt(b"secret"))
    with pytest.raises(SecretError, match="authentication"):
        other.decrypt(bytes(blob))
    blob[-1] ^= 1
    with pytest.raises(SecretError, match="authentication"):
        box.decrypt(bytes(blob))
    with pytest.raises(SecretError, match="malformed"):
        box.decrypt(b"L2" + bytes(40))


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 10)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="32 bytes"):
        load_or_create_key(short)
    loose = tmp_path / "loose"
    loose.write_bytes(b"x" * 32)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_key(loose)
    link = tmp_path / "link"
    link.symlink_to(loose)
    with pytest.raises(ConfigError):
        load_or_create_key(link)
