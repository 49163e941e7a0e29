"""The JS worker runtime on real V8: request flow, bindings, limits, isolation."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from lattice.errors import PayloadTooLarge, WorkerError, WorkerTimeout
from lattice.plugins.runners.js import JsLimits, JsWorker
from tests.runners.conftest import MemoryHost, WorkerFactory, get, text

HELLO = """
export default {
  async fetch(request, env, ctx) {
    return new Response("hi", { headers: { "content-type": "text/plain" } });
  },
};
"""

JSON_API = """
export default {
  async fetch(request, env) {
    const greeting = await env.CONFIG.get("greeting");
    const settings = await env.CONFIG.get("settings", "json");
    const missing = await env.CONFIG.get("nope");
    const page = await env.CONFIG.list({ prefix: "user:", limit: 2 });
    const rest = await env.CONFIG.list({ prefix: "user:", cursor: page.cursor });
    return Response.json({ greeting, settings, missing, page, rest }, { status: 201 });
  },
};
"""

ROUTER = """
const routes = {
  "/": () => new Response("home"),
  "/about": () => new Response("about us"),
};
export default {
  fetch(request) {
    const { pathname } = new URL(request.url);
    const route = routes[pathname];
    return route ? route() : new Response("not found: " + pathname, { status: 404 });
  },
};
"""

ECHO = """
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/json") return Response.json({ got: await request.json() });
    if (url.pathname === "/bytes") {
      const headers = { "content-type": "application/octet-stream" };
      return new Response(await request.arrayBuffer(), { headers });
    }
    return Response.json({
      method: request.method,
      url: request.url,
      agent: request.headers.get("User-Agent"),
      both: request.headers.get("x-multi"),
      body: await request.text(),
      q: url.searchParams.get("q"),
    });
  },
};
"""

SPIN = """
export default {
  async fetch(request, env) {
    const p = new URL(request.url).pathname;
    if (p === "/loop") { while (true) {} }
    if (p === "/after-await") { await null; while (true) {} }
    if (p === "/after-kv") { await env.CONFIG.get("k"); while (true) {} }
    if (p === "/bomb") { const a = []; while (true) a.push("x".repeat(1 << 16) + a.length); }
    return new Response("alive " + new URL(request.url).searchParams.get("i"));
  },
};
"""


# ---- Workers written for Cloudflare run unchanged ---------------------------------


async def test_hello_world(make_worker: WorkerFactory) -> None:
    worker = await make_worker(HELLO)
    response = await worker.handle(get("http://host/w/hello/"))
    assert response.status == 200
    assert response.headers == [("content-type", "text/plain")]
    assert response.body == b"hi"


async def test_json_api_reads_kv_binding(make_worker: WorkerFactory, host: MemoryHost) -> None:
    host.kv["default"].update(
        {
            "greeting": "héllo wörld",
            "settings": '{"theme": "dark"}',
            "user:1": "a",
            "user:2": "b",
            "user:3": "c",
            "other": "x",
        }
    )
    worker = await make_worker(JSON_API, bindings={"CONFIG": {"kv": "default"}})
    response = await worker.handle(get("http://host/w/api/"))
    assert response.status == 201
    assert ("content-type", "application/json") in response.headers
    assert json.loads(response.body) == {
        "greeting": "héllo wörld",
        "settings": {"theme": "dark"},
        "missing": None,
        "page": {
            "keys": [{"name": "user:1"}, {"name": "user:2"}],
            "list_complete": False,
            "cursor": "2",
        },
        "rest": {"keys": [{"name": "user:3"}], "list_complete": True},
    }
    assert ("kv_get", "default", "greeting") in host.calls


async def test_router_on_pathname_with_404(make_worker: WorkerFactory) -> None:
    worker = await make_worker(ROUTER)
    home = await worker.handle(get("http://host/"))
    about = await worker.handle(get("http://host/about?x=1"))
    missing = await worker.handle(get("http://host/nope"))
    assert (home.status, text(home)) == (200, "home")
    assert (about.status, text(about)) == (200, "about us")
    assert (missing.status, text(missing)) == (404, "not found: /nope")


async def test_request_method_headers_and_body_are_visible(make_worker: WorkerFactory) -> None:
    worker = await make_worker(ECHO)
    response = await worker.handle(
        get(
            "http://host/w/echo/path?q=a%20b",
            method="PUT",
            headers=[("User-Agent", "pytest"), ("X-Multi", "1"), ("x-multi", "2")],
            body="grüße".encode(),
        )
    )
    assert json.loads(response.body) == {
        "method": "PUT",
        "url": "http://host/w/echo/path?q=a%20b",
        "agent": "pytest",
        "both": "1, 2",
        "body": "grüße",
        "q": "a b",
    }
    posted = await worker.handle(get("http://host/json", method="POST", body=b'{"n": [1, 2]}'))
    assert json.loads(posted.body) == {"got": {"n": [1, 2]}}


async def test_binary_bodies_round_trip_exactly(make_worker: WorkerFactory) -> None:
    worker = await make_worker(ECHO)
    payload = bytes(range(256)) * 64 + b"\xff\xfe\x00"
    response = await worker.handle(get("http://host/bytes", method="POST", body=payload))
    assert response.body == payload
    assert ("content-type", "application/octet-stream") in response.headers


async def test_binary_response_built_in_js(make_worker: WorkerFactory) -> None:
    worker = await make_worker("""
