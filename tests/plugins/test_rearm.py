"""A record that is active and whose unchanged bundle is verified again is
armed again: on rescan exactly as at startup, and when ``active`` is posted."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.plugins.conftest import PluginEnv

PAGE = b"page {{path}}"


def post(live: LiveServer, body: dict[str, Any]) -> Any:
    return live.admin().post("/api/plugins/lifecycle", json=body)


def item(live: LiveServer, plugin_id: str) -> dict[str, Any]:
    plugins = live.admin().get("/api/plugins/lifecycle").json()["plugins"]
    return next(p for p in plugins if p["id"] == plugin_id)


def rescan(live: LiveServer) -> dict[str, Any]:
    r = live.admin().post("/api/plugins/rescan")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def worker(penv: PluginEnv) -> Path:
    return penv.bundle(
        id="acme.page",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route",),
        artifact=PAGE,
    )


def start_active(penv: PluginEnv) -> LiveServer:
    worker(penv)
    live = penv.start()
    for status in ("installed", "active"):
        assert post(live, {"id": "acme.page", "status": status}).status_code == 200
    assert live.client().get("/w/acme.page/x").text == "page /x"
    return live


def assert_serving_again(live: LiveServer) -> None:
    it = item(live, "acme.page")
    assert it["status"] == "active" and it["available"] is True
    assert it["review_required"] is False
    assert it["runtime"]["state"] == "armed", it["runtime"]
    assert live.client().get("/w/acme.page/x").text == "page /x"


def _remove(bundle: Path) -> None:
    shutil.rmtree(bundle)


def _corrupt(bundle: Path) -> None:
    (bundle / "artifact").write_bytes(b"page {{kv:secret/k}}")  # no longer the signed digest


def _garble_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").write_bytes(b"{not json")


@pytest.mark.parametrize(
    "break_it", [_remove, _corrupt, _garble_manifest], ids=["removed", "corrupted", "garbled"]
)
def test_a_restored_bundle_is_rearmed_on_rescan(penv: PluginEnv, break_it: Any) -> None:
    live = start_active(penv)
    try:
        bundle = penv.plugin_dir / "acme.page"
        break_it(bundle)
        assert rescan(live)["removed"] == ["acme.page"]
        it = item(live, "acme.page")
        assert it["status"] == "active" and it["available"] is False
        assert it["runtime"]["state"] == "stopped"
        assert live.client().get("/w/acme.page/x").status_code == 404
        # restore exactly what was approved
        shutil.rmtree(bundle, ignore_errors=True)
        worker(penv)
        diff = rescan(live)
        assert diff["added"] == ["acme.page"]
        assert_serving_again(live)
        runtime = live.admin().get("/api/audit", params={"action": "plugin.runtime"}).json()
        assert [e["detail"]["state"] for e in runtime["events"]][:2] == ["armed", "stopped"]
    finally:
        live.stop()


def test_posting_active_rearms_an_active_plugin_that_is_not_armed(penv: PluginEnv) -> None:
    live = start_active(penv)
    try:
        # lose the runtime without a status change (what the bug above left behind)
        live.container.plugins.runtime.stop("acme.page", "lost")
        assert item(live, "acme.page")["runtime"]["state"] == "stopped"
        assert live.client().get("/w/acme.page/x").status_code == 404
        r = post(live, {"id": "acme.page", "status": "active"})
        assert r.status_code == 200, r.text
        assert r.json()["runtime"]["state"] == "armed"
        assert_serving_again(live)
        # posting active to an armed plugin stays a quiet no-op
        before = live.container.audit.count()
        assert post(live, {"id": "acme.page", "status": "active"}).status_code == 200
        assert live.container.audit.count() == before
    finally:
        live.stop()


def test_posting_active_to_an_active_plugin_without_its_bundle_says_so(
    penv: PluginEnv,
) -> None:
    live = start_active(penv)
    try:
        shutil.rmtree(penv.plugin_dir / "acme.page")
        rescan(live)
        r = post(live, {"id": "acme.page", "status": "active"})
        assert r.status_code == 400 and "not available" in r.json()["error"]
        assert item(live, "acme.page")["status"] == "active"
    finally:
        live.stop()


def test_a_rescan_with_nothing_changed_also_rearms(penv: PluginEnv) -> None:
    live = start_active(penv)
    try:
        live.container.plugins.runtime.stop("acme.page", "lost")
        assert rescan(live) == {
            "added": [],
            "changed": [],
            "removed": [],
            "rejected": [],
            "cleared": [],
        }
        assert_serving_again(live)
    finally:
        live.stop()


def test_a_restored_bundle_that_needs_review_is_not_rearmed(penv: PluginEnv) -> None:
    live = start_active(penv)
    try:
        shutil.rmtree(penv.plugin_dir / "acme.page")
        rescan(live)
        penv.bundle(
            id="acme.page",
            type="worker",
            entrypoint="template",
            capabilities=("worker:route",),
            artifact=b"changed {{path}}",
        )
        rescan(live)
        it = item(live, "acme.page")
        assert it["status"] == "disabled" and it["review_required"] is True
        assert it["runtime"]["state"] == "stopped"
        assert live.client().get("/w/acme.page/x").status_code == 404
    finally:
        live.stop()
