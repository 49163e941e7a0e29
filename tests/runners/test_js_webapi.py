"""The web API subset installed by js_prelude.js, checked inside real V8."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from tests.runners.conftest import WorkerFactory, get


async def run_js(make_worker: WorkerFactory, body: str) -> Any:
    """Run ``body`` (an async function body) in a worker; return its JSON result."""
    worker = await make_worker(
        "export default { async fetch() {\n"
        f"  return Response.json(await (async () => {{ {body} }})());\n"
        "} };"
    )
    return json.loads((await worker.handle(get("http://host/"))).body)


# ---- URL -----------------------------------------------------------------------------


async def test_url_components(make_worker: WorkerFactory) -> None:
    parts = await run_js(
        make_worker,
        """
const u = new URL("HTTPS://User:pw@Example.COM:8443/a/./b/../c d/é?x=1&y=a b#frag ment");
return [u.href, u.protocol, u.username, u.password, u.host, u.hostname, u.port,
        u.pathname, u.search, u.hash, u.origin, String(u), u.toJSON()];
""",
    )
    href = "https://User:pw@example.com:8443/a/c%20d/%C3%A9?x=1&y=a%20b#frag%20ment"
    assert parts == [
        href,
        "https:",
        "User",
        "pw",
        "example.com:8443",
        "example.com",
        "8443",
        "/a/c%20d/%C3%A9",
        "?x=1&y=a%20b",
        "#frag%20ment",
        "https://example.com:8443",
        href,
        href,
    ]


@pytest.mark.parametrize(
    ("url", "base", "href"),
    [
        ("http://h:80/", None, "http://h/"),
        ("https://h:443", None, "https://h/"),
        ("http://h:8080", None, "http://h:8080/"),
        ("http://h/a\\b", None, "http://h/a/b"),
        ("../x?q#h", "http://h/a/b/c", "http://h/a/x?q#h"),
        ("y", "http://h/a/b", "http://h/a/y"),
        ("/abs", "http://h/a/b?q", "http://h/abs"),
        ("//other/p", "https://h/", "https://other/p"),
        ("?z", "http://h/p?q#f", "http://h/p?z"),
        ("#g", "http://h/p?q", "http://h/p?q#g"),
        ("", "http://h/p?q#f", "http://h/p?q"),
        ("http://[::1]:8787/x", None, "http://[::1]:8787/x"),
        ("mailto:someone@example.com", None, "mailto:someone@example.com"),
        ("  http://h/\tp\n ", None, "http://h/p"),
    ],
)
async def test_url_parsing_and_resolution(
    make_worker: WorkerFactory, url: str, base: str | None, href: str
) -> None:
    args = json.dumps(url) + ("" if base is None else ", " + json.dumps(base))
    assert await run_js(make_worker, f"return new URL({args}).href;") == href


@pytest.mark.parametrize(
    "url", ["nope", "http://", "http://exa mple.com/", "http://h:99999/", "/relative"]
)
async def test_invalid_urls_throw_type_error(make_worker: WorkerFactory, url: str) -> None:
    result = await run_js(
        make_worker,
        f"""
try {{ new URL({json.dumps(url)}); return "parsed"; }}
catch (e) {{ return [e.name, URL.canParse({json.dumps(url)}), URL.parse({json.dumps(url)})]; }}
""",
    )
    assert result == ["TypeError", False, None]


async def test_url_search_params_stay_in_sync(make_worker: WorkerFactory) -> None:
    result = await run_js(
        make_worker,
        """
const u = new URL("http://h/p?a=1#top");
u.searchParams.append("b", "x y");
const afterAppend = u.href;
u.search = "?c=3";
const afterSearch = [u.searchParams.get("c"), u.searchParams.get("a")];
u.searchParams.delete("c");
u.hash = "";
u.pathname = "/new path";
u.port = "8080";
return [afterAppend, afterSearch, u.href, u.origin, new URL("mailto:x@y").origin];
""",
    )
    assert result == [
        "http://h/p?a=1&b=x+y#top",
        ["3", None],
        "http://h:8080/new%20path",
        "http://h:8080",
        "null",
    ]


async def test_url_search_params_api(make_worker: WorkerFactory) -> None:
    result = await run_js(
        make_worker,
        """
