"""GET /api/plugins, /trust, POST /verify and /rescan through HTTP."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from tests.conftest import LiveServer
from tests.plugins.bundles import read_manifest, write_manifest, write_trust
from tests.plugins.conftest import PluginEnv


def verify_body(bundle: Path) -> dict[str, object]:
    return {
        "manifest": read_manifest(bundle),
        "artifact_base64": base64.b64encode((bundle / "artifact").read_bytes()).decode(),
    }


def test_server_boots_and_serves_with_bad_bundles_beside_good_ones(penv: PluginEnv) -> None:
    penv.bundle(id="good.one")
    bad = penv.bundle(id="bad.digest")
    (bad / "artifact").write_bytes(b"tampered")
    corrupt = penv.plugin_dir / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text("{not json")
    (corrupt / "artifact").write_bytes(b"")
    link = penv.bundle(id="link.manifest")
    os.replace(link / "manifest.json", penv.plugin_dir / "elsewhere.json")
    (link / "manifest.json").symlink_to(penv.plugin_dir / "elsewhere.json")
    (penv.plugin_dir / "stray-file").write_text("x")
    live = penv.start()
    try:
        listing = live.client(live.token("plugin:read")).get("/api/plugins").json()
        assert [p["id"] for p in listing["loaded"]] == ["good.one"]
        reasons = {r["bundle"]: r["reason"] for r in listing["rejected"]}
        assert "digest mismatch" in reasons["bad.digest"]
        assert "not valid JSON" in reasons["corrupt"]
        assert "symlink" in reasons["link.manifest"]
        assert "stray-file" not in reasons
        loaded = listing["loaded"][0]
        assert loaded["signed"] is True
        assert {"name": "kv:read", "risk": "read"} in loaded["capabilities"]
        assert str(penv.plugin_dir) not in json.dumps(listing)
        events = live.admin().get("/api/audit", params={"action": "plugin.rejected"}).json()
        assert {e["target"] for e in events["events"]} >= {"bad.digest", "corrupt"}
    finally:
        live.stop()


def test_trust_endpoint_shows_publishers_and_flags_only(penv: PluginEnv, tmp_path: Path) -> None:
    write_trust(penv.trust, [penv.publisher], allow_unsigned=True)
    live = penv.start()
    try:
        anyone = live.client(live.token("kv:read"))
        body = anyone.get("/api/plugins/trust").json()
        assert body["allow_unsigned"] is True and body["allow_unsigned_host_risk"] is False
        assert "acme.dev" in json.dumps(body)
        assert live.client().get("/api/plugins/trust").status_code == 401
    finally:
        live.stop()


def test_verify_accepts_a_signed_bundle_without_installing_it(penv: PluginEnv) -> None:
    live = penv.start()
    try:
        bundle = penv.bundle(id="verify.me", capabilities=("kv:read", "log:write"))
        client = live.client(live.token("plugin:verify"))
        r = client.post("/api/plugins/verify", json=verify_body(bundle))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["trusted"] is True and "signature_ed25519" not in body["manifest"]
        assert body["artifact_sha256"] == read_manifest(bundle)["digest_sha256"]
        assert {"name": "log:write", "risk": "write"} in body["capabilities"]
        lifecycle = live.admin().get("/api/plugins/lifecycle").json()["plugins"]
        assert lifecycle == []  # verify installs nothing, even with the bundle on disk
        events = live.admin().get("/api/audit", params={"action": "plugin.verify"}).json()
        assert events["events"][0]["decision"] == "allow"
    finally:
        live.stop()


def test_verify_rejects_tampering_with_reasons(penv: PluginEnv) -> None:
    live = penv.start()
    try:
        bundle = penv.bundle(id="tamper.me")
        client = live.client(live.token("plugin:verify"))
        body = verify_body(bundle)
        body["artifact_base64"] = base64.b64encode(b"other bytes").decode()
        r = client.post("/api/plugins/verify", json=body)
        assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
        renamed = verify_body(bundle)
        renamed["manifest"]["name"] = "Renamed"  # type: ignore[index]
        r = client.post("/api/plugins/verify", json=renamed)
        assert r.status_code == 400 and "signature" in r.json()["error"]
        extra = verify_body(bundle)
        extra["manifest"]["homepage"] = "x"  # type: ignore[index]
        r = client.post("/api/plugins/verify", json=extra)
        assert r.status_code == 400 and "unknown field" in r.json()["error"]
        r = client.post(
            "/api/plugins/verify",
            content=b'{"manifest": {}, "manifest": {}, "artifact_base64": ""}',
        )
        assert r.status_code == 400 and "duplicate" in r.json()["error"]
        r = client.post("/api/plugins/verify", json={**verify_body(bundle), "policy": {}})
        assert r.status_code == 400 and "policy" in r.json()["error"]
        r = client.post(
            "/api/plugins/verify", json={**verify_body(bundle), "artifact_base64": "!!"}
        )
        assert r.status_code == 400 and "base64" in r.json()["error"]
        denies = live.admin().get(
            "/api/audit", params={"action": "plugin.verify", "decision": "deny"}
        )
        assert len(denies.json()["events"]) == 6
    finally:
        live.stop()


def test_verify_needs_scope_and_caps_the_body(plive: LiveServer) -> None:
    r = plive.client(plive.token("plugin:read")).post("/api/plugins/verify", json={})
    assert r.status_code == 403 and r.json()["detail"] == {"missing_scope": "plugin:verify"}
    client = plive.client(plive.token("plugin:verify"))
    big = b'{"manifest": {}, "artifact_base64": "' + b"A" * (4 * 1024 * 1024) + b'"}'
    r = client.post("/api/plugins/verify", content=big)
    assert r.status_code == 413

    def chunks():  # valid JSON prefix first, no Content-Length
        yield b'{"manifest": {"id": "x"}, "artifact_base64": "'
        for _ in range(5):
            yield b"A" * (1024 * 1024)
        yield b'"}'

    r = client.post("/api/plugins/verify", content=chunks())
    assert r.status_code == 413


def test_rescan_returns_the_diff_and_is_quiet_when_nothing_changed(penv: PluginEnv) -> None:
    live = penv.start()
    try:
        admin = live.admin()
        assert admin.post("/api/plugins/rescan").json()["added"] == []
        penv.bundle(id="new.one")
        diff = admin.post("/api/plugins/rescan").json()
        assert diff["added"] == ["new.one"]
        before = live.container.audit.count()
        assert admin.post("/api/plugins/rescan").json() == {
            "added": [],
            "changed": [],
            "removed": [],
            "rejected": [],
            "cleared": [],
        }
        assert live.container.audit.count() == before
        reader = live.client(live.token("plugin:read"))
        assert reader.post("/api/plugins/rescan").status_code == 403
    finally:
        live.stop()


def test_duplicate_ids_are_both_rejected(penv: PluginEnv) -> None:
    penv.bundle(id="dup.id", bundle="first")
    penv.bundle(id="dup.id", bundle="second")
    live = penv.start()
    try:
        listing = live.client(live.token("plugin:read")).get("/api/plugins").json()
        assert listing["loaded"] == []
        assert {r["bundle"] for r in listing["rejected"]} == {"first", "second"}
    finally:
        live.stop()


def test_manifest_rewritten_with_more_capabilities_is_rejected(penv: PluginEnv) -> None:
    bundle = penv.bundle(id="grow.caps")
    manifest = read_manifest(bundle)
    manifest["capabilities"] = ["kv:read", "kv:write"]
    write_manifest(bundle, manifest)
    live = penv.start()
    try:
        listing = live.client(live.token("plugin:read")).get("/api/plugins").json()
        assert listing["loaded"] == []
        assert "signature" in listing["rejected"][0]["reason"]
    finally:
        live.stop()