export default {
  fetch() {
    const bytes = new Uint8Array(256).map((_, i) => i);
    return new Response(bytes.buffer, { headers: [["content-type", "image/x-test"]] });
  },
};""")
    response = await worker.handle(get("http://host/"))
    assert response.body == bytes(range(256))


async def test_static_binding_returns_a_response_or_null(
    make_worker: WorkerFactory, host: MemoryHost
) -> None:
    host.static["site"]["/index.html"] = (b"<h1>hi</h1>", "text/html; charset=utf-8")
    worker = await make_worker(
        """
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    const asset = await env.ASSETS.get(path);
    if (asset === null) return new Response("no asset", { status: 404 });
    return asset;
  },
};""",
        bindings={"ASSETS": {"static": "site"}},
    )
    found = await worker.handle(get("http://host/index.html"))
    assert (found.status, found.body) == (200, b"<h1>hi</h1>")
    assert found.headers == [("content-type", "text/html; charset=utf-8")]
    missing = await worker.handle(get("http://host/missing.css"))
    assert (missing.status, text(missing)) == (404, "no asset")


# ---- what the isolate does not have ---------------------------------------------

FORBIDDEN = [
    "fetch",
    "require",
    "process",
    "module",
    "exports",
    "setTimeout",
    "setInterval",
    "clearTimeout",
    "WebAssembly",
    "SharedArrayBuffer",
    "FinalizationRegistry",
    "__timer_manager",
    "Atomics.wait",
    "Atomics.waitAsync",
]


@pytest.mark.parametrize("name", FORBIDDEN)
async def test_forbidden_global_is_absent(make_worker: WorkerFactory, name: str) -> None:
    worker = await make_worker(f"""
export default {{
  fetch() {{
    let value;
    try {{ value = typeof {name}; }} catch (e) {{ value = "threw " + e.name; }}
    return new Response(value);
  }},
}};""")
    assert text(await worker.handle(get("http://host/"))) == "undefined"


async def test_forbidden_globals_unreachable_by_computed_name(make_worker: WorkerFactory) -> None:
    worker = await make_worker("""
export default {
  fetch() {
    const probes = [
      typeof globalThis["fe" + "tch"],
      typeof globalThis["req" + "uire"],
      typeof globalThis["pro" + "cess"],
      typeof globalThis["WebAss" + "embly"],
      typeof globalThis["set" + "Timeout"],
      Function("return typeof fetch + typeof require + typeof process")(),
      (0, eval)("typeof globalThis.setInterval"),
      String(Object.getOwnPropertyNames(globalThis).filter((n) => /fetch|wasm|assembly/i.test(n))),
    ];
    return Response.json(probes);
  },
};""")
    assert json.loads(await _body(worker)) == [
        "undefined",
        "undefined",
        "undefined",
        "undefined",
        "undefined",
        "undefinedundefinedundefined",
        "undefined",
        "",
    ]


async def test_env_holds_only_declared_bindings(
    make_worker: WorkerFactory, host: MemoryHost
) -> None:
    host.kv["secret"] = {"k": "must not leak"}
    worker = await make_worker(
        """