const p = new URLSearchParams("?a=1&a=2&b=%20x+y&c&=e&d=%zz");
const seen = [];
for (const [k, v] of p) seen.push(k + ":" + v);
const q = new URLSearchParams({ "a b": "c&d=é", n: 1 });
const r = new URLSearchParams([["z", "1"], ["y", "2"], ["z", "0"]]);
r.sort();
p.set("a", "9");
return {
  get: p.get("b"), all: p.getAll("a"), has: [p.has("c"), p.has("zz"), p.has("a", "9")],
  seen, size: p.size, q: q.toString(), sorted: r.toString(), keys: [...r.keys()],
  afterSet: p.toString(), missing: p.get("nope"),
};
""",
    )
    assert result == {
        "get": " x y",
        "all": ["9"],
        "has": [True, False, True],
        "seen": ["a:1", "a:2", "b: x y", "c:", ":e", "d:%zz"],
        "size": 5,
        "q": "a+b=c%26d%3D%C3%A9&n=1",
        "sorted": "y=2&z=1&z=0",
        "keys": ["y", "z", "z"],
        "afterSet": "a=9&b=+x+y&c=&=e&d=%25zz",
        "missing": None,
    }


# ---- Headers, Request, Response -----------------------------------------------------


async def test_headers(make_worker: WorkerFactory) -> None:
    result = await run_js(
        make_worker,
        """
const h = new Headers({ "Content-Type": "text/plain", "X-B": "1" });
h.append("x-b", "2");
h.append("Set-Cookie", "a=1");
h.append("set-cookie", "b=2");
h.set("X-New", "  padded  ");
const each = [];
h.forEach((v, k) => each.push(k + "=" + v));
let error = null;
try { h.set("bad name", "x"); } catch (e) { error = e.name; }
h.delete("CONTENT-TYPE");
return {
  get: h.get("x-b"), has: [h.has("X-NEW"), h.has("content-type")], each,
  iter: [...h].length, keys: [...h.keys()], cookies: h.getSetCookie(), padded: h.get("x-new"),
  error, copy: [...new Headers(h)].length, pairs: [...new Headers([["A", "1"]])],
};
""",
    )
    assert result == {
        "get": "1, 2",
        "has": [True, False],
        "each": [
            "content-type=text/plain",
            "set-cookie=a=1",
            "set-cookie=b=2",
            "x-b=1, 2",
            "x-new=padded",
        ],
        "iter": 4,
        "keys": ["set-cookie", "set-cookie", "x-b", "x-new"],
        "cookies": ["a=1", "b=2"],
        "padded": "padded",
        "error": "TypeError",
        "copy": 4,
        "pairs": [["a", "1"]],
    }


async def test_request_object(make_worker: WorkerFactory) -> None:
    result = await run_js(
        make_worker,
        """
const r = new Request("http://h/x", { method: "post", body: "hi", headers: { "X-A": "1" } });
const c = r.clone();
const first = await r.text();
let reuse = null;
try { await r.text(); } catch (e) { reuse = e.message; }
let getBody = null;
try { new Request("http://h/", { body: "x" }); } catch (e) { getBody = e.name; }
const copy = new Request(c, { method: "PATCH" });
return [r.method, r.url, first, reuse, r.bodyUsed, await c.json().catch(e => e.name),
        getBody, copy.method, copy.headers.get("content-type"), new Request("http://h").method];
""",
    )
    assert result == [
        "POST",
        "http://h/x",
        "hi",
        "Body has already been used",
        True,
        "SyntaxError",
        "TypeError",
        "PATCH",
        "text/plain;charset=UTF-8",
        "GET",
    ]


async def test_response_object(make_worker: WorkerFactory) -> None:
    result = await run_js(
        make_worker,
        """
const r = new Response("body", { status: 418, statusText: "Teapot" });
const j = Response.json({ a: 1 }, { headers: { "x-y": "z" } });
const redirect = Response.redirect("http://h/next", 301);
const errors = [];
const makers = [
  () => new Response("x", { status: 204 }),
  () => new Response(null, { status: 600 }),
  () => Response.redirect("http://h/", 200),
];
for (const make of makers) {
  try { make(); errors.push("ok"); } catch (e) { errors.push(e.name); }
}
const empty = new Response(null, { status: 204 });
const buf = await new Response(new Uint16Array([0x4241])).arrayBuffer();
return {
  r: [r.status, r.statusText, r.ok, r.headers.get("content-type"), await r.text()],
  j: [j.headers.get("content-type"), j.headers.get("x-y"), await j.json()],
  redirect: [redirect.status, redirect.headers.get("location")],
  errors, empty: [empty.status, await empty.text()], buf: new TextDecoder().decode(buf),
  defaults: [new Response().status, new Response().ok],
};
""",
    )
    assert result == {
        "r": [418, "Teapot", False, "text/plain;charset=UTF-8", "body"],
        "j": ["application/json", "z", {"a": 1}],
        "redirect": [301, "http://h/next"],
        "errors": ["TypeError", "RangeError", "RangeError"],
        "empty": [204, ""],
        "buf": "AB",
        "defaults": [200, True],
    }


async def test_response_headers_reach_python_unmerged(make_worker: WorkerFactory) -> None:
    worker = await make_worker("""
