"""Worker routes through the real HTTP server: templates, JS, limits, hostile workers."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

HELLO_JS = """
export default {
  async fetch(request, env, ctx) {
    return new Response("hello from js", {headers: {"content-type": "text/plain"}});
  }
};
"""

KV_JS = """
export default {
  async fetch(request, env) {
    const message = await env.CONFIG.get("message");
    return Response.json({message, method: request.method});
  }
};
"""

ROUTER_JS = """
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname.endsWith("/users")) return Response.json({users: ["ada", "linus"]});
    if (url.pathname.endsWith("/echo")) return new Response(url.searchParams.get("q") || "");
    return new Response("not found", {status: 404});
  }
};
"""


def deploy(live: LiveServer, name: str, **body: Any) -> httpx.Response:
    body.setdefault("public", True)
    body.setdefault("capabilities", ["worker:route", "kv:read"])
    return live.client(live.token("worker:deploy", "kv:read", "static:read")).put(
        f"/api/workers/{name}", json=body
    )


def test_seed_template_renders_path_and_kv(live: LiveServer) -> None:
    live.admin().put("/api/kv/default/message", content=b"world")
    r = deploy(live, "hello", kind="template", source="hello {{path}} {{kv:default/message}}")
    assert r.status_code == 200, r.text
    page = live.client().get("/w/hello/x")
    assert page.status_code == 200 and page.text == "hello /x world"
    assert page.headers["content-type"].startswith("text/plain")


def test_kv_without_kv_read_renders_empty(live: LiveServer) -> None:
    live.admin().put("/api/kv/default/message", content=b"world")
    r = deploy(
        live,
        "nokv",
        kind="template",
        source="[{{kv:default/message}}]",
        capabilities=["worker:route"],
    )
    assert r.status_code == 200
    assert live.client().get("/w/nokv/").text == "[]"


def test_template_injection_stays_literal(live: LiveServer) -> None:
    live.admin().put("/api/kv/default/evil", content=b"{{kv:default/secret}}")
    live.admin().put("/api/kv/default/secret", content=b"TOP-SECRET")
    live.admin().put("/api/kv/plugin:other/secret", content=b"PLUGIN-SECRET")
    deploy(
        live,
        "inj",
        kind="template",
        source="{{path}}|{{kv:default/evil}}|{{kv:plugin:other/secret}}",
    )
    page = live.client().get("/w/inj/{{kv:default/secret}}")
    assert page.status_code == 200
    assert "TOP-SECRET" not in page.text and "PLUGIN-SECRET" not in page.text
    assert page.text == "/{{kv:default/secret}}|{{kv:default/secret}}|"


@pytest.mark.parametrize(
    "source,primitive",
    [
        ("fetch('http://x')", "fetch("),
        ("fetch  ('http://x')", "fetch("),
        ("const r = require ('fs')", "require("),
        ("process.env.SECRET", "process.env"),
        ("exec('ls')", "exec("),
        ("os.system('ls')", "os."),
    ],
)
def test_blocked_primitives_are_refused(live: LiveServer, source: str, primitive: str) -> None:
    r = deploy(live, "bad", kind="template", source=source)
    assert r.status_code == 400 and primitive in r.json()["error"]
    assert live.client().get("/w/bad/").status_code == 404


def test_worker_capabilities_are_limited_to_the_worker_tier(live: LiveServer) -> None:
    r = deploy(
        live, "wide", kind="template", source="x", capabilities=["worker:route", "http:egress"]
    )
    assert r.status_code == 400 and "http:egress" in r.json()["error"]
    r = deploy(live, "noroute", kind="template", source="x", capabilities=["kv:read"])
    assert r.status_code == 400 and "worker:route" in r.json()["error"]
    r = deploy(
        live,
        "bind",
        kind="js",
        source=KV_JS,
        capabilities=["worker:route"],
        bindings={"CONFIG": {"kv": "default"}},
    )
    assert r.status_code == 400 and "kv:read" in r.json()["error"]


def test_operator_api_crud_scopes_and_audit(live: LiveServer) -> None:
    deployer = live.client(live.token("worker:deploy"))
    assert deploy(live, "crud", kind="template", source="v1").json()["revision"] == 1
    assert deploy(live, "crud", kind="template", source="v2").json()["revision"] == 2
    assert live.client().get("/w/crud/").text == "v2"
    assert any(w["name"] == "crud" for w in deployer.get("/api/workers").json()["workers"])
    assert deployer.get("/api/workers/crud").json()["source"] == "v2"
    assert deployer.delete("/api/workers/crud").status_code == 200
    assert live.client().get("/w/crud/").status_code == 404
    assert deployer.delete("/api/workers/crud").status_code == 404
    other = live.client(live.token("kv:read"))
    assert other.put("/api/workers/x", json={}).status_code == 403
    events = live.admin().get("/api/audit", params={"action": "worker."}).json()["events"]
    assert {e["action"] for e in events} == {"worker.upsert", "worker.delete"}
    bad_name = deploy(live, "Bad_Name", kind="template", source="x")
    assert bad_name.status_code == 400


def test_non_public_worker_needs_an_authenticated_caller(live: LiveServer) -> None:
    deploy(live, "private", kind="template", source="secret page", public=False)
    assert live.client().get("/w/private/").status_code == 401
    assert live.client(live.token("kv:read")).get("/w/private/").text == "secret page"


def test_cloudflare_style_hello_world(live: LiveServer) -> None:
    assert (
        deploy(live, "cf", kind="js", source=HELLO_JS, capabilities=["worker:route"]).status_code
        == 200
    )
    r = live.client().get("/w/cf/anything")
    assert r.status_code == 200 and r.text == "hello from js"


def test_json_api_worker_reads_a_kv_binding(live: LiveServer) -> None:
    live.admin().put("/api/kv/default/message", content=b"from kv")
    r = deploy(live, "api", kind="js", source=KV_JS, bindings={"CONFIG": {"kv": "default"}})
    assert r.status_code == 200, r.text
    resp = live.client().post("/w/api/")
    assert resp.json() == {"message": "from kv", "method": "POST"}
    assert resp.headers["content-type"].startswith("application/json")


def test_router_worker_on_url_pathname(live: LiveServer) -> None:
    deploy(live, "router", kind="js", source=ROUTER_JS, capabilities=["worker:route"])
    client = live.client()
    assert client.get("/w/router/users").json() == {"users": ["ada", "linus"]}
    assert client.get("/w/router/echo", params={"q": "héllo"}).text == "héllo"
    assert client.get("/w/router/nope").status_code == 404


def test_js_source_that_does_not_compile_is_refused_and_nothing_is_stored(live: LiveServer) -> None:
    r = deploy(live, "broken", kind="js", source="export default {", capabilities=["worker:route"])
    assert r.status_code == 400
    assert live.client(live.token("worker:deploy")).get("/api/workers/broken").status_code == 404


@pytest.mark.slow
def test_infinite_loop_answers_503_and_the_next_request_works(live: LiveServer) -> None:
    loop_js = """
    export default { async fetch(request) {
      if (new URL(request.url).pathname.endsWith("/spin")) { while (true) {} }
      return new Response("ok");
    } };
    """
    deploy(live, "spin", kind="js", source=loop_js, capabilities=["worker:route"])
    client = live.client()
    r = client.get("/w/spin/spin")
    assert r.status_code == 503
    assert client.get("/w/spin/fine").text == "ok"
    assert client.get("/healthz").status_code == 200


@pytest.mark.slow
def test_memory_bomb_recycles_the_isolate(live: LiveServer) -> None:
    bomb_js = """
    export default { async fetch(request) {
      if (new URL(request.url).pathname.endsWith("/bomb")) {
        const hoard = [];
        while (true) { hoard.push("x".repeat(1 << 20) + hoard.length); }
      }
      return new Response("alive");
    } };
    """
    deploy(live, "bomb", kind="js", source=bomb_js, capabilities=["worker:route"])
    client = live.client()
    r = client.get("/w/bomb/bomb")
    assert r.status_code in (500, 503)
    assert client.get("/w/bomb/ok").text == "alive"


def test_fifty_parallel_requests_all_answer_correctly(live: LiveServer) -> None:
    echo_js = """
    export default { async fetch(request) {
      return new Response(new URL(request.url).searchParams.get("n"));
    } };
    """
    deploy(live, "echo", kind="js", source=echo_js, capabilities=["worker:route"])

    def one(n: int) -> tuple[int, str]:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            r = c.get("/w/echo/", params={"n": str(n)})
            return r.status_code, r.text

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [(200, str(n)) for n in range(50)]


@pytest.mark.slow
def test_redeploy_under_load_loses_no_request(live: LiveServer) -> None:
    def js(version: str) -> str:
        return f'export default {{ async fetch() {{ return new Response("{version}"); }} }};'

    deploy(live, "swap", kind="js", source=js("v0"), capabilities=["worker:route"])
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def hammer() -> None:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            while not stop.is_set():
                r = c.get("/w/swap/")
                seen.append((r.status_code, r.text))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for v in range(1, 6):
        assert (
            deploy(
                live, "swap", kind="js", source=js(f"v{v}"), capabilities=["worker:route"]
            ).status_code
            == 200
        )
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert seen and all(code == 200 for code, _ in seen), {c for c, _ in seen}
    assert {text for _, text in seen} <= {f"v{v}" for v in range(6)}
    assert seen[-1][1] == "v5"


def test_misbehaving_worker_does_not_block_the_api(live: LiveServer) -> None:
    loop_js = "export default { async fetch() { while (true) {} } };"
    deploy(live, "hog", kind="js", source=loop_js, capabilities=["worker:route"])
    deploy(live, "fine", kind="template", source="fine")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        hogs = [pool.submit(live.client().get, "/w/hog/") for _ in range(3)]
        t0 = time.monotonic()
        assert live.client().get("/w/fine/").text == "fine"
        assert live.client().get("/healthz").status_code == 200
        assert time.monotonic() - t0 < 5.0  # generous: the hogs run niced, in their own processes
        assert all(f.result().status_code == 503 for f in hogs)


def test_workers_survive_a_restart(settings_factory: Any) -> None:
    from tests.conftest import start_server

    settings = settings_factory()
    first = start_server(settings)
    try:
        deploy(first, "keep", kind="template", source="still here")
    finally:
        first.stop()
    second = start_server(settings)
    try:
        assert second.client().get("/w/keep/").text == "still here"
    finally:
        second.stop()


def test_console_output_and_stacks_reach_the_worker_log(live: LiveServer) -> None:
    source = """
    export default { async fetch(request) {
      console.log("serving", new URL(request.url).pathname);
      if (request.method === "POST") throw new Error("boom at /internal/place");
      return new Response("ok");
    } };
    """
    deploy(live, "chatty", kind="js", source=source, capabilities=["worker:route"])
    client = live.client()
    assert client.get("/w/chatty/a").text == "ok"
    failed = client.post("/w/chatty/a")
    assert failed.status_code == 500 and "boom" not in failed.text
    deployer = live.client(live.token("worker:deploy"))
    deadline = time.monotonic() + 5
    messages: list[str] = []
    while time.monotonic() < deadline:
        logs = deployer.get("/api/workers/chatty/logs").json()["logs"]
        messages = [line["message"] for line in logs]
        if any("boom" in m for m in messages):
            break
        time.sleep(0.05)
    assert any("serving /w/chatty/a" in m for m in messages), messages
    assert any("boom at /internal/place" in m for m in messages)
    assert deployer.get("/api/workers/ghost/logs").status_code == 404


def test_oversized_request_body_is_413_and_template_kind_change_serves(live: LiveServer) -> None:
    echo = "export default { async fetch(request) { return new Response(await request.text()); } };"
    deploy(live, "body", kind="js", source=echo, capabilities=["worker:route"])
    client = live.client()
    assert client.post("/w/body/", content=b"x" * 1000).text == "x" * 1000
    assert client.post("/w/body/", content=b"x" * (1024 * 1024 + 1)).status_code == 413
    deploy(live, "body", kind="template", source="now a template")
    assert client.post("/w/body/", content=b"ignored").text == "now a template"


def test_worker_pages_are_sandboxed_away_from_the_api_origin(live: LiveServer) -> None:
    source = """
    export default { async fetch() {
      const h = new Headers({"content-type": "text/html"});
      h.append("set-cookie", "lattice_session=stolen; Path=/");
      h.append("set-cookie", "theme=dark; Path=/w/page");
      return new Response("<script>document.title = 'page'</script>", {headers: h});
    } };
    """
    assert (
        deploy(live, "page", kind="js", source=source, capabilities=["worker:route"]).status_code
        == 200
    )
    r = live.client().get("/w/page/")
    assert r.status_code == 200
    assert "sandbox" in r.headers["content-security-policy"]
    assert "allow-same-origin" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    cookies = r.headers.get_list("set-cookie")
    assert cookies == ["theme=dark; Path=/w/page"]
