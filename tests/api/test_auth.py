"""Login, sessions, CSRF, rate limits and personal access tokens, over HTTP."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from lattice.store.clock import now_iso
from lattice.store.tables import api_tokens
from tests.conftest import ADMIN_PASSWORD, LiveServer


def login(live: LiveServer, password: str = ADMIN_PASSWORD) -> tuple[httpx.Client, str]:
    client = live.client()
    r = client.post("/api/login", json={"username": "admin", "password": password})
    assert r.status_code == 200, r.text
    return client, r.json()["csrf_token"]


def test_login_sets_strict_httponly_cookie_and_returns_csrf(live: LiveServer) -> None:
    client = live.client()
    r = client.post("/api/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert len(r.json()["csrf_token"]) >= 32
    me = client.get("/api/me")
    assert me.json() == {"user": "admin", "scopes": ["*"], "via": "session", "token_id": None}


def test_wrong_password_and_unknown_user_answer_the_same(live: LiveServer) -> None:
    client = live.client()
    a = client.post("/api/login", json={"username": "admin", "password": "wrong-password-x"})
    b = client.post("/api/login", json={"username": "nobody", "password": "wrong-password-x"})
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json()


def test_unknown_user_still_pays_for_a_hash(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown users, malformed names and wrong passwords all run exactly one
    argon2 verification, so response time does not reveal which names exist."""
    auth = live.container.auth
    verified: list[str] = []
    real = auth._verify

    def spy(password_hash: str, password: str) -> bool:
        verified.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(auth, "_verify", spy)
    client = live.client()
    for username in ("ghost", "NOT A VALID NAME", "admin"):
        r = client.post("/api/login", json={"username": username, "password": "x" * 20})
        assert r.status_code == 401
    assert len(verified) == 3
    assert all(h.startswith("$argon2id$") for h in verified)
    assert verified[0] == verified[1] != verified[2]  # the dummy hash, then admin's


def test_cookie_mutation_requires_csrf_token(live: LiveServer) -> None:
    client, csrf = login(live)
    body = {"name": "t", "scopes": ["kv:read"]}
    missing = client.post("/api/tokens", json=body)
    assert missing.status_code == 403 and "CSRF" in missing.json()["error"]
    wrong = client.post("/api/tokens", json=body, headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    ok = client.post("/api/tokens", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
    assert client.get("/api/tokens").status_code == 200  # safe method: no CSRF needed


def test_logout_ends_the_session(live: LiveServer) -> None:
    client, csrf = login(live)
    cookie = client.cookies.get("lattice_session")
    assert client.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    replay = live.client(cookies={"lattice_session": cookie})
    assert replay.get("/api/me").status_code == 401


def test_login_rate_limit_per_user(live: LiveServer) -> None:
    client = live.client()
    for _ in range(5):
        r = client.post("/api/login", json={"username": "admin", "password": "bad-password-1"})
        assert r.status_code == 401
    blocked = client.post("/api/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1
    live.container.host_audit.flush()  # refusals a flood repeats are written behind, folded
    audit = live.admin().get("/api/audit", params={"action": "auth.login", "decision": "deny"})
    reasons = [e["reason"] for e in audit.json()["events"]]
    assert "rate limited" in reasons and reasons.count("bad credentials") == 5


def test_login_rate_limit_per_address_across_users(live: LiveServer) -> None:
    client = live.client()
    codes = [
        client.post(
            "/api/login", json={"username": f"u{i}", "password": "bad-password-1"}
        ).status_code
        for i in range(21)
    ]
    assert codes[:20] == [401] * 20 and codes[20] == 429


def test_login_body_is_strict(live: LiveServer) -> None:
    client = live.client()
    extra = client.post("/api/login", json={"username": "a", "password": "b", "admin": True})
    assert extra.status_code == 422 and "admin" in extra.json()["error"]
    wrong_type = client.post("/api/login", json={"username": 1, "password": "b"})
    assert wrong_type.status_code == 422
    broken = client.post(
        "/api/login", content=b'{"username": "a",', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"] == "malformed JSON body"


def test_token_lifecycle(live: LiveServer) -> None:
    admin = live.admin()
    r = admin.post("/api/tokens", json={"name": "ci", "scopes": ["kv:read"], "expires_in_days": 7})
    assert r.status_code == 201
    created = r.json()
    token = created["token"]
    assert token.startswith("lat_") and created["scopes"] == ["kv:read"]
    listed = admin.get("/api/tokens").json()["tokens"]
    assert any(t["id"] == created["id"] for t in listed)
    assert token not in admin.get("/api/tokens").text
    user = live.client(token)
    assert user.get("/api/me").json()["scopes"] == ["kv:read"]
    assert admin.delete(f"/api/tokens/{created['id']}").status_code == 200
    revoked = user.get("/api/me")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]
    assert admin.delete(f"/api/tokens/{created['id']}").status_code == 404


def test_expired_token_is_refused(live: LiveServer) -> None:
    token = live.token("kv:read")
    token_id = token.split("_")[1]
    with live.container.db.write() as conn:
        conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == token_id)
            .values(expires_at="2000-01-01T00:00:00.000000Z")
        )
    r = live.client(token).get("/api/me")
    assert r.status_code == 401 and "expired" in r.json()["error"]


def test_token_cannot_hold_scope_its_user_lacks(live: LiveServer) -> None:
    live.container.auth.create_user("ops", "ops-password-123", ["kv:read", "kv:write"])
    ops_token = live.token("kv:read", "kv:write", user="ops")
    ops = live.client(ops_token)
    ok = ops.post("/api/tokens", json={"name": "narrow", "scopes": ["kv:read"]})
    assert ok.status_code == 201
    escalate = ops.post("/api/tokens", json={"name": "wide", "scopes": ["audit:read"]})
    assert escalate.status_code == 400 and "audit:read" in escalate.json()["error"]
    star = ops.post("/api/tokens", json={"name": "star", "scopes": ["*"]})
    assert star.status_code == 400
    unknown = ops.post("/api/tokens", json={"name": "x", "scopes": ["root:all"]})
    assert unknown.status_code == 400 and "root:all" in unknown.json()["error"]


def test_a_narrow_token_cannot_mint_a_wider_one(live: LiveServer) -> None:
    narrow = live.client(live.token("kv:read"))
    r = narrow.post("/api/tokens", json={"name": "wider", "scopes": ["kv:write"]})
    assert r.status_code == 400 and "kv:write" in r.json()["error"]


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic abc", "Bearer lat_short", "Bearer lat_aaaaaaaaaaaa_" + "A" * 43, "Token x"],
)
def test_bad_bearer_credentials_are_401(live: LiveServer, header: str) -> None:
    r = live.client().get("/api/me", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json()["error"]


def test_token_events_are_audited_without_the_secret(live: LiveServer) -> None:
    admin = live.admin()
    token = admin.post("/api/tokens", json={"name": "a", "scopes": ["kv:read"]}).json()
    admin.delete(f"/api/tokens/{token['id']}")
    events = admin.get("/api/audit", params={"action": "token."}).json()["events"]
    actions = {e["action"] for e in events}
    assert {"token.create", "token.revoke"} <= actions
    assert token["token"] not in admin.get("/api/audit").text


def _expire_in(live: LiveServer, token: str, stamp: str) -> None:
    with live.container.db.write() as conn:
        conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == token.split("_")[1])
            .values(expires_at=stamp)
        )


