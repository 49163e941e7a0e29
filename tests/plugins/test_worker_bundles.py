"""Signed worker bundles serve only while active, through their broker."""

from __future__ import annotations

import time

from tests.conftest import LiveServer
from tests.plugins.conftest import PluginEnv


def set_status(live: LiveServer, plugin_id: str, status: str) -> dict:  # type: ignore[type-arg]
    r = live.admin().post("/api/plugins/lifecycle", json={"id": plugin_id, "status": status})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_template_bundle_serves_only_while_active(penv: PluginEnv) -> None:
    penv.bundle(
        id="acme.page",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route", "kv:read"),
        artifact=b"page {{path}} {{kv:site/title}}",
    )
    live = penv.start()
    try:
        live.admin().put("/api/kv/site/title", content=b"Fleet")
        anon = live.client()
        assert anon.get("/w/acme.page/x").status_code == 404  # verified, not active
        set_status(live, "acme.page", "installed")
        assert anon.get("/w/acme.page/x").status_code == 404
        item = set_status(live, "acme.page", "active")
        assert item["runtime"]["runner"] == "worker" and item["runtime"]["state"] == "armed"
        assert anon.get("/w/acme.page/x").text == "page /x Fleet"
        set_status(live, "acme.page", "disabled")
        assert anon.get("/w/acme.page/x").status_code == 404
        # every read went through the broker and is in the chain (write-behind, < 1 s)
        deadline = time.monotonic() + 2
        events: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline and not events:
            events = (
                live.admin()
                .get("/api/audit", params={"action": "plugin.host.kv.get"})
                .json()["events"]
            )
            time.sleep(0.05)
        assert events and events[0]["actor"] == "plugin:acme.page"
        assert events[0]["detail"]["capability"] == "kv:read"
    finally:
        live.stop()


def test_js_bundle_worker_and_its_private_bucket(penv: PluginEnv) -> None:
    js = b"""export default { async fetch(request) { return new Response("bundle js"); } };"""
    penv.bundle(
        id="acme.js",
        type="worker",
        entrypoint="js",
        capabilities=("worker:route",),
        artifact=js,
    )
    penv.bundle(
        id="acme.peek",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route", "kv:read"),
        artifact=b"[{{kv:plugin:acme.js/secret}}]",
    )
    live = penv.start()
    try:
        live.admin().put("/api/kv/plugin:acme.js/secret", content=b"hidden")
        for pid in ("acme.js", "acme.peek"):
            set_status(live, pid, "installed")
            set_status(live, pid, "active")
        assert live.client().get("/w/acme.js/").text == "bundle js"
        assert live.client().get("/w/acme.peek/").text == "[]"
    finally:
        live.stop()


def test_worker_bundle_with_blocked_source_fails_to_arm(penv: PluginEnv) -> None:
    penv.bundle(
        id="acme.bad",
        type="worker",
        entrypoint="js",
        capabilities=("worker:route",),
        artifact=b"export default { async fetch() { return fetch('http://x'); } };",
    )
    live = penv.start()
    try:
        set_status(live, "acme.bad", "installed")
        r = live.admin().post("/api/plugins/lifecycle", json={"id": "acme.bad", "status": "active"})
        assert r.status_code == 500
        lifecycle = live.admin().get("/api/plugins/lifecycle").json()["plugins"]
        item = next(p for p in lifecycle if p["id"] == "acme.bad")
        assert item["status"] == "disabled" and item["runtime"]["state"] == "failed"
        assert "fetch(" in item["runtime"]["message"]
        assert live.client().get("/w/acme.bad/").status_code == 404
    finally:
        live.stop()


def test_operator_worker_cannot_take_a_bundle_workers_name(penv: PluginEnv) -> None:
    penv.bundle(
        id="taken",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route",),
        artifact=b"bundle",
    )
    live = penv.start()
    try:
        set_status(live, "taken", "installed")
        set_status(live, "taken", "active")
        deployer = live.client(live.token("worker:deploy"))
        r = deployer.put(
            "/api/workers/taken",
            json={"kind": "template", "source": "operator", "capabilities": ["worker:route"]},
        )
        assert r.status_code == 409
        assert live.client().get("/w/taken/").text == "bundle"
    finally:
        live.stop()