export default {
  async fetch(request, env) {
    let other = "absent";
    try { await env.SECRET.get("k"); other = "reached"; } catch (e) { other = e.name; }
    const kinds = Object.keys(env.CONFIG).sort();
    return Response.json({ keys: Object.keys(env).sort(), other, kinds });
  },
};""",
        bindings={"CONFIG": {"kv": "default"}, "ASSETS": {"static": "site"}},
    )
    assert json.loads(await _body(worker)) == {
        "keys": ["ASSETS", "CONFIG"],
        "other": "TypeError",
        "kinds": ["get", "list"],
    }
    assert all(bucket != "secret" for _, bucket, _ in host.calls)


async def test_host_denial_becomes_a_js_rejection(
    make_worker: WorkerFactory, host: MemoryHost
) -> None:
    host.denied_buckets.add("default")
    worker = await make_worker(
        """
export default {
  async fetch(request, env) {
    try { await env.CONFIG.get("k"); return new Response("allowed"); }
    catch (e) { return new Response("denied: " + e.message, { status: 403 }); }
  },
};""",
        bindings={"CONFIG": {"kv": "default"}},
    )
    response = await worker.handle(get("http://host/"))
    assert response.status == 403
    assert "denied 'kv:read'" in text(response)


async def test_stale_env_from_an_earlier_request_is_refused(make_worker: WorkerFactory) -> None:
    worker = await make_worker(
        """
let saved = null;
export default {
  async fetch(request, env) {
    if (saved === null) { saved = env; return new Response("saved"); }
    try { await saved.CONFIG.get("k"); return new Response("stale env worked"); }
    catch (e) { return new Response(e.message); }
  },
};""",
        bindings={"CONFIG": {"kv": "default"}},
        limits=JsLimits(pool_size=1),
    )
    assert text(await worker.handle(get("http://host/"))) == "saved"
    second = text(await worker.handle(get("http://host/")))
    assert second == "bindings can only be used while their request is running"


async def test_globals_persist_per_isolate_but_request_objects_are_fresh(
    make_worker: WorkerFactory,
) -> None:
    worker = await make_worker(
        """
let hits = 0;
export default {
  fetch(request, env) {
    hits += 1;
    const seen = env.marker === true;
    env.marker = true;
    return Response.json({ hits, seen });
  },
};""",
        limits=JsLimits(pool_size=1),
    )
    first = json.loads(await _body(worker))
    second = json.loads(await _body(worker))
    assert first == {"hits": 1, "seen": False}
    assert second == {"hits": 2, "seen": False}


# ---- limits ------------------------------------------------------------------------


async def test_infinite_loop_times_out_and_the_next_request_succeeds(
    make_worker: WorkerFactory,
) -> None:
    worker = await make_worker(SPIN, bindings={"CONFIG": {"kv": "default"}})
    started = time.perf_counter()
    with pytest.raises(WorkerTimeout, match="CPU time limit"):
        await worker.handle(get("http://host/loop"))
    assert time.perf_counter() - started < 10.0  # a timeout, not a hang
    assert text(await worker.handle(get("http://host/?i=1"))) == "alive 1"


@pytest.mark.parametrize("path", ["/after-await", "/after-kv"])
async def test_loop_in_a_continuation_times_out(make_worker: WorkerFactory, path: str) -> None:
    # Code after an `await` runs as a microtask, outside the script V8 was asked to
    # run; the budget must still catch it and the isolate must be replaced.
    worker = await make_worker(SPIN, bindings={"CONFIG": {"kv": "default"}})
    started = time.perf_counter()
    with pytest.raises(WorkerTimeout, match="CPU time limit"):
        await worker.handle(get(f"http://host{path}"))
    assert time.perf_counter() - started < 10.0  # a timeout, not a hang
    assert text(await worker.handle(get("http://host/?i=2"))) == "alive 2"


async def test_cpu_budget_is_summed_across_awaits(make_worker: WorkerFactory) -> None:
    worker = await make_worker(
        """