export default {
  fetch() {
    const h = new Headers();
    h.append("Set-Cookie", "a=1");
    h.append("Set-Cookie", "b=2");
    return new Response("", { headers: h });
  },
};""")
    response = await worker.handle(get("http://host/"))
    assert response.headers == [
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("content-type", "text/plain;charset=UTF-8"),
    ]


# ---- encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b"\xe2\x82",
        b"a\xc0\xafb",
        b"\xed\xa0\x80x",
        b"\xf0\x9f\x98",
        b"\xf4\x90\x80\x80",
        "ok ✓ 🎉".encode(),
        b"\xef\xbb\xbfbom",
    ],
)
async def test_text_decoder_matches_whatwg_replacement(
    make_worker: WorkerFactory, data: bytes
) -> None:
    decoded = await run_js(
        make_worker, f"return new TextDecoder().decode(new Uint8Array({list(data)}));"
    )
    expected = data.decode("utf-8", "replace").removeprefix("\ufeff")
    assert decoded == expected


async def test_text_codec_options(make_worker: WorkerFactory) -> None:
    result = await run_js(
        make_worker,
        """
const out = [];
const fatal = new TextDecoder("utf-8", { fatal: true });
try { fatal.decode(new Uint8Array([0xff])); } catch (e) { out.push(e.name); }
try { new TextDecoder("latin1"); } catch (e) { out.push(e.name); }
const keepBom = new TextDecoder("utf-8", { ignoreBOM: true });
out.push(keepBom.decode(new Uint8Array([0xef, 0xbb, 0xbf, 0x41])).length);
out.push(Array.from(new TextEncoder().encode("\\ud800")));
const dest = new Uint8Array(4);
out.push(new TextEncoder().encodeInto("aé🎉", dest));
return out;
""",
    )
    assert result == ["TypeError", "RangeError", 2, [0xEF, 0xBF, 0xBD], {"read": 2, "written": 3}]


async def test_atob_btoa(make_worker: WorkerFactory) -> None:
    result = await run_js(
        make_worker,
        """
let error = null;
try { btoa("€"); } catch (e) { error = e.name; }
return [btoa("hello\\xff"), atob("aGVsbG//"), atob("aGk"), error];
""",
    )
    assert result == [base64.b64encode(b"hello\xff").decode(), "hell" + "o\xff", "hi", "TypeError"]


async def test_queue_microtask(make_worker: WorkerFactory) -> None:
    assert await run_js(
        make_worker,
        """
const order = [];
queueMicrotask(() => order.push("micro"));
order.push("sync");
await null; await null;
return order;
""",
    ) == ["sync", "micro"]


# ---- randomness ---------------------------------------------------------------------


async def test_chacha20_block_matches_a_reference(make_worker: WorkerFactory) -> None:
    # RFC 8439 section 2.3.2 inputs, checked against `cryptography`'s ChaCha20.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a00000000")
    counter = 1
    ours = await run_js(
        make_worker,
        (
            f"return __lattice.chacha20({json.dumps(base64.b64encode(key).decode())}, {counter}, "
            f"{json.dumps(base64.b64encode(nonce).decode())});"
        ),
    )
    reference = (
        Cipher(algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce), mode=None)
        .encryptor()
        .update(bytes(64))
    )
    assert base64.b64decode(ours) == reference
    assert reference[:4] == bytes.fromhex("10f1e7e4")  # the RFC's published first bytes


async def test_get_random_values_rejects_bad_input(make_worker: WorkerFactory) -> None:
    assert await run_js(
        make_worker,
        """
const out = [];
for (const arg of [new Float32Array(4), new Uint8Array(65537), [1, 2]]) {
  try { crypto.getRandomValues(arg); out.push("ok"); } catch (e) { out.push(e.name); }
}
out.push(crypto.getRandomValues(new Uint32Array(8)).some((v) => v !== 0));
return out;
""",
    ) == ["TypeError", "RangeError", "TypeError", True]
