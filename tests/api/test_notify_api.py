"""Notification API over a live server: channels, test sends, deliveries, masking, auth."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, start_server
from tests.services.test_notify import SECRET, TG_TOKEN, TG_URL, Receiver, eventually

ROUTES = [
    ("GET", "/api/notify/channels"),
    ("POST", "/api/notify/channels"),
    ("PATCH", "/api/notify/channels/1"),
    ("DELETE", "/api/notify/channels/1"),
    ("POST", "/api/notify/test"),
    ("GET", "/api/notify/deliveries"),
]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def settings_open(settings_factory: Any, receiver: Receiver) -> Any:
    return settings_factory(
        egress_allow_cidrs="127.0.0.1/32",
        egress_allow_ports=f"80,443,{receiver.port}",
        notify_retry_base_seconds=0.05,
    )


@pytest.fixture
def srv(settings_open: Any) -> Iterator[LiveServer]:
    s = start_server(settings_open)
    try:
        yield s
    finally:
        s.stop()


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/api/notify/channels", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def final_deliveries(client: httpx.Client, message_id: int) -> list[dict[str, Any]]:
    """Wait until every delivery of the message is delivered or failed."""

    def done() -> list[dict[str, Any]] | None:
        params = {"limit": 500, "message_id": message_id}
        mine = client.get("/api/notify/deliveries", params=params).json()["deliveries"]
        return mine if mine and all(d["status"] != "pending" for d in mine) else None

    return eventually(done, what=f"deliveries of message {message_id}")


def final_delivery(client: httpx.Client, message_id: int) -> dict[str, Any]:
    (only,) = final_deliveries(client, message_id)
    return only


def test_routes_need_credentials_and_notify_admin(srv: LiveServer) -> None:
    anon = srv.client()
    other = srv.client(srv.token("kv:read"))
    for method, path in ROUTES:
        assert anon.request(method, path).status_code == 401, (method, path)
        r = other.request(method, path)
        assert r.status_code == 403, (method, path)
        assert r.json()["detail"] == {"missing_scope": "notify:admin"}


def test_channel_crud_never_shows_the_url(srv: LiveServer, receiver: Receiver) -> None:
    c = srv.client(srv.token("notify:admin"))
    url = receiver.url("/crud", userinfo=f"user:{SECRET}")
    made = create(c, name="ops hook", url=url, tags=["ops", "dev"], rate_per_minute=12)
    assert made["service"] == "JSON" and made["tags"] == ["dev", "ops"]
    assert made["enabled"] is True and made["rate_per_minute"] == 12
    assert made["url_masked"].startswith("json://user:****@127.0.0.1")
    assert "url" not in made
    tg = create(c, name="telegram", url=TG_URL, enabled=False)
    assert tg["service"] == "Telegram" and TG_TOKEN not in tg["url_masked"]

    listed = c.get("/api/notify/channels")
    assert [ch["name"] for ch in listed.json()["channels"]] == ["ops hook", "telegram"]
    patched = c.patch(
        f"/api/notify/channels/{made['id']}", json={"name": "renamed", "tags": ["ops"]}
    )
    assert patched.status_code == 200 and patched.json()["name"] == "renamed"
    new_url = receiver.url("/crud2", userinfo=f"other:{SECRET}x")
    patched = c.patch(f"/api/notify/channels/{made['id']}", json={"url": new_url})
    assert patched.status_code == 200 and "/crud2" in patched.json()["url_masked"]
    assert c.patch(f"/api/notify/channels/{made['id']}", json={}).status_code == 400
    dup = c.post("/api/notify/channels", json={"name": "telegram", "url": TG_URL})
    assert dup.status_code == 409 and "already exists" in dup.json()["error"]

    mid = c.post("/api/notify/test", json={"channel_id": made["id"]}).json()["message_id"]
    delivered = final_delivery(c, mid)
    assert delivered["status"] == "delivered" and delivered["channel_name"] == "renamed"
    assert receiver.ok("/crud2")[0]["json"]["title"] == "Lattice test notification"
    assert c.delete(f"/api/notify/channels/{tg['id']}").json()["deleted"] == tg["id"]
    assert c.delete(f"/api/notify/channels/{tg['id']}").status_code == 404

    audit = srv.admin().get("/api/audit", params={"action": "notify.", "limit": 100})
    assert audit.status_code == 200, audit.text
    bodies = [
        made,
        tg,
        listed.json(),
        patched.json(),
        c.get("/api/notify/deliveries").json(),
        audit.json(),
    ]
    text = json.dumps(bodies)
    assert SECRET not in text and TG_TOKEN not in text
    actions = {e["action"] for e in audit.json()["events"]}
    assert {
        "notify.channel.create",
        "notify.channel.update",
        "notify.channel.delete",
        "notify.test",
        "notify.delivery",
    } <= actions


def test_invalid_channel_input_is_refused(srv: LiveServer) -> None:
    c = srv.admin()
    bad_url = c.post("/api/notify/channels", json={"name": "x", "url": f"tgram://{SECRET}"})
    assert bad_url.status_code == 400
    assert "Telegram" in bad_url.json()["error"] and SECRET not in bad_url.text
    unknown = c.post("/api/notify/channels", json={"name": "x", "url": f"bogus://u:{SECRET}@h/"})
    assert unknown.status_code == 400 and SECRET not in unknown.text
    bad_tag = c.post("/api/notify/channels", json={"name": "x", "url": TG_URL, "tags": ["A B"]})
    assert bad_tag.status_code == 400 and "tag" in bad_tag.json()["error"]
    extra = c.post("/api/notify/channels", json={"name": "x", "url": TG_URL, "secret": 1})
    assert extra.status_code == 422
    too_many = c.post(
        "/api/notify/channels",
        json={"name": "x", "url": TG_URL, "tags": [f"t{i}" for i in range(17)]},
    )
    assert too_many.status_code == 422
    assert c.get("/api/notify/deliveries", params={"status": "weird"}).status_code == 422
    assert c.post("/api/notify/test", json={"channel_id": 999}).status_code == 404
    assert c.get("/api/notify/channels").json()["channels"] == []


def test_retries_show_up_in_the_delivery_records(srv: LiveServer, receiver: Receiver) -> None:
    c = srv.admin()
    made = create(c, name="flaky", url=receiver.url("/flaky"))
    receiver.fail["/flaky"] = 2
    r = c.post("/api/notify/test", json={"channel_id": None, "title": "T", "body": "B"})
    assert r.status_code == 200 and r.json()["deliveries"] == 1
    d = final_delivery(c, r.json()["message_id"])
    assert d["status"] == "delivered" and d["attempts"] == 3
    assert d["channel_id"] == made["id"] and d["title"] == "T" and d["delivered_at"]
    listed = c.get(
        "/api/notify/deliveries", params={"status": "delivered", "channel_id": made["id"]}
    ).json()
    assert [x["id"] for x in listed["deliveries"]] == [d["id"]]
    assert c.get("/api/notify/deliveries", params={"status": "failed"}).json()["deliveries"] == []


def test_tag_routing_and_disabled_channels(srv: LiveServer, receiver: Receiver) -> None:
    c = srv.admin()
    create(c, name="ops", url=receiver.url("/ops"), tags=["ops"])
    create(c, name="dev", url=receiver.url("/dev"), tags=["dev"])
    create(c, name="off", url=receiver.url("/off"), tags=["ops"], enabled=False)
    notify = srv.container.notify
    tagged = notify.send(title="only ops", body="b", tags=["ops"], source="test")
    everyone = notify.send(title="everyone", body="b", tags=[], source="test")
    assert len(final_deliveries(c, tagged)) == 1
    assert len(final_deliveries(c, everyone)) == 2
    assert [r["json"]["title"] for r in receiver.ok("/ops")] == ["only ops", "everyone"]
    assert [r["json"]["title"] for r in receiver.ok("/dev")] == ["everyone"]
    assert receiver.ok("/off") == []


def test_pagination_of_deliveries(srv: LiveServer, receiver: Receiver) -> None:
    c = srv.admin()
    srv.container.notify.worker.close()  # keep them pending; only listing matters here
    create(c, name="pages", url=receiver.url("/pages"))
    for i in range(5):
        srv.container.notify.send(title=f"m{i}", body="b", tags=[], source="test")
    first = c.get("/api/notify/deliveries", params={"limit": 3}).json()
    assert [d["title"] for d in first["deliveries"]] == ["m4", "m3", "m2"]
    rest = c.get(
        "/api/notify/deliveries", params={"limit": 3, "cursor": first["next_cursor"]}
    ).json()
    assert [d["title"] for d in rest["deliveries"]] == ["m1", "m0"]
    assert rest["next_cursor"] is None
    assert all(d["status"] == "pending" and d["next_attempt_at"] for d in rest["deliveries"])


def test_a_restarted_server_delivers_what_was_queued(
    settings_open: Any, receiver: Receiver
) -> None:
    first = start_server(settings_open)
    try:
        c = first.admin()
        create(c, name="resume", url=receiver.url("/resume"))
        first.container.notify.worker.close()  # the worker is gone; the outbox is not
        mid = c.post("/api/notify/test", json={"title": "queued"}).json()["message_id"]
    finally:
        first.stop()
    assert receiver.requests == []
    second = start_server(settings_open)
    try:
        d = final_delivery(second.admin(), mid)
        assert d["status"] == "delivered" and d["attempts"] == 1
        assert receiver.ok("/resume")[0]["json"]["title"] == "queued"
    finally:
        second.stop()


def test_loopback_channel_is_refused_when_the_cidr_is_not_opened(
    settings_factory: Any, receiver: Receiver
) -> None:
    srv = start_server(settings_factory(egress_allow_ports=f"80,443,{receiver.port}"))
    try:
        c = srv.admin()
        create(c, name="local", url=receiver.url("/local"))
        mid = c.post("/api/notify/test", json={}).json()["message_id"]
        d = final_delivery(c, mid)
        assert d["status"] == "failed" and d["attempts"] == 1
        assert d["last_error"].startswith("egress blocked: blocked address 127.0.0.1")
        assert receiver.requests == []
        events = c.get("/api/audit", params={"action": "notify.delivery"}).json()["events"]
        assert events[0]["decision"] == "deny" and events[0]["reason"] == d["last_error"]
    finally:
        srv.stop()


def test_no_secret_in_server_logs(
    srv: LiveServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("lattice", "apprise", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    c = srv.admin()
    c.post("/api/notify/channels", json={"name": "bad", "url": f"json://u:{SECRET}@"})
    made = create(c, name="logs", url=receiver.url("/logs", userinfo=f"user:{SECRET}"))
    create(c, name="tg", url=TG_URL, enabled=False)
    receiver.fail["/logs"] = 1
    mid = c.post("/api/notify/test", json={"channel_id": made["id"]}).json()["message_id"]
    assert final_delivery(c, mid)["status"] == "delivered"
    assert caplog.records
    assert SECRET not in caplog.text and TG_TOKEN not in caplog.text


def test_a_redirect_to_a_port_the_policy_never_opened_is_not_delivered(
    srv: LiveServer, receiver: Receiver
) -> None:
    # the server opens 127.0.0.1/32 and the receiver's port only
    other = Receiver()
    try:
        receiver.redirects["/hop"] = (307, other.http_url("/landed"))
        c = srv.admin()
        made = create(c, name="hop", url=receiver.url("/hop", userinfo=f"user:{SECRET}"))
        mid = c.post("/api/notify/test", json={"channel_id": made["id"]}).json()["message_id"]
        d = final_delivery(c, mid)
        assert d["status"] == "failed" and d["attempts"] == 1
        assert d["last_error"] == f"egress blocked: port {other.port} not allowed"
        assert [r["path"] for r in receiver.requests] == ["/hop"]
        assert other.requests == [] and other.accepted == 0
        events = c.get("/api/audit", params={"action": "notify.delivery"}).json()["events"]
        assert events[0]["decision"] == "deny" and events[0]["reason"] == d["last_error"]
    finally:
        other.close()


def test_a_redirect_the_channel_refuses_to_follow_is_not_followed(
    settings_factory: Any, receiver: Receiver
) -> None:
    other = Receiver()
    settings = settings_factory(
        egress_allow_cidrs="127.0.0.1/32",
        egress_allow_ports=f"80,443,{receiver.port},{other.port}",
        notify_max_attempts=1,
    )
    srv = start_server(settings)
    try:
        receiver.redirects["/stay"] = (307, other.http_url("/landed"))
        c = srv.admin()
        made = create(c, name="stay", url=receiver.url("/stay") + "?redirect=no")
        mid = c.post("/api/notify/test", json={"channel_id": made["id"]}).json()["message_id"]
        d = final_delivery(c, mid)
        assert d["status"] == "failed"
        assert other.requests == [] and other.accepted == 0
    finally:
        srv.stop()
        other.close()