const spin = (n) => { let x = 0; for (let i = 0; i < n; i++) x += i; return x; };
export default {
  async fetch(request, env) {
    // Each slice (fixed work, ~20 ms of CPU) fits the budget; together they cannot.
    for (let i = 0; i < 10; i++) { spin(2e7); await env.CONFIG.get("k"); }
    return new Response("finished");
  },
};""",
        bindings={"CONFIG": {"kv": "default"}},
        limits=JsLimits(cpu_ms=80),
    )
    with pytest.raises(WorkerTimeout, match="CPU time limit"):
        await worker.handle(get("http://host/"))


class SlowHost(MemoryHost):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def kv_get(self, bucket: str, key: str) -> str | None:
        await asyncio.sleep(self.delay)
        return await super().kv_get(bucket, key)


async def test_waiting_on_the_host_does_not_count_as_cpu(make_worker: WorkerFactory) -> None:
    slow = SlowHost(delay=0.15)
    slow.kv["default"]["k"] = "v"
    worker = await make_worker(
        """
export default {
  async fetch(request, env) { return new Response(await env.CONFIG.get("k")); },
};""",
        bindings={"CONFIG": {"kv": "default"}},
        limits=JsLimits(cpu_ms=50),
        js_host=slow,
    )
    assert text(await worker.handle(get("http://host/"))) == "v"


async def test_host_wall_budget_is_enforced(make_worker: WorkerFactory) -> None:
    slow = SlowHost(delay=5.0)
    worker = await make_worker(
        """
export default {
  async fetch(request, env) { return new Response(await env.CONFIG.get("k")); },
};""",
        bindings={"CONFIG": {"kv": "default"}},
        limits=JsLimits(host_wall_ms=100),
        js_host=slow,
    )
    started = time.perf_counter()
    with pytest.raises(WorkerTimeout, match="binding calls exceeded"):
        await worker.handle(get("http://host/"))
    assert time.perf_counter() - started < 10.0  # a timeout, not a hang


async def test_memory_bomb_recycles_the_isolate(make_worker: WorkerFactory) -> None:
    worker = await make_worker(
        SPIN,
        bindings={"CONFIG": {"kv": "default"}},
        limits=JsLimits(cpu_ms=5000, memory_bytes=16 * 1024 * 1024),
    )
    with pytest.raises(WorkerError, match="exceeded its memory limit"):
        await worker.handle(get("http://host/bomb"))
    assert text(await worker.handle(get("http://host/?i=3"))) == "alive 3"


async def test_response_body_limit(make_worker: WorkerFactory) -> None:
    worker = await make_worker(
        """
export default { fetch() { return new Response("x".repeat(2049)); } };
""",
        limits=JsLimits(max_response_bytes=2048),
    )
    with pytest.raises(WorkerError, match="response body exceeds 2048 bytes") as info:
        await worker.handle(get("http://host/"))
    assert not isinstance(info.value, WorkerTimeout)


async def test_request_body_limit(make_worker: WorkerFactory) -> None:
    worker = await make_worker(HELLO, limits=JsLimits(max_request_bytes=10))
    with pytest.raises(PayloadTooLarge, match="request body exceeds 10 bytes"):
        await worker.handle(get("http://host/", method="POST", body=b"x" * 11))


async def test_too_many_binding_calls(make_worker: WorkerFactory) -> None:
    worker = await make_worker(
        """
