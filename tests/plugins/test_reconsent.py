"""Consent covers the whole identity: publisher, type, entrypoint, digest and
capabilities.  Each case replaces an active plugin's bundle with a real,
correctly signed one that changes one part of it, through HTTP."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from lattice.store.clock import now_iso
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from tests.conftest import LiveServer
from tests.plugins.bundles import Publisher, make_bundle, make_publisher, write_trust
from tests.plugins.conftest import PluginEnv

JS = b'export default { async fetch(request) { return new Response("from js"); } };'


def post(live: LiveServer, body: dict[str, Any]) -> Any:
    return live.admin().post("/api/plugins/lifecycle", json=body)


def item(live: LiveServer, plugin_id: str) -> dict[str, Any]:
    plugins = live.admin().get("/api/plugins/lifecycle").json()["plugins"]
    return next(p for p in plugins if p["id"] == plugin_id)


def activate(live: LiveServer, plugin_id: str) -> None:
    for status in ("installed", "active"):
        r = post(live, {"id": plugin_id, "status": status})
        assert r.status_code == 200, r.text


def second_publisher(penv: PluginEnv) -> Publisher:
    other = make_publisher("other.dev")
    write_trust(penv.trust, [penv.publisher, other])
    return other


def assert_needs_reconsent(live: LiveServer, plugin_id: str, changed: list[str]) -> dict[str, Any]:
    it = item(live, plugin_id)
    assert it["status"] == "disabled" and it["review_required"] is True, it
    assert it["review"]["changed"] == changed
    assert it["runtime"]["state"] == "stopped"
    assert live.container.plugins.runtime.broker(plugin_id) is None
    refused = post(live, {"id": plugin_id, "status": "active"})
    assert refused.status_code == 400 and "approve_digest" in refused.json()["error"]
    assert refused.json()["detail"]["review"]["changed"] == changed
    return it


def approve(live: LiveServer, it: dict[str, Any]) -> dict[str, Any]:
    ok = post(live, {"id": it["id"], "status": "active", "approve_digest": it["digest_sha256"]})
    assert ok.status_code == 200, ok.text
    body: dict[str, Any] = ok.json()
    assert body["review_required"] is False and body["review"] is None
    assert body["runtime"]["state"] == "armed"
    return body


@pytest.mark.parametrize("restart", [False, True])
def test_another_trusted_publisher_resigning_with_a_new_entrypoint(
    penv: PluginEnv, restart: bool
) -> None:
    other = second_publisher(penv)
    bundle = penv.bundle(id="demo.owned", entrypoint="main", artifact=b"same artifact")
    live = penv.start()
    try:
        activate(live, "demo.owned")
        shutil.rmtree(bundle)
        # same id, same artifact (so the same digest), same capabilities
        make_bundle(
            penv.plugin_dir,
            id="demo.owned",
            entrypoint="evil",
            artifact=b"same artifact",
            key=other.key,
            publisher=other.id,
        )
        if restart:
            live.stop()
            live = penv.start()
        else:
            assert live.admin().post("/api/plugins/rescan").json()["changed"] == ["demo.owned"]
        it = assert_needs_reconsent(live, "demo.owned", ["publisher", "entrypoint"])
        review = it["review"]
        assert review["publisher"] == {"approved": "acme.dev", "current": "other.dev"}
        assert review["entrypoint"] == {"approved": "main", "current": "evil"}
        assert review["digest"] is None and review["type"] is None
        assert review["capabilities"] == {"added": [], "removed": []}
        events = live.admin().get("/api/audit", params={"action": "plugin.review_required"})
        event = events.json()["events"][0]
        assert event["detail"]["changed"] == ["publisher", "entrypoint"]
        assert "publisher, entrypoint" in event["reason"]
        body = approve(live, it)
        assert body["publisher"] == "other.dev" and body["entrypoint"] == "evil"
    finally:
        live.stop()


def test_a_worker_switching_template_to_js_with_the_same_artifact(penv: PluginEnv) -> None:
    bundle = penv.bundle(
        id="acme.flip",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route",),
        artifact=JS,
    )
    live = penv.start()
    try:
        activate(live, "acme.flip")
        anon = live.client()
        assert anon.get("/w/acme.flip/").text == JS.decode()  # served as template text
        shutil.rmtree(bundle)
        penv.bundle(
            id="acme.flip",
            type="worker",
            entrypoint="js",
            capabilities=("worker:route",),
            artifact=JS,
        )
        live.admin().post("/api/plugins/rescan")
        it = assert_needs_reconsent(live, "acme.flip", ["entrypoint"])
        assert it["review"]["entrypoint"] == {"approved": "template", "current": "js"}
        assert it["review"]["digest"] is None
        assert anon.get("/w/acme.flip/").status_code == 404  # not served while in review
        approve(live, it)
        assert anon.get("/w/acme.flip/").text == "from js"
    finally:
        live.stop()


def test_a_type_change_with_the_same_artifact(penv: PluginEnv) -> None:
    bundle = penv.bundle(id="demo.kind", type="wasm", artifact=b"one artifact")
    live = penv.start()
    try:
        activate(live, "demo.kind")
        shutil.rmtree(bundle)
        penv.bundle(id="demo.kind", type="system", artifact=b"one artifact")
        live.admin().post("/api/plugins/rescan")
        it = assert_needs_reconsent(live, "demo.kind", ["type"])
        assert it["review"]["type"] == {"approved": "wasm", "current": "system"}
        approve(live, it)
    finally:
        live.stop()


def test_several_changes_at_once_are_all_listed(penv: PluginEnv) -> None:
    other = second_publisher(penv)
    bundle = penv.bundle(id="demo.all", capabilities=("kv:read",), artifact=b"v1")
    live = penv.start()
    try:
        activate(live, "demo.all")
        shutil.rmtree(bundle)
        make_bundle(
            penv.plugin_dir,
            id="demo.all",
            type="system",
            entrypoint="other",
            capabilities=("kv:write",),
            artifact=b"v2",
            key=other.key,
            publisher=other.id,
        )
        live.admin().post("/api/plugins/rescan")
        it = assert_needs_reconsent(
            live, "demo.all", ["digest", "capabilities", "publisher", "type", "entrypoint"]
        )
        assert it["review"]["capabilities"] == {"added": ["kv:write"], "removed": ["kv:read"]}
        assert it["review"]["digest"] == {
            "approved": hashlib.sha256(b"v1").hexdigest(),
            "current": hashlib.sha256(b"v2").hexdigest(),
        }
        approve(live, it)
    finally:
        live.stop()


def test_back_to_the_approved_bundle_clears_the_review(penv: PluginEnv) -> None:
    other = second_publisher(penv)
    bundle = penv.bundle(id="demo.back", artifact=b"same")
    live = penv.start()
    try:
        activate(live, "demo.back")
        shutil.rmtree(bundle)
        swapped = make_bundle(
            penv.plugin_dir, id="demo.back", artifact=b"same", key=other.key, publisher=other.id
        )
        live.admin().post("/api/plugins/rescan")
        assert item(live, "demo.back")["review_required"] is True
        shutil.rmtree(swapped)
        penv.bundle(id="demo.back", artifact=b"same")
        live.admin().post("/api/plugins/rescan")
        it = item(live, "demo.back")
        assert it["review_required"] is False and it["status"] == "disabled"
        assert post(live, {"id": "demo.back", "status": "active"}).status_code == 200
    finally:
        live.stop()


# -- records approved before migration 0007 ---------------------------------------


def _old_row(db_url: str, tmp_path: Path, *, plugin_id: str, publisher: str, digest: str) -> None:
    """A database at revision 0004 holding an active, approved record, as the
    code before this change wrote it (no entrypoint, no approved identity)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    db = Database(db_url)
    try:
        upgrade(db, "0004")
        now = now_iso()
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO plugins (id, name, type, version, publisher, capabilities,"
                    " digest_sha256, approved_digest, approved_capabilities, status,"
                    " review_required, bundle, created_at, verified_at, installed_at,"
                    " activated_at, disabled_at, updated_at) VALUES (:id, 'Demo plugin',"
                    " 'wasm', '1.0.0', :pub, :caps, :d, :d, :caps, 'active', :no, :id, :now,"
                    " :now, :now, :now, NULL, :now)"
                ),
                {
                    "id": plugin_id,
                    "pub": publisher,
                    "caps": json.dumps(["kv:read"]),
                    "d": digest,
                    "no": False,
                    "now": now,
                },
            )
    finally:
        db.dispose()


