"""Worker definitions: the ES module rewrite, bindings and limits validation."""

from __future__ import annotations

from typing import Any

import pytest

from lattice.errors import WorkerError
from lattice.plugins.runners.js import (
    MAX_SOURCE_BYTES,
    Binding,
    JsLimits,
    module_to_script,
    validate_bindings,
)
from tests.runners.conftest import WorkerFactory, get, text

# ---- module rewrite (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('import x from "y";\nexport default {};', "uses 'import'"),
        ('import { a } from "./a.js"; export default {}', "uses 'import'"),
        ('import "polyfill";\nexport default {}', "uses 'import'"),
        (
            "export const a = 1;\nexport default {};",
            r"only 'export default' is supported \(found 'export const'\)",
        ),
        ("export { a as default };", r"found 'export \{'"),
        ("export function fetch() {}", r"found 'export function'"),
        ("const handler = {};", "has no 'export default'"),
        ("export default {};\nexport default {};", "more than one 'export default'"),
        ("", "has no 'export default'"),
    ],
)
def test_module_shapes_that_are_rejected(source: str, message: str) -> None:
    with pytest.raises(WorkerError, match=message):
        module_to_script(source)


@pytest.mark.parametrize(
    "source",
    [
        "const s = \"export default nope; import x from 'y'\";\nexport default {};",
        "// export const a = 1\n/* import x from 'y' */\nexport default {};",
        "const t = `export const ${'import'} ${`nested export ${1}`}`;\nexport default {};",
        "const re = /export const|import/g;\nexport default {};",
        "const o = { export: 1, import: 2 }; o.export + o.import;\nexport default {};",
        "function f() { return import('x'); }\nexport default {};",
        "const half = 10 / 2; const r = half / 5 / 1;\nexport default {};",
    ],
)
def test_keywords_in_strings_comments_templates_and_regexes_are_ignored(source: str) -> None:
    script = module_to_script(source)
    assert script.count("__lattice_default_export__ = ") == 1


def test_rewrite_preserves_line_numbers() -> None:
    source = "// one\n// two\nexport\ndefault {\n  fetch() {}\n};\n"
    script = module_to_script(source)
    body = script.split("let __lattice_default_export__; ", 1)[1]
    assert body.splitlines()[4] == "  fetch() {}"


# ---- module rewrite (in V8) --------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "export default async function handler() {}\n"
        "handler.fetch = () => new Response(typeof handler);",
        "export default class Api { static fetch() { return new Response(typeof Api); } }",
        "export default {\n  fetch: () => new Response('function'),\n}",
        "const api = { fetch() { return new Response('function'); } };\n"
        "export default api // no semicolon",
    ],
)
async def test_default_export_forms(make_worker: WorkerFactory, source: str) -> None:
    worker = await make_worker(source)
    assert text(await worker.handle(get("http://host/"))) == "function"


async def test_module_scope_is_private_and_strict(make_worker: WorkerFactory) -> None:
    worker = await make_worker("""
const secret = 1;
var alsoLocal = 2;
let strict = (function () { return this === undefined; })();
export default {
  fetch() {
    return Response.json([typeof globalThis.secret, typeof globalThis.alsoLocal, strict]);
  },
};""")
    assert (await worker.handle(get("http://host/"))).body == b'["undefined","undefined",true]'


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("export default {", "syntax error"),
        ("export default 42;", "must be an object with a fetch"),
        ("export default { get() {} };", "has no fetch"),
        ("export default null;", "must be an object with a fetch"),
        ("throw new Error('at load');\nexport default {}", "threw an exception while loading"),
        ("while (true) {}\nexport default {}", "took too long to start"),
    ],
)
async def test_sources_rejected_at_create(
    make_worker: WorkerFactory, source: str, message: str
) -> None:
    with pytest.raises(WorkerError, match=message):
        await make_worker(source)


async def test_syntax_error_names_the_line(make_worker: WorkerFactory) -> None:
    with pytest.raises(WorkerError, match="syntax error") as info:
        await make_worker("const a = 1;\nconst b = ;\nexport default {}")
    assert info.value.detail == {"reason": "line 2: SyntaxError: Unexpected token ';'"}


async def test_oversized_source_is_rejected(make_worker: WorkerFactory) -> None:
    with pytest.raises(WorkerError, match="source exceeds"):
        await make_worker("export default {};//" + "x" * MAX_SOURCE_BYTES)


# ---- bindings ------------------------------------------------------------------------


def test_valid_bindings() -> None:
    assert validate_bindings({"CONFIG": {"kv": "default"}, "$assets_2": {"static": "site.v1"}}) == {
        "CONFIG": Binding(kind="kv", bucket="default"),
        "$assets_2": Binding(kind="static", bucket="site.v1"),
    }


@pytest.mark.parametrize(
    ("bindings", "message"),
    [
        ({"2X": {"kv": "a"}}, "JavaScript identifiers"),
        ({"a-b": {"kv": "a"}}, "JavaScript identifiers"),
        ({"": {"kv": "a"}}, "JavaScript identifiers"),
        ({"X" * 65: {"kv": "a"}}, "JavaScript identifiers"),
        ({"__proto__": {"kv": "a"}}, "reserved"),
        ({"X": {"kv": "a", "static": "b"}}, "exactly"),
        ({"X": {}}, "exactly"),
        ({"X": "default"}, "exactly"),
        ({"X": {"d1": "a"}}, "unknown binding kind 'd1'"),
        ({"X": {"kv": ""}}, "bucket names"),
        ({"X": {"kv": "../etc"}}, "bucket names"),
        ({"X": {"kv": 3}}, "bucket names"),
        ({f"B{i}": {"kv": "a"} for i in range(33)}, "at most 32 bindings"),
        (["X"], "must be a mapping"),
    ],
)
def test_invalid_bindings(bindings: Any, message: str) -> None:
    with pytest.raises(WorkerError, match=message):
        validate_bindings(bindings)


async def test_create_validates_bindings(make_worker: WorkerFactory) -> None:
    with pytest.raises(WorkerError, match="unknown binding kind 'http'"):
        await make_worker("export default { fetch() {} }", bindings={"NET": {"http": "x"}})


# ---- limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu_ms": 0}, "cpu_ms must be a positive integer"),
        ({"pool_size": -1}, "pool_size must be a positive integer"),
        ({"max_response_bytes": 1.5}, "max_response_bytes must be a positive integer"),
        ({"memory_bytes": 1024}, "at least 8 MiB"),
    ],
)
def test_invalid_limits(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkerError, match=message):
        JsLimits(**kwargs)