export default {
  async fetch(request, env) {
    for (let i = 0; i < 100; i++) {
      try { await env.CONFIG.get("k" + i); } catch (e) { return new Response(e.message); }
    }
    return new Response("all done");
  },
};""",
        bindings={"CONFIG": {"kv": "default"}},
    )
    assert text(await worker.handle(get("http://host/"))) == (
        "too many binding calls (limit 64 per request)"
    )


async def test_requests_beyond_the_pool_wait_then_time_out(make_worker: WorkerFactory) -> None:
    worker = await make_worker(
        SPIN,
        bindings={"CONFIG": {"kv": "default"}},
        limits=JsLimits(pool_size=1, cpu_ms=400, queue_wait_ms=50),
    )
    spinning = asyncio.create_task(worker.handle(get("http://host/loop")))
    await asyncio.sleep(0.05)
    with pytest.raises(WorkerTimeout, match="no isolate became free"):
        await worker.handle(get("http://host/?i=4"))
    with pytest.raises(WorkerTimeout, match="CPU time limit"):
        await spinning
    assert text(await worker.handle(get("http://host/?i=5"))) == "alive 5"


async def test_cancelled_request_retires_its_isolate(make_worker: WorkerFactory) -> None:
    from py_mini_racer._context import context_count  # test-only probe

    worker = await make_worker(
        SPIN, bindings={"CONFIG": {"kv": "default"}}, limits=JsLimits(cpu_ms=5000, pool_size=1)
    )
    before = context_count()
    spinning = asyncio.create_task(worker.handle(get("http://host/loop")))
    await asyncio.sleep(0.05)
    spinning.cancel()
    with pytest.raises(asyncio.CancelledError):
        await spinning
    assert context_count() == before - 1  # the spinning isolate was closed, not pooled
    assert text(await worker.handle(get("http://host/?i=6"))) == "alive 6"


async def test_spinning_worker_blocks_neither_the_loop_nor_other_workers(
    make_worker: WorkerFactory,
) -> None:
    spinner = await make_worker(
        SPIN, bindings={"CONFIG": {"kv": "default"}}, limits=JsLimits(cpu_ms=1000)
    )
    other = await make_worker(HELLO)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        for _ in range(30):
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    spinning = asyncio.create_task(spinner.handle(get("http://host/loop")))
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    latencies = []
    for _ in range(5):
        started = time.perf_counter()
        assert (await other.handle(get("http://host/"))).body == b"hi"
        latencies.append(time.perf_counter() - started)
    await ticking
    with pytest.raises(WorkerTimeout):
        await spinning
    # A blocked loop would show one gap as long as the spin (~1 s).
    assert max(gaps) < 0.6, gaps  # generous for a loaded CI machine; still far below 1 s
    assert max(latencies) < 0.6, latencies


async def test_fifty_parallel_requests_each_get_their_own_answer(
    make_worker: WorkerFactory, host: MemoryHost
) -> None:
    host.kv["default"]["prefix"] = "n="
    worker = await make_worker(
        """
export default {
  async fetch(request, env) {
    const n = new URL(request.url).searchParams.get("n");
    const prefix = await env.CONFIG.get("prefix");
    return new Response(prefix + n, { headers: { "x-n": n } });
  },
};""",
        bindings={"CONFIG": {"kv": "default"}},
    )
    responses = await asyncio.gather(
        *(worker.handle(get(f"http://host/?n={i}")) for i in range(50))
    )
    for i, response in enumerate(responses):
        assert text(response) == f"n={i}"
        assert ("x-n", str(i)) in response.headers


# ---- errors and logs ---------------------------------------------------------------


async def test_exception_gives_a_safe_error_and_logs_the_stack(
    make_worker: WorkerFactory, host: MemoryHost
) -> None:
    worker = await make_worker("""
function explode() {
  throw new TypeError("secret detail 42");
}
export default { fetch() { explode(); } };
""")
    with pytest.raises(WorkerError, match=r"^worker threw an exception$") as info:
        await worker.handle(get("http://host/"))
    assert "secret" not in str(info.value)
    assert info.value.detail is None
    level, message = host.logs[-1]
    assert level == "error"
    assert "TypeError: secret detail 42" in message
    assert re.search(r"at explode \(<anonymous>:3:\d+\)", message), message  # source line kept


async def test_async_rejection_is_an_exception_too(
    make_worker: WorkerFactory, host: MemoryHost
) -> None:
    worker = await make_worker("""
