"""Bundles as the original Lattice v1 writes them load unchanged, and signed
bundles stay byte-compatible."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from lattice.cli.plugin import plugin_app
from lattice.errors import ManifestError
from lattice.plugins.loader import load_bundle
from lattice.plugins.manifest import FIELDS, Manifest
from lattice.plugins.trust import TrustPolicy, Verifier
from tests.plugins.bundles import payload_for, write_trust
from tests.plugins.conftest import PluginEnv

# A bundle signed before this change, kept byte for byte: key seed 00 01 .. 1f.
GOLDEN_SEED = bytes(range(32))
GOLDEN_PUBLIC = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
GOLDEN_ARTIFACT = b"golden artifact v1\n"
GOLDEN_MANIFEST: dict[str, Any] = {
    "id": "golden.plugin",
    "name": "Golden",
    "type": "wasm",
    "capabilities": ["kv:write", "kv:read"],
    "version": "1.2.3",
    "entrypoint": "main",
    "publisher": "golden.dev",
    "digest_sha256": "861ae6e74d07de88a71b0ffbcae3d4de8b62b284800b0e2548239d0ec6e38a1d",
    "signature_ed25519": (
        "7ZdcCI7Jf4oQCqVvE6aw+QsUvKbEGgTK6lo5W1/ISaMGWJaCSqFRncJL5ijGb9tYiWCxtd70zrU0x2UDbbOCDg=="
    ),
}


def v1_bundle(
    root: Path, *, id: str, type: str = "wasm", entrypoint: str = "", **extra: Any
) -> Path:
    """Write a bundle the way the original writes an unsigned one: no
    ``publisher``, no ``signature_ed25519``, compact JSON, its own key order."""
    artifact = extra.pop("artifact", b"v1 artifact")
    path = root / id
    path.mkdir(parents=True)
    (path / "artifact").write_bytes(artifact)
    manifest = {
        "capabilities": extra.pop("capabilities", ["kv:read"]),
        "digest_sha256": hashlib.sha256(artifact).hexdigest(),
        "entrypoint": entrypoint,
        "id": id,
        "name": extra.pop("name", "Old plugin"),
        "type": type,
        "version": "0.9.0",
        **extra,
    }
    (path / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    return path


def unsigned_trust(penv: PluginEnv, allow: bool) -> None:
    write_trust(penv.trust, [penv.publisher], allow_unsigned=allow)


@pytest.mark.parametrize("allow", [True, False])
def test_an_unsigned_v1_bundle_follows_the_trust_rules(penv: PluginEnv, allow: bool) -> None:
    unsigned_trust(penv, allow)
    bundle = v1_bundle(penv.plugin_dir, id="old.plugin")
    live = penv.start()
    try:
        listing = live.admin().get("/api/plugins").json()
        if allow:
            (loaded,) = listing["loaded"]
            assert loaded["id"] == "old.plugin" and loaded["signed"] is False
            assert loaded["publisher"] == "" and loaded["entrypoint"] == ""
            assert listing["rejected"] == []
        else:
            assert listing["loaded"] == []
            (rejected,) = listing["rejected"]
            assert "unsigned bundle not allowed" in rejected["reason"]
            assert "missing field" not in rejected["reason"]
    finally:
        live.stop()
    cli = CliRunner().invoke(plugin_app, ["verify", str(bundle), "--trust", str(penv.trust)])
    assert (cli.exit_code == 0) == allow, cli.output
    if not allow:
        assert "unsigned bundle not allowed" in cli.output


def test_an_unsigned_v1_wasm_bundle_activates(penv: PluginEnv) -> None:
    unsigned_trust(penv, True)
    v1_bundle(penv.plugin_dir, id="old.wasm")
    live = penv.start()
    try:
        admin = live.admin()
        for status in ("installed", "active"):
            r = admin.post("/api/plugins/lifecycle", json={"id": "old.wasm", "status": status})
            assert r.status_code == 200, r.text
        assert r.json()["runtime"]["state"] == "armed"
    finally:
        live.stop()


def test_a_v1_worker_without_entrypoint_fails_to_start_and_stays_disabled(
    penv: PluginEnv,
) -> None:
    unsigned_trust(penv, True)
    v1_bundle(
        penv.plugin_dir,
        id="old.worker",
        type="worker",
        capabilities=["worker:route"],
        artifact=b"hello {{path}}",
    )
    live = penv.start()
    try:
        admin = live.admin()
        r = admin.post("/api/plugins/lifecycle", json={"id": "old.worker", "status": "installed"})
        assert r.status_code == 200, r.text
        r = admin.post("/api/plugins/lifecycle", json={"id": "old.worker", "status": "active"})
        assert r.status_code == 500 and "failed to start" in r.json()["error"]
        plugins = admin.get("/api/plugins/lifecycle").json()["plugins"]
        it = next(p for p in plugins if p["id"] == "old.worker")
        assert it["status"] == "disabled" and it["runtime"]["state"] == "failed"
        assert "entrypoint 'template' or 'js'" in it["runtime"]["message"]
        assert live.client().get("/w/old.worker/").status_code == 404
    finally:
        live.stop()


def test_a_publisher_without_its_signature_is_still_refused(penv: PluginEnv) -> None:
    unsigned_trust(penv, True)
    bundle = v1_bundle(penv.plugin_dir, id="old.half", publisher="acme.dev")
    cli = CliRunner().invoke(plugin_app, ["verify", str(bundle), "--trust", str(penv.trust)])
    assert cli.exit_code == 1 and "carries no signature" in cli.output
    lone = v1_bundle(penv.plugin_dir, id="old.lone", signature_ed25519="A" * 86 + "==")
    cli = CliRunner().invoke(plugin_app, ["verify", str(lone), "--trust", str(penv.trust)])
    assert cli.exit_code == 1 and "signature present but no publisher" in cli.output


def test_absent_optional_fields_mean_empty_and_are_written_back() -> None:
    doc = {k: v for k, v in GOLDEN_MANIFEST.items() if k not in ("publisher", "signature_ed25519")}
    doc["entrypoint"] = ""
    m = Manifest.from_mapping(doc)
    assert m.publisher == "" and m.signature_ed25519 == "" and m.entrypoint == ""
    written = json.loads(m.to_json())
    assert list(written) == list(FIELDS)  # every field, in canonical order
    assert m.signing_payload() == payload_for({**doc, "publisher": ""})
    with pytest.raises(ManifestError, match=r"missing field\(s\): version"):
        Manifest.from_mapping({k: v for k, v in doc.items() if k != "version"})


def test_a_bundle_signed_before_still_verifies(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.from_private_bytes(GOLDEN_SEED)
    assert base64.b64decode(GOLDEN_PUBLIC) == key.public_key().public_bytes_raw()
    bundle = tmp_path / "golden"
    bundle.mkdir()
    (bundle / "artifact").write_bytes(GOLDEN_ARTIFACT)
    (bundle / "manifest.json").write_text(json.dumps(GOLDEN_MANIFEST, indent=2))
    policy = TrustPolicy.from_json(
        json.dumps({"trusted_publishers": {"golden.dev": GOLDEN_PUBLIC}})
    )
    plugin = load_bundle(bundle, Verifier(policy))
    assert plugin.signed and plugin.manifest.publisher == "golden.dev"
    # the canonical file form round-trips and still verifies
    (bundle / "manifest.json").write_bytes(plugin.manifest.to_json())
    assert load_bundle(bundle, Verifier(policy)).manifest == plugin.manifest
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"trusted_publishers": {"golden.dev": GOLDEN_PUBLIC}}))
    cli = CliRunner().invoke(plugin_app, ["verify", str(bundle), "--trust", str(trust)])
    assert cli.exit_code == 0 and "signed by golden.dev" in cli.output
