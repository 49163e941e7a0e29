from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lattice.errors import ConfigError, ManifestError
from lattice.plugins.loader import load_bundle
from lattice.plugins.manifest import FIELDS
from lattice.plugins.signing import (
    add_to_trust_file,
    keygen,
    load_private_key,
    sign_bundle,
    write_private_key,
)
from lattice.plugins.trust import TrustPolicy, Verifier
from tests.plugins.bundles import make_bundle, payload_for, read_manifest, write_manifest


def test_keygen_writes_0600_pkcs8_and_public_key(tmp_path: Path) -> None:
    pair = keygen(tmp_path / "keys", "acme.dev")
    assert stat.S_IMODE(pair.private_key_path.stat().st_mode) == 0o600
    assert pair.private_key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert pair.public_key_path.read_text() == pair.public_key_b64 + "\n"
    key = load_private_key(pair.private_key_path)
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64encode(raw).decode() == pair.public_key_b64
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def test_keygen_refuses_overwrite_and_symlinks(tmp_path: Path) -> None:
    pair = keygen(tmp_path, "acme.dev")
    before = pair.private_key_path.read_bytes()
    with pytest.raises(ConfigError, match=r"refusing to overwrite existing file 'acme\.dev\.key'"):
        keygen(tmp_path, "acme.dev")
    assert pair.private_key_path.read_bytes() == before
    (tmp_path / "dangling.key").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"refusing to overwrite existing file 'dangling\.key'"):
        write_private_key(tmp_path / "dangling.key", Ed25519PrivateKey.generate())
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "linkdir").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="refusing to use symlinked directory"):
        keygen(tmp_path / "linkdir", "other.dev")
    with pytest.raises(ManifestError, match="publisher 'Bad' must be 3-128"):
        keygen(tmp_path, "Bad")


def test_load_private_key_refusals(tmp_path: Path) -> None:
    pair = keygen(tmp_path, "acme.dev")
    os.chmod(pair.private_key_path, 0o640)
    with pytest.raises(ConfigError, match="not be accessible by group or others"):
        load_private_key(pair.private_key_path)
    os.chmod(pair.private_key_path, 0o600)
    link = tmp_path / "link.key"
    link.symlink_to(pair.private_key_path)
    with pytest.raises(ConfigError, match="cannot open private key file: Too many levels"):
        load_private_key(link)
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    junk.chmod(0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PKCS#8 PEM key"):
        load_private_key(junk)
    with pytest.raises(ConfigError, match="cannot open private key file: No such file"):
        load_private_key(tmp_path / "missing.key")


def test_sign_bundle_fills_fields_and_verifies(tmp_path: Path) -> None:
    pair = keygen(tmp_path / "keys", "acme.dev")
    bundle = make_bundle(
        tmp_path / "plugins", signed=False, capabilities=["task:run"], type="system"
    )
    draft = read_manifest(bundle)
    del draft["digest_sha256"], draft["publisher"], draft["signature_ed25519"]
    write_manifest(bundle, draft)
    signed = sign_bundle(bundle, pair.private_key_path, "acme.dev")
    on_disk = read_manifest(bundle)
    assert list(on_disk) == list(FIELDS)
    assert (
        on_disk["digest_sha256"] == hashlib.sha256((bundle / "artifact").read_bytes()).hexdigest()
    )
    assert on_disk == signed.to_dict()
    # the signature is over the independently computed payload
    pub = load_private_key(pair.private_key_path).public_key()
    pub.verify(base64.b64decode(on_disk["signature_ed25519"]), payload_for(on_disk))
    policy = TrustPolicy.from_json(
        json.dumps({"trusted_publishers": {"acme.dev": pair.public_key_b64}})
    )
    assert load_bundle(bundle, Verifier(policy)).signed
    assert [p.name for p in bundle.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_sign_bundle_publisher_default_and_missing(tmp_path: Path) -> None:
    pair = keygen(tmp_path / "keys", "acme.dev")
    named = make_bundle(tmp_path / "p", id="named.one", signed=False, publisher="acme.dev")
    assert sign_bundle(named, pair.private_key_path).publisher == "acme.dev"
    anon = make_bundle(tmp_path / "p", id="anon.one", signed=False)
    with pytest.raises(ManifestError, match="no publisher"):
        sign_bundle(anon, pair.private_key_path)


def test_sign_bundle_refuses_invalid_draft(tmp_path: Path) -> None:
    pair = keygen(tmp_path / "keys", "acme.dev")
    bundle = make_bundle(tmp_path / "p", signed=False)
    write_manifest(bundle, {**read_manifest(bundle), "extra": 1})
    with pytest.raises(ManifestError, match=r"unknown field\(s\): 'extra'"):
        sign_bundle(bundle, pair.private_key_path, "acme.dev")


def test_add_to_trust_file(tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    a = keygen(tmp_path, "acme.dev")
    b = keygen(tmp_path, "beta.dev")
    add_to_trust_file(trust, "acme.dev", a.public_key_b64)
    add_to_trust_file(trust, "beta.dev", b.public_key_b64)
    add_to_trust_file(trust, "acme.dev", a.public_key_b64)  # idempotent
    doc = json.loads(trust.read_text())
    assert doc == {
        "trusted_publishers": {"acme.dev": a.public_key_b64, "beta.dev": b.public_key_b64},
        "allow_unsigned": False,
        "allow_unsigned_host_risk": False,
    }
    with pytest.raises(ConfigError, match=r"'acme\.dev' is already trusted with a different key"):
        add_to_trust_file(trust, "acme.dev", b.public_key_b64)
    with pytest.raises(ConfigError, match="looks like hex"):
        add_to_trust_file(trust, "gamma.dev", "ab" * 32)
    with pytest.raises(ConfigError, match="publisher 'G' must be"):
        add_to_trust_file(trust, "G", a.public_key_b64)
    link = tmp_path / "link.json"
    link.symlink_to(trust)
    with pytest.raises(ConfigError, match="cannot open trust policy file"):
        add_to_trust_file(link, "gamma.dev", a.public_key_b64)