export default { async fetch() { await null; throw "plain string"; } };
""")
    with pytest.raises(WorkerError, match="worker threw an exception"):
        await worker.handle(get("http://host/"))
    assert host.logs[-1] == ("error", "uncaught exception in fetch: Uncaught plain string")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('return "just text";', "worker threw an exception"),
        ("return new Promise(() => {});", "worker did not produce a response"),
        ("return new Response('x', { status: 99 });", "worker threw an exception"),
        ("return new Response('x', { headers: { 'x-bad': 'a\\nb' } });", "threw an exception"),
    ],
)
async def test_bad_handler_results(make_worker: WorkerFactory, body: str, message: str) -> None:
    worker = await make_worker(f"export default {{ async fetch() {{ {body} }} }};")
    with pytest.raises(WorkerError, match=message):
        await worker.handle(get("http://host/"))
    # The isolate is still good for the next request.
    with pytest.raises(WorkerError, match=message):
        await worker.handle(get("http://host/"))


async def test_console_reaches_the_host_log(make_worker: WorkerFactory, host: MemoryHost) -> None:
    worker = await make_worker("""
console.log("loaded");
export default {
  fetch(request) {
    console.log("hello", 42, { a: [1] });
    console.info("info");
    console.warn("careful");
    console.error(new Error("bad"));
    console.debug("details");
    return new Response("ok");
  },
};""")
    assert host.logs == [("info", "loaded")]
    await worker.handle(get("http://host/"))
    assert host.logs[1:4] == [("info", 'hello 42 {"a":[1]}'), ("info", "info"), ("warn", "careful")]
    assert host.logs[4][0] == "error" and host.logs[4][1].startswith("Error: bad")
    assert host.logs[5] == ("debug", "details")


async def test_console_flood_is_capped(make_worker: WorkerFactory, host: MemoryHost) -> None:
    worker = await make_worker("""
export default {
  fetch() {
    for (let i = 0; i < 1000; i++) console.log("x".repeat(5000));
    return new Response("ok");
  },
};
""")
    await worker.handle(get("http://host/"))
    assert len(host.logs) == 65
    assert all(len(m) <= 2048 + len("...[truncated]") for _, m in host.logs)
    assert host.logs[-1] == ("warn", "936 console line(s) dropped (limit 64 per request)")


# ---- web APIs that need the Python side --------------------------------------------


async def test_crypto_random_uuid(make_worker: WorkerFactory) -> None:
    worker = await make_worker("""
export default {
  fetch() {
    const ids = Array.from({ length: 200 }, () => crypto.randomUUID());
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    return Response.json({ ids, distinct: new Set(ids).size, bytes: Array.from(bytes) });
  },
};""")
    first = json.loads(await _body(worker))
    second = json.loads(await _body(worker))
    pattern = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    assert all(pattern.fullmatch(i) for i in first["ids"])
    assert first["distinct"] == 200
    assert not set(first["ids"]) & set(second["ids"])  # reseeded per request
    assert first["bytes"] != second["bytes"]


async def test_text_encoder_decoder_round_trip(make_worker: WorkerFactory) -> None:
    worker = await make_worker("""
export default {
  async fetch(request) {
    const input = await request.text();
    const bytes = new TextEncoder().encode(input);
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return Response.json({ back: new TextDecoder().decode(bytes), hex });
  },
};""")
    sample = "héllo — 日本語 🎉"
    response = await worker.handle(get("http://host/", method="POST", body=sample.encode()))
    result = json.loads(response.body)
    assert result == {"back": sample, "hex": sample.encode().hex()}


# ---- lifecycle -----------------------------------------------------------------------


async def test_close_releases_every_isolate(host: MemoryHost) -> None:
    from py_mini_racer._context import context_count  # test-only probe

    before = context_count()
    worker = await JsWorker.create(
        name="t", source=HELLO, bindings={}, host=host, limits=JsLimits(pool_size=3)
    )
    await asyncio.gather(*(worker.handle(get("http://host/")) for _ in range(3)))
    assert context_count() == before + 3
    await worker.close()
    assert context_count() == before
    with pytest.raises(WorkerError, match="worker is closed"):
        await worker.handle(get("http://host/"))


async def test_first_isolate_is_built_at_create(
    make_worker: WorkerFactory, host: MemoryHost
) -> None:
    await make_worker("console.log('top level ran'); export default { fetch() {} };")
    assert host.logs == [("info", "top level ran")]


async def _body(worker: JsWorker) -> bytes:
    return (await worker.handle(get("http://host/"))).body