def test_a_token_never_mints_a_token_that_outlives_it(live: LiveServer) -> None:
    parent = live.token("kv:read")
    _expire_in(live, parent, now_iso(timedelta(hours=20)))
    limit = live.client(parent).get("/api/tokens").json()["tokens"][0]["expires_at"]
    client = live.client(parent)
    never = client.post("/api/tokens", json={"name": "forever", "scopes": ["kv:read"]})
    assert never.status_code == 201 and never.json()["expires_at"] == limit
    later = client.post(
        "/api/tokens", json={"name": "later", "scopes": ["kv:read"], "expires_in_days": 2}
    )
    assert later.status_code == 400 and limit in later.json()["error"]
    assert later.json()["detail"] == {"max_expires_at": limit}
    # the inherited child cannot launder the limit either
    child = live.client(never.json()["token"])
    again = child.post("/api/tokens", json={"name": "grandchild", "scopes": ["kv:read"]})
    assert again.status_code == 201 and again.json()["expires_at"] == limit
    # a session is not bound by any token
    session, csrf = login(live)
    free = session.post(
        "/api/tokens", json={"name": "s", "scopes": ["kv:read"]}, headers={"X-CSRF-Token": csrf}
    )
    assert free.status_code == 201 and free.json()["expires_at"] is None


def test_a_token_manages_only_tokens_no_broader_than_itself(live: LiveServer) -> None:
    star = live.token("*", name="star")
    wide = live.token("kv:read", "kv:write", name="wide")
    narrow = live.token("kv:read", name="narrow")
    peer = live.token("kv:read", name="peer")
    ids = {name: t.split("_")[1] for name, t in
           {"star": star, "wide": wide, "narrow": narrow, "peer": peer}.items()}  # fmt: skip
    client = live.client(narrow)
    listed = {t["id"] for t in client.get("/api/tokens").json()["tokens"]}
    assert listed == {ids["narrow"], ids["peer"]}
    for broader in ("star", "wide"):
        r = client.delete(f"/api/tokens/{ids[broader]}")
        assert r.status_code == 403 and "password session" in r.json()["error"], r.text
    assert live.client(star).get("/api/me").status_code == 200  # still alive
    assert live.client(wide).get("/api/me").status_code == 200
    assert client.delete(f"/api/tokens/{ids['peer']}").status_code == 200
    assert client.delete(f"/api/tokens/{ids['narrow']}").status_code == 200  # itself
    assert live.client(narrow).get("/api/me").status_code == 401
    # the wide token sees the narrow ones, the * token sees everything
    assert {t["id"] for t in live.client(wide).get("/api/tokens").json()["tokens"]} == {
        ids["wide"], ids["narrow"], ids["peer"]}  # fmt: skip
    everything = {t["id"] for t in live.client(star).get("/api/tokens").json()["tokens"]}
    assert set(ids.values()) <= everything
    # a session manages every token of its user
    session, csrf = login(live)
    r = session.delete(f"/api/tokens/{ids['star']}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    denied = live.admin().get("/api/audit", params={"action": "token.revoke", "decision": "deny"})
    assert len(denied.json()["events"]) == 2