def test_a_record_approved_before_the_migration_stays_active_without_review(
    penv: PluginEnv, db_url: str, tmp_path: Path
) -> None:
    penv.bundle(id="demo.old", entrypoint="main", artifact=b"old artifact")
    digest = hashlib.sha256(b"old artifact").hexdigest()
    _old_row(db_url, tmp_path, plugin_id="demo.old", publisher="acme.dev", digest=digest)
    live = penv.start()
    try:
        it = item(live, "demo.old")
        assert it["status"] == "active" and it["review_required"] is False
        assert it["runtime"]["state"] == "armed" and it["entrypoint"] == "main"
    finally:
        live.stop()
    # the adopted identity is now recorded: a later entrypoint change needs review
    shutil.rmtree(penv.plugin_dir / "demo.old")
    penv.bundle(id="demo.old", entrypoint="other", artifact=b"old artifact")
    live = penv.start()
    try:
        assert_needs_reconsent(live, "demo.old", ["entrypoint"])
    finally:
        live.stop()


def test_a_record_approved_before_the_migration_still_notices_a_new_publisher(
    penv: PluginEnv, db_url: str, tmp_path: Path
) -> None:
    other = second_publisher(penv)
    make_bundle(penv.plugin_dir, id="demo.was", artifact=b"same", key=other.key, publisher=other.id)
    digest = hashlib.sha256(b"same").hexdigest()
    _old_row(db_url, tmp_path, plugin_id="demo.was", publisher="acme.dev", digest=digest)
    live = penv.start()
    try:
        it = assert_needs_reconsent(live, "demo.was", ["publisher"])
        assert it["review"]["publisher"] == {"approved": "acme.dev", "current": "other.dev"}
    finally:
        live.stop()
