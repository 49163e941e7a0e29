"""Notification fanout: outbox, worker, retries, rate limits, egress pre-check, masking.

Real Apprise against a real local JSON webhook (``Receiver``), on SQLite and
PostgreSQL.  Every wait is bounded by a deadline.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from lattice.core.audit import AuditLog, AuditQuery
from lattice.core.secrets import SecretBox
from lattice.errors import (
    CapabilityDenied,
    NotFound,
    SecretError,
    ValidationFailed,
)
from lattice.plugins.broker import Broker
from lattice.plugins.host import HostServices
from lattice.plugins.loader import load_bundle
from lattice.plugins.ratelimits import HostRateLimits
from lattice.plugins.trust import TrustPolicy, Verifier
from lattice.services.egress_policy import EgressPolicy
from lattice.services.kv import SqlKV
from lattice.services.logs import SqlPluginLogs
from lattice.services.notify import NotifyService, check_tags
from lattice.services.notify_apprise import SCRUBBER, parse_channel_url
from lattice.services.notify_store import NotifyStore
from lattice.services.notify_worker import backoff, check_destinations
from lattice.store.clock import from_iso, utcnow
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from lattice.store.tables import notify_channels, notify_deliveries, notify_messages
from tests.plugins.bundles import make_bundle, make_publisher

T = TypeVar("T")

SECRET = "S3cretPassw0rd"
TG_TOKEN = "AAHsecretTOKENvalue"
TG_URL = f"tgram://123456789:{TG_TOKEN}/123/"
PATH_TOKEN = "PathT0kenSecret"
QUERY_SECRET = "QueryS3cretValue"


# -- a local JSON webhook -------------------------------------------------------


class Receiver:
    """Threaded HTTP server recording requests; per-path scripted 500s, hangs, redirects."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}  # path -> how many more 500s to answer
        self.hang: set[str] = set()  # paths that sleep (up to 30 s) before answering
        self.redirects: dict[str, tuple[int, str]] = {}  # path -> (status, location)
        self.release = threading.Event()
        self.arrived = threading.Event()  # set when any request has been read
        self.lock = threading.Lock()
        self.accepted = 0  # TCP connections accepted, whether or not a request followed
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(size)
                path = self.path.split("?", 1)[0]
                owner.arrived.set()
                if path in owner.hang:
                    owner.release.wait(30)
                redirect = owner.redirects.get(path)
                with owner.lock:
                    failing = owner.fail.get(path, 0) > 0
                    if failing:
                        owner.fail[path] -= 1
                    status = redirect[0] if redirect else 500 if failing else 200
                    owner.requests.append(
                        {
                            "path": path,
                            "method": self.command,
                            "json": json.loads(raw or b"{}"),
                            "auth": self.headers.get("authorization"),
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "status": status,
                            "at": time.monotonic(),
                        }
                    )
                self.send_response(status)
                if redirect:
                    self.send_header("location", redirect[1])
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_PUT = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def get_request(self) -> Any:
                with owner.lock:
                    owner.accepted += 1
                return super().get_request()

        self.server = Server((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = host
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", *, userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"json://{at}{self.host}:{self.port}{path}"

    def http_url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def ok(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path and r["status"] == 200]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def eventually(check: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)


# -- fixtures ---------------------------------------------------------------------


class Env:
    def __init__(self, db: Database, receiver: Receiver) -> None:
        self.db = db
        self.receiver = receiver
        self.audit = AuditLog(db)
        self.box = SecretBox(os.urandom(32))
        self.services: list[NotifyService] = []

    def service(
        self, *, open_loopback: bool = True, ports: str | None = None, **kw: Any
    ) -> NotifyService:
        policy = EgressPolicy.from_settings(
            allow_cidrs="127.0.0.1/32" if open_loopback else "",
            allow_ports=ports or f"80,443,{self.receiver.port}",
        )
        kw.setdefault("retry_base_seconds", 0.05)
        kw.setdefault("timeout_seconds", 5.0)
        svc = NotifyService(NotifyStore(self.db), self.box, self.audit, egress_policy=policy, **kw)
        self.services.append(svc)
        return svc

    def channel(self, svc: NotifyService, name: str, path: str, **kw: Any) -> int:
        made = svc.create_channel(name=name, url=self.receiver.url(path), actor="tester", **kw)
        return int(made["id"])

    def deliveries(self, svc: NotifyService, **filters: Any) -> list[dict[str, Any]]:
        return svc.deliveries(limit=500, **filters)[0]

    def delivery(self, svc: NotifyService, message_id: int) -> dict[str, Any]:
        (only,) = self.deliveries(svc, message_id=message_id)
        return only

    def events(self, prefix: str) -> list[Any]:
        return self.audit.query(AuditQuery(action_prefix=prefix, limit=500, descending=False))[0]


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    db = Database(db_url)
    upgrade(db)
    receiver = Receiver()
    e = Env(db, receiver)
    try:
        yield e
    finally:
        for svc in e.services:
            svc.close()
        receiver.close()
        db.dispose()


def _final(env: Env, svc: NotifyService, message_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        d = env.delivery(svc, message_id)
        return d if d["status"] != "pending" else None

    return eventually(done, what=f"delivery of message {message_id}")


# -- rules --------------------------------------------------------------------------


def test_tag_rules() -> None:
    assert check_tags(["ops", "a-b_c", "ops", "x" * 32]) == ["a-b_c", "ops", "x" * 32]
    for bad in (["Ops"], [""], ["x" * 33], ["sp ace"], ["ü"], [f"t{i}" for i in range(17)]):
        with pytest.raises(ValidationFailed, match="tag"):
            check_tags(bad)


def test_backoff_doubles_from_the_base_and_is_capped() -> None:
    assert [backoff(n, 2.0) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff(30, 2.0) == 300.0


def test_invalid_urls_are_refused_without_echoing_them() -> None:
    cases = {
        f"nosuchservice://user:{SECRET}@example.org/": "not a notification service",
        f"tgram://{SECRET}": "not a valid Telegram URL",
        f"json://user:{SECRET}@": "not a valid JSON URL",
        SECRET: "must be an Apprise URL",
    }
    for url, problem in cases.items():
        with pytest.raises(ValidationFailed, match=problem) as info:
            parse_channel_url(url)
        assert SECRET not in str(info.value) and SECRET not in json.dumps(info.value.detail)


def test_masked_urls_hide_passwords_and_tokens() -> None:
    target = parse_channel_url(f"json://user:{SECRET}@127.0.0.1:8080/hook")
    assert SECRET not in target.masked and target.masked.startswith("json://user:****@127.0.0.1")
    assert target.destinations == (("127.0.0.1", 8080),)
    tg = parse_channel_url(TG_URL)
    assert TG_TOKEN not in tg.masked and tg.service == "Telegram"
    assert tg.destinations == (("api.telegram.org", 443),)
    hook = parse_channel_url("jsons://hooks.example.org/api/webhooks/123/abcDEF123456")
    assert "abcDEF123456" not in hook.masked and "hooks.example.org" in hook.masked


def test_the_log_filter_scrubs_registered_secrets_and_url_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    SCRUBBER.remember(f"json://user:{SECRET}@127.0.0.1:9/hook")
    logger = logging.getLogger("apprise")
    from lattice.services.notify_apprise import install_log_filters

    install_log_filters()
    with caplog.at_level(logging.DEBUG, logger="apprise"):
        logger.error("Unparseable URL %s", f"json://user:{SECRET}@127.0.0.1:9/hook")
        logger.debug("token is %s", SECRET)
        logger.warning("other url gotify://host.example.org/AppTokenXyz123")
    assert SECRET not in caplog.text and "AppTokenXyz123" not in caplog.text
    assert "gotify://host.example.org/****" in caplog.text


# -- the outbox ---------------------------------------------------------------------


def test_send_writes_one_message_and_one_pending_delivery_per_matching_channel(
    env: Env,
) -> None:
    svc = env.service()  # worker not started: rows stay pending
    ops = env.channel(svc, "ops", "/ops", tags=["ops"])
    both = env.channel(svc, "both", "/both", tags=["ops", "dev"])
    dev = env.channel(svc, "dev", "/dev", tags=["dev"])
    off = env.channel(svc, "off", "/off", tags=["ops"], enabled=False)
    untagged = env.channel(svc, "plain", "/plain")

    tagged = svc.send(title="t", body="b", tags=["ops"], source="unit")
    chosen = {d["channel_id"] for d in env.deliveries(svc, message_id=tagged)}
    assert chosen == {ops, both}
    everyone = svc.send(title="t", body="b", tags=[], source="unit")
    chosen = {d["channel_id"] for d in env.deliveries(svc, message_id=everyone)}
    assert chosen == {ops, both, dev, untagged}
    assert off not in chosen
    nobody = svc.send(title="t", body="b", tags=["nomatch"], source="unit")
    assert env.deliveries(svc, message_id=nobody) == []
    with env.db.read() as conn:
        assert conn.execute(select(notify_messages.c.id)).all()  # the outbox keeps it
        statuses = {r.status for r in conn.execute(select(notify_deliveries.c.status)).all()}
    assert statuses == {"pending"}
    with pytest.raises(ValidationFailed, match="title or a body"):
        svc.send(title=" ", body="", tags=[], source="unit")
    with pytest.raises(ValidationFailed, match="tag"):
        svc.send(title="t", body="b", tags=["Bad Tag"], source="unit")


def test_channel_urls_are_encrypted_under_the_channel_id(env: Env) -> None:
    svc = env.service()
    url = env.receiver.url("/enc", userinfo=f"user:{SECRET}")
    made = svc.create_channel(name="enc", url=url, actor="tester")
    assert SECRET not in json.dumps(made) and "****" in made["url_masked"]
    with env.db.read() as conn:
        blob = conn.execute(
            select(notify_channels.c.url_encrypted).where(notify_channels.c.id == made["id"])
        ).scalar_one()
    assert SECRET.encode() not in bytes(blob)
    assert env.box.decrypt_text(bytes(blob), context=f"notify-channel:{made['id']}") == url
    with pytest.raises(SecretError):
        env.box.decrypt_text(bytes(blob), context="notify-channel:999")
    svc.update_channel(made["id"], {"name": "renamed"}, actor="tester")
    assert svc.get_channel(made["id"])["name"] == "renamed"
    with pytest.raises(NotFound):
        svc.update_channel(12345, {"name": "x"}, actor="tester")
    details = json.dumps([e.detail for e in env.events("notify.channel")])
    assert SECRET not in details and "renamed" in details


# -- the worker ----------------------------------------------------------------------


def test_delivers_title_and_body_and_audits_the_outcome(env: Env) -> None:
    svc = env.service()
    svc.start()
    cid = env.channel(svc, "hook", "/hook")
    mid = svc.send(title="Disk full", body="node-1 /var at 99%", tags=[], source="unit")
    got = eventually(lambda: env.receiver.ok("/hook"), what="webhook call")
    assert got[0]["json"]["title"] == "Disk full"
    assert got[0]["json"]["message"] == "node-1 /var at 99%"
    d = _final(env, svc, mid)
    assert d["status"] == "delivered" and d["attempts"] == 1 and d["delivered_at"]
    assert d["channel_id"] == cid and d["title"] == "Disk full" and d["last_error"] is None
    ev = eventually(lambda: env.events("notify.delivery"))[0]
    assert ev.decision == "allow" and ev.detail["message_id"] == mid


def test_retries_with_backoff_until_delivered(env: Env) -> None:
    svc = env.service()
    svc.start()
    env.channel(svc, "flaky", "/flaky")
    env.receiver.fail["/flaky"] = 2
    mid = svc.send(title="t", body="b", tags=[], source="unit")
    d = _final(env, svc, mid)
    assert d["status"] == "delivered" and d["attempts"] == 3
    calls = [r for r in env.receiver.requests if r["path"] == "/flaky"]
    assert [r["status"] for r in calls] == [500, 500, 200]
    # second gap (2 x base) is not shorter than the first (1 x base)
    assert calls[2]["at"] - calls[1]["at"] >= 0.1 - 0.02


def test_gives_up_after_max_attempts_with_a_scrubbed_reason(env: Env) -> None:
    svc = env.service(max_attempts=3)
    svc.start()
    svc.create_channel(
        name="down",
        url=env.receiver.url("/down", userinfo=f"user:{SECRET}"),
        actor="tester",
    )
    env.receiver.fail["/down"] = 100
    mid = svc.send(title="t", body="b", tags=[], source="unit")
    d = _final(env, svc, mid)
    assert d["status"] == "failed" and d["attempts"] == 3
    # the reason names the failure (Apprise's text for the HTTP 500); digits in it
    # may be masked when another channel in this process used them in a secret
    assert "Internal server error" in d["last_error"] and SECRET not in d["last_error"]
    ev = eventually(lambda: env.events("notify.delivery"))[0]
    assert ev.decision == "deny" and ev.reason == d["last_error"]


def test_egress_precheck_refuses_loopback_unless_opened(env: Env) -> None:
    svc = env.service(open_loopback=False)
    svc.start()
    env.channel(svc, "local", "/local")
    mid = svc.send(title="t", body="b", tags=[], source="unit")
    d = _final(env, svc, mid)
    assert d["status"] == "failed" and d["attempts"] == 1
    assert d["last_error"] == "egress blocked: blocked address 127.0.0.1"
    assert env.receiver.requests == []
    assert env.events("notify.delivery")[0].decision == "deny"


def test_egress_precheck_refuses_a_port_the_operator_did_not_allow(env: Env) -> None:
    svc = env.service(ports="80,443")
    svc.start()
    env.channel(svc, "port", "/port")
    d = _final(env, svc, svc.send(title="t", body="b", tags=[], source="unit"))
    assert d["status"] == "failed"
    assert d["last_error"] == f"egress blocked: port {env.receiver.port} not allowed"
    assert env.receiver.requests == []


def test_destinations_are_checked_per_address_and_refused_when_unknown() -> None:
    policy = EgressPolicy.from_settings(allow_cidrs="", allow_ports="80,443")

    class Fixed:
        def resolve(self, host: str, port: int) -> list[str]:
            return ["93.184.216.34", "10.0.0.5"]

    from lattice.errors import EgressBlocked

    with pytest.raises(EgressBlocked, match=r"blocked address 10\.0\.0\.5"):
        check_destinations([("mixed.example.org", 443)], policy, Fixed())
    with pytest.raises(EgressBlocked, match="destination cannot be checked"):
        check_destinations([], policy, Fixed())


def test_a_hanging_channel_does_not_delay_a_healthy_one(env: Env) -> None:
    svc = env.service(timeout_seconds=3.0)
    svc.start()
    env.receiver.hang.add("/slow")
    env.channel(svc, "slow", "/slow")
    env.channel(svc, "fast", "/fast")
    svc.send(title="first", body="b", tags=[], source="unit")
    time.sleep(0.3)  # the slow attempt is now in flight
    started = time.monotonic()
    svc.send(title="second", body="b", tags=[], source="unit")
    eventually(lambda: len(env.receiver.ok("/fast")) == 2, timeout=2.0, what="healthy channel")
    assert time.monotonic() - started < 2.0
    env.receiver.release.set()


def test_rate_limited_deliveries_are_rescheduled_not_failed(env: Env) -> None:
    svc = env.service()
    svc.start()
    env.channel(svc, "slowrate", "/rate", rate_per_minute=1)
    first = svc.send(title="one", body="b", tags=[], source="unit")
    second = svc.send(title="two", body="b", tags=[], source="unit")
    assert _final(env, svc, first)["status"] == "delivered"

    def rescheduled() -> dict[str, Any] | None:
        d = env.delivery(svc, second)
        later = from_iso(d["next_attempt_at"]).timestamp() - utcnow().timestamp()
        return d if later > 30 else None

    d = eventually(rescheduled, what="rate-limit reschedule")
    assert d["status"] == "pending" and d["attempts"] == 0
    assert len(env.receiver.ok("/rate")) == 1


def test_a_new_worker_resumes_pending_deliveries(env: Env) -> None:
    first = env.service()  # never started: it only writes the outbox
    env.channel(first, "resume", "/resume")
    mid = first.send(title="queued", body="while down", tags=[], source="unit")
    first.close()
    second = env.service()
    second.start()
    got = eventually(lambda: env.receiver.ok("/resume"), what="resumed delivery")
    assert got[0]["json"]["title"] == "queued"
    assert _final(env, second, mid)["status"] == "delivered"


def test_deleting_a_channel_fails_its_pending_deliveries(env: Env) -> None:
    svc = env.service()
    cid = env.channel(svc, "gone", "/gone")
    mid = svc.send(title="t", body="b", tags=[], source="unit")
    svc.delete_channel(cid, actor="tester")
    d = env.delivery(svc, mid)
    assert d["status"] == "failed" and d["last_error"] == "channel deleted"
    assert d["channel_id"] is None and d["channel_name"] == "gone"
    assert d["channel_url_masked"] is None


def test_no_secret_reaches_a_log_line(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="apprise")
    caplog.set_level(logging.DEBUG, logger="lattice")
    caplog.set_level(logging.DEBUG, logger="urllib3")
    svc = env.service(max_attempts=2)
    svc.start()
    with pytest.raises(ValidationFailed):
        svc.create_channel(name="bad", url=f"json://user:{SECRET}@", actor="tester")
    with pytest.raises(ValidationFailed):
        svc.create_channel(name="badtg", url=f"tgram://{TG_TOKEN}", actor="tester")
    # Apprise (DEBUG) and urllib3 print request paths and queries: tokens there too
    path = f"/logged/{PATH_TOKEN}"
    url = env.receiver.url(path, userinfo=f"user:{SECRET}") + f"?-q={QUERY_SECRET}"
    made = svc.create_channel(name="logged", url=url, actor="tester")
    assert PATH_TOKEN not in made["url_masked"] and QUERY_SECRET not in made["url_masked"]
    env.receiver.fail[path] = 1
    mid = svc.send(title="t", body="b", tags=[], source="unit")
    assert _final(env, svc, mid)["status"] == "delivered"
    auth = env.receiver.ok(path)[0]["auth"]
    assert base64.b64decode(auth.split()[1]).decode() == f"user:{SECRET}"  # it was used
    assert caplog.records, "expected Apprise to log something at DEBUG"
    for secret in (SECRET, TG_TOKEN, PATH_TOKEN, QUERY_SECRET):
        assert secret not in caplog.text, secret


# -- the broker path --------------------------------------------------------------------


def test_broker_notify_send_lands_in_the_outbox_and_is_rate_limited(
    env: Env, tmp_path: Path
) -> None:
    svc = env.service()
    env.channel(svc, "plugins", "/plugins", tags=["alerts"])
    pub = make_publisher("acme.dev")
    verifier = Verifier(TrustPolicy(trusted_publishers={pub.id: base64.b64decode(pub.public_b64)}))
    bundle = make_bundle(
        tmp_path, id="p.notify", capabilities=("notify:send",), key=pub.key, publisher=pub.id
    )
    host = HostServices(
        kv=SqlKV(env.db, max_value_bytes=1024), logs=SqlPluginLogs(env.db), notify=svc
    )
    broker = Broker(load_bundle(bundle, verifier), host, audit=env.audit, limits=HostRateLimits())
    for i in range(10):
        broker.notify_send(f"alert {i}", "body", ["alerts"])
    with pytest.raises(CapabilityDenied, match="rate limited"):
        broker.notify_send("alert 11", "body", ["alerts"])
    rows = env.deliveries(svc)
    assert len(rows) == 10 and {r["source"] for r in rows} == {"plugin:p.notify"}
    denied = [e for e in env.events("plugin.host.notify.send") if e.decision == "deny"]
    assert [e.reason for e in denied] == ["rate limited"]
    # a bad tag is the plugin's problem: denied and audited, never a server error
    fresh = Broker(load_bundle(bundle, verifier), host, audit=env.audit, limits=HostRateLimits())
    with pytest.raises(ValidationFailed, match="tag"):
        fresh.notify_send("x", "y", ["Not A Tag"])


# -- notification HTTP goes through the egress guard ----------------------------------


@pytest.fixture
def other(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    """A second loopback server; ``indirect`` parametrisation picks its address."""
    r = Receiver(getattr(request, "param", "127.0.0.1"))
    try:
        yield r
    finally:
        r.close()


@pytest.mark.parametrize(
    ("other", "status", "reason"),
    [
        ("127.0.0.1", 302, "port {port} not allowed"),  # opened address, closed port
        ("127.0.0.1", 307, "port {port} not allowed"),
        ("127.0.0.2", 307, "blocked address 127.0.0.2"),  # address never opened
    ],
    indirect=["other"],
)
def test_a_redirect_to_a_place_the_policy_never_opened_fails_the_delivery(
    env: Env, other: Receiver, status: int, reason: str
) -> None:
    # only the first server is open: 127.0.0.1/32 and its port
    ports = f"80,443,{env.receiver.port}" + (f",{other.port}" if other.host != "127.0.0.1" else "")
    svc = env.service(ports=ports)
    svc.start()
    env.receiver.redirects["/hop"] = (status, other.http_url("/landed"))
    env.channel(svc, "hop", "/hop")
    d = _final(env, svc, svc.send(title="t", body="b", tags=[], source="unit"))
    assert d["status"] == "failed" and d["attempts"] == 1
    assert d["last_error"] == "egress blocked: " + reason.format(port=other.port)
    assert [r["path"] for r in env.receiver.requests] == ["/hop"]
    assert other.requests == [] and other.accepted == 0
    ev = eventually(lambda: env.events("notify.delivery"))[0]
    assert ev.decision == "deny" and ev.reason == d["last_error"]


def test_redirects_inside_the_policy_are_followed_with_only_safe_headers_crossing(
    env: Env, other: Receiver
) -> None:
    svc = env.service(ports=f"80,443,{env.receiver.port},{other.port}")
    svc.start()
    # same origin first (credentials kept), then another origin (credentials dropped)
    env.receiver.redirects["/first"] = (307, "/second")
    env.receiver.redirects["/second"] = (307, other.http_url("/third"))
    url = env.receiver.url("/first", userinfo=f"user:{SECRET}") + "?+X-Api-Key=K3yValue99"
    svc.create_channel(name="chain", url=url, actor="tester")
    d = _final(env, svc, svc.send(title="chained", body="b", tags=[], source="unit"))
    assert d["status"] == "delivered"
    first, second = env.receiver.requests
    for hop in (first, second):
        assert hop["auth"] and hop["headers"]["x-api-key"] == "K3yValue99"
    (third,) = other.requests
    assert third["method"] == "POST" and third["json"]["title"] == "chained"
    assert third["auth"] is None and "x-api-key" not in third["headers"]
    assert third["headers"]["content-type"] == "application/json"


def test_requests_outside_a_delivery_do_not_go_through_the_guard(env: Env, other: Receiver) -> None:
    import requests

    svc = env.service()  # the policy does not open other.port
    svc.start()
    env.receiver.hang.add("/slow")
    env.channel(svc, "slow", "/slow")
    mid = svc.send(title="t", body="b", tags=[], source="unit")
    assert env.receiver.arrived.wait(10), "the delivery never arrived"
    # a delivery is in flight in a worker thread; this thread's requests are its own
    r = requests.post(other.http_url("/plain"), json={"x": 1}, timeout=10)
    assert r.status_code == 200 and other.requests[0]["json"] == {"x": 1}
    env.receiver.release.set()
    assert _final(env, svc, mid)["status"] == "delivered"


def test_a_channel_that_turns_tls_verification_off_gets_its_own_guard() -> None:
    from lattice.services.egress import EgressGuard
    from lattice.services.notify_http import GuardedHTTP

    policy = EgressPolicy.from_settings(allow_cidrs="", allow_ports="443")
    made: list[EgressGuard] = []

    def insecure() -> EgressGuard:
        made.append(EgressGuard(policy, verify=False))
        return made[-1]

    with EgressGuard(policy) as main:
        http = GuardedHTTP(main, insecure=insecure)
        assert http.guard(verify=True) is main and made == []
        first = http.guard(verify=False)
        assert first is not main and http.guard(verify=False) is first and made == [first]
        http.close()


def test_an_unreachable_allowed_channel_is_retried_not_reported_as_blocked(env: Env) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    svc = env.service(ports=f"80,443,{port}", max_attempts=2)
    svc.start()
    svc.create_channel(name="down", url=f"json://127.0.0.1:{port}/x", actor="tester")
    d = _final(env, svc, svc.send(title="t", body="b", tags=[], source="unit"))
    assert d["status"] == "failed" and d["attempts"] == 2
    assert not d["last_error"].startswith("egress blocked")
