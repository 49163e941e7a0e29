"""The seed's Lifecycle section, bullet by bullet, through HTTP."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from lattice.errors import RunnerError
from lattice.plugins.broker import Broker
from lattice.plugins.loader import LoadedPlugin
from lattice.plugins.runtime import RunContext
from tests.conftest import LiveServer
from tests.plugins.conftest import PluginEnv

ALL_STATUSES = ["verified", "installed", "active", "disabled"]
ALLOWED = {
    ("verified", "installed"),
    ("installed", "active"),
    ("installed", "disabled"),
    ("active", "disabled"),
    ("disabled", "active"),
}
# how to reach each status from a fresh (verified) record
PATHS = {
    "verified": [],
    "installed": ["installed"],
    "active": ["installed", "active"],
    "disabled": ["installed", "disabled"],
}


def post(client: Any, body: dict[str, Any]) -> Any:
    return client.post("/api/plugins/lifecycle", json=body)


def item(live: LiveServer, plugin_id: str) -> dict[str, Any]:
    plugins = live.admin().get("/api/plugins/lifecycle").json()["plugins"]
    return next(p for p in plugins if p["id"] == plugin_id)


def walk(live: LiveServer, plugin_id: str, statuses: list[str]) -> None:
    admin = live.admin()
    for status in statuses:
        r = post(admin, {"id": plugin_id, "status": status})
        assert r.status_code == 200, r.text


def test_loaded_bundle_gets_a_verified_record_with_identity(plive: LiveServer) -> None:
    it = item(plive, "demo.kv")
    assert it["status"] == "verified" and it["available"] is True
    assert it["type"] == "wasm" and it["publisher"] == "acme.dev" and it["version"] == "1.0.0"
    assert sorted(it["capabilities"]) == ["kv:read", "kv:write", "log:write"]
    assert len(it["digest_sha256"]) == 64
    for stamp in ("created_at", "verified_at", "updated_at"):
        assert it[stamp]
    assert it["installed_at"] is None and it["review_required"] is False
    assert it["runtime"]["state"] == "stopped" and it["runtime"]["runner"] == "noop"


@pytest.mark.parametrize("start", ALL_STATUSES)
@pytest.mark.parametrize("target", [*ALL_STATUSES, "deleted"])
def test_transition_matrix(penv: PluginEnv, start: str, target: str) -> None:
    penv.bundle(id="demo.matrix")
    live = penv.start()
    try:
        walk(live, "demo.matrix", PATHS[start])
        before = live.container.audit.count()
        r = post(live.admin(), {"id": "demo.matrix", "status": target})
        if target == start:
            assert r.status_code == 200
            assert live.container.audit.count() == before  # a no-op is not audited
        elif (start, target) in ALLOWED:
            assert r.status_code == 200, r.text
            assert r.json()["status"] == target
        else:
            assert r.status_code == 400, r.text
            message = r.json()["error"]
            assert target in message
            if target in ALL_STATUSES:
                assert start in message
            assert item(live, "demo.matrix")["status"] == start
    finally:
        live.stop()


def test_activation_arms_and_disabling_stops(plive: LiveServer) -> None:
    walk(plive, "demo.kv", ["installed", "active"])
    it = item(plive, "demo.kv")
    assert it["runtime"]["state"] == "armed" and it["runtime"]["runner"] == "noop"
    assert it["runtime"]["started_at"] and it["activated_at"]
    broker = plive.container.plugins.runtime.broker("demo.kv")
    assert broker is not None and broker.armed
    walk(plive, "demo.kv", ["disabled"])
    it = item(plive, "demo.kv")
    assert it["runtime"]["state"] == "stopped" and it["disabled_at"]
    assert not broker.armed  # detached: later host calls are denied
    assert plive.container.plugins.runtime.broker("demo.kv") is None


def test_status_and_runtime_changes_are_audited(plive: LiveServer) -> None:
    walk(plive, "demo.kv", ["installed", "active", "disabled"])
    events = plive.admin().get("/api/audit", params={"action": "plugin.", "order": "asc"}).json()
    status = [e["detail"] for e in events["events"] if e["action"] == "plugin.status"]
    assert [(d["from"], d["to"]) for d in status] == [
        ("verified", "installed"),
        ("installed", "active"),
        ("active", "disabled"),
    ]
    runtime = [e for e in events["events"] if e["action"] == "plugin.runtime"]
    assert [e["detail"]["state"] for e in runtime] == ["armed", "stopped"]
    assert all(e["detail"]["runner"] == "noop" for e in runtime)
    actors = {e["actor"] for e in events["events"] if e["action"] == "plugin.status"}
    assert all(a.startswith("user:admin") for a in actors)


def test_response_never_carries_a_path(penv: PluginEnv, plive: LiveServer) -> None:
    walk(plive, "demo.kv", ["installed", "active"])
    text = plive.admin().get("/api/plugins/lifecycle").text
    assert "bundle_path" not in text
    assert str(penv.plugin_dir) not in text and "/tmp" not in text
    listing = plive.admin().get("/api/plugins").text
    assert str(penv.plugin_dir) not in listing and "/tmp" not in listing


def test_unavailable_bundle_cannot_install_or_activate(penv: PluginEnv) -> None:
    bundle = penv.bundle(id="demo.gone")
    other = penv.bundle(id="demo.gone2")
    live = penv.start()
    try:
        walk(live, "demo.gone2", ["installed", "active", "disabled"])
        shutil.rmtree(bundle)
        shutil.rmtree(other)
        admin = live.admin()
        diff = admin.post("/api/plugins/rescan").json()
        assert set(diff["removed"]) == {"demo.gone", "demo.gone2"}
        assert item(live, "demo.gone")["available"] is False
        r = post(admin, {"id": "demo.gone", "status": "installed"})
        assert r.status_code == 400 and "not available" in r.json()["error"]
        assert item(live, "demo.gone")["status"] == "verified"
        r = post(admin, {"id": "demo.gone2", "status": "active"})
        assert r.status_code == 400 and item(live, "demo.gone2")["status"] == "disabled"
    finally:
        live.stop()


def test_stale_active_record_can_be_disabled_not_reactivated(penv: PluginEnv) -> None:
    bundle = penv.bundle(id="demo.stale")
    live = penv.start()
    try:
        walk(live, "demo.stale", ["installed", "active"])
        shutil.rmtree(bundle)
        live.admin().post("/api/plugins/rescan")
        it = item(live, "demo.stale")
        assert it["available"] is False and it["runtime"]["state"] == "stopped"
        assert post(live.admin(), {"id": "demo.stale", "status": "disabled"}).status_code == 200
        assert post(live.admin(), {"id": "demo.stale", "status": "active"}).status_code == 400
    finally:
        live.stop()


def test_unknown_id_404_bad_body_422_and_scope_403(plive: LiveServer) -> None:
    admin = plive.admin()
    assert post(admin, {"id": "nope.x", "status": "installed"}).status_code == 404
    extra = post(admin, {"id": "demo.kv", "status": "installed", "force": True})
    assert extra.status_code == 422 and "force" in extra.json()["error"]
    assert post(admin, {"id": "demo.kv"}).status_code == 422
    assert post(admin, {"id": "demo.kv", "status": 3}).status_code == 422
    reader = plive.client(plive.token("plugin:read"))
    r = reader.get("/api/plugins/lifecycle")
    assert r.status_code == 403 and r.json()["detail"] == {"missing_scope": "plugin:admin"}
    assert post(reader, {"id": "demo.kv", "status": "installed"}).status_code == 403


def test_restart_rearms_active_keeps_disabled_and_marks_vanished(penv: PluginEnv) -> None:
    penv.bundle(id="demo.active")
    penv.bundle(id="demo.off")
    vanish = penv.bundle(id="demo.vanish")
    first = penv.start()
    try:
        walk(first, "demo.active", ["installed", "active"])
        walk(first, "demo.off", ["installed", "active", "disabled"])
        walk(first, "demo.vanish", ["installed", "active"])
    finally:
        first.stop()
    shutil.rmtree(vanish)
    second = penv.start()
    try:
        assert item(second, "demo.active")["runtime"]["state"] == "armed"
        off = item(second, "demo.off")
        assert off["status"] == "disabled" and off["runtime"]["state"] == "stopped"
        gone = item(second, "demo.vanish")
        assert gone["available"] is False and gone["status"] == "active"
        assert gone["runtime"]["state"] == "stopped"
        assert second.container.plugins.runtime.broker("demo.vanish") is None
    finally:
        second.stop()


def _upgrade(bundle: Path, penv: PluginEnv, capabilities: tuple[str, ...]) -> None:
    shutil.rmtree(bundle)
    penv.bundle(id="demo.up", capabilities=capabilities, artifact=b"v2 artifact", version="2.0.0")


@pytest.mark.parametrize("restart", [False, True])
def test_changed_bundle_needs_reconsent(penv: PluginEnv, restart: bool) -> None:
    bundle = penv.bundle(id="demo.up", capabilities=("kv:read",))
    live = penv.start()
    try:
        walk(live, "demo.up", ["installed", "active"])
        _upgrade(bundle, penv, ("kv:read", "kv:write"))
        if restart:
            live.stop()
            live = penv.start()
        else:
            live.admin().post("/api/plugins/rescan")
        it = item(live, "demo.up")
        assert it["status"] == "disabled" and it["review_required"] is True
        assert it["review"]["capabilities"] == {"added": ["kv:write"], "removed": []}
        assert it["runtime"]["state"] == "stopped"
        assert live.container.plugins.runtime.broker("demo.up") is None
        admin = live.admin()
        refused = post(admin, {"id": "demo.up", "status": "active"})
        assert refused.status_code == 400 and "approve_digest" in refused.json()["error"]
        wrong = post(admin, {"id": "demo.up", "status": "active", "approve_digest": "0" * 64})
        assert wrong.status_code == 400
        ok = post(
            admin, {"id": "demo.up", "status": "active", "approve_digest": it["digest_sha256"]}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["review_required"] is False
        assert ok.json()["runtime"]["state"] == "armed"
        events = admin.get("/api/audit", params={"action": "plugin.review_required"}).json()
        assert events["events"] and events["events"][0]["decision"] == "deny"
    finally:
        live.stop()


def test_concurrent_transitions_from_one_state_cannot_both_win(plive: LiveServer) -> None:
    walk(plive, "demo.kv", ["installed"])
    results: list[int] = []
    barrier = threading.Barrier(8)

    def go(target: str) -> None:
        client = plive.admin()
        barrier.wait()
        results.append(post(client, {"id": "demo.kv", "status": target}).status_code)

    threads = [
        threading.Thread(target=go, args=("active" if i % 2 else "disabled",)) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = plive.admin().get("/api/audit", params={"action": "plugin.status"}).json()["events"]
    from_installed = [e for e in events if e["detail"]["from"] == "installed"]
    assert len(from_installed) == 1  # exactly one request moved it out of "installed"


class ExplodingRunner:
    name = "exploding"

    def start(self, ctx: RunContext, plugin: LoadedPlugin, broker: Broker) -> None:
        raise RunnerError("kaboom at /secret/path", plugin_id=plugin.id)

    def stop(self, ctx: RunContext, plugin_id: str, reason: str) -> None:
        return None


def test_runner_start_failure_disables_and_reports_safely(plive: LiveServer) -> None:
    plive.container.plugins.runtime.register("wasm", ExplodingRunner())
    walk(plive, "demo.kv", ["installed"])
    r = post(plive.admin(), {"id": "demo.kv", "status": "active"})
    assert r.status_code == 500
    assert "failed to start" in r.json()["error"] and "/secret" not in r.text
    it = item(plive, "demo.kv")
    assert it["status"] == "disabled" and it["runtime"]["state"] == "failed"
    denied = plive.admin().get(
        "/api/audit", params={"action": "plugin.runtime", "decision": "deny"}
    )
    assert denied.json()["events"]


def test_lifecycle_body_is_json_only(plive: LiveServer) -> None:
    r = plive.admin().post("/api/plugins/lifecycle", content=json.dumps({"id": "demo.kv"})[:-2])
    assert r.status_code in (400, 422)


def test_a_plugin_that_fails_at_startup_is_disabled_and_the_server_serves(
    penv: PluginEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    penv.bundle(
        id="acme.flaky",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route",),
        artifact=b"fine",
    )
    first = penv.start()
    try:
        walk(first, "acme.flaky", ["installed", "active"])
    finally:
        first.stop()
    # same bundle (no re-consent involved), but the worker runner now refuses it
    from lattice.plugins import workers

    def refuse(_source: str) -> None:
        raise workers.WorkerError("refused at startup")

    monkeypatch.setattr(workers, "check_source", refuse)
    second = penv.start()
    try:
        assert second.client().get("/healthz").status_code == 200
        it = item(second, "acme.flaky")
        assert it["status"] == "disabled" and it["runtime"]["state"] == "failed"
    finally:
        second.stop()


def test_watch_mode_picks_up_new_bundles(penv: PluginEnv) -> None:
    import time

    live = penv.start(plugin_watch=True)
    try:
        time.sleep(0.3)
        penv.bundle(id="watched.one")
        deadline = time.monotonic() + 10
        ids: list[str] = []
        while time.monotonic() < deadline and "watched.one" not in ids:
            ids = [p["id"] for p in live.admin().get("/api/plugins/lifecycle").json()["plugins"]]
            time.sleep(0.1)
        assert "watched.one" in ids
    finally:
        live.stop()


def test_a_moved_but_unchanged_bundle_is_rearmed_without_review(penv: PluginEnv) -> None:
    bundle = penv.bundle(id="demo.move")
    live = penv.start()
    try:
        walk(live, "demo.move", ["installed", "active"])
        first = live.container.plugins.runtime.broker("demo.move")
        bundle.rename(bundle.parent / "renamed-dir")
        diff = live.admin().post("/api/plugins/rescan").json()
        assert diff["changed"] == ["demo.move"]
        it = item(live, "demo.move")
        assert it["status"] == "active" and it["review_required"] is False
        assert it["runtime"]["state"] == "armed"
        second = live.container.plugins.runtime.broker("demo.move")
        assert second is not None and second is not first and second.armed
        assert first is not None and not first.armed  # the old broker was detached
    finally:
        live.stop()
