"""Capability-based JavaScript worker runtime (V8 isolates through mini-racer).

A worker is one ES module in the Cloudflare Workers shape::

    export default { async fetch(request, env, ctx) { return new Response("hi"); } }

``JsWorker.create`` checks the source once (module shape, compile, a ``fetch``
handler), then keeps a small pool of isolates per worker.  ``handle`` runs one
request on one isolate.  The JS side cannot call Python: host calls made through
``env`` bindings are queued inside the isolate, collected by the driver here between
script runs, checked against the declared bindings, run through the caller's
:class:`JsHost`, and answered back into the isolate (see ``js_prelude.js``).

Limits per request (:class:`JsLimits`):

* ``cpu_ms`` -- CPU the isolate spends running JS for the request (all script runs
  summed, microtasks included), read from the V8 thread's own CPU clock, with a
  generous wall cap as a backstop (see ``js_engine.Isolate.run_sync``).
  Exceeded -> ``WorkerTimeout``; the isolate is discarded and replaced on the
  next request.
* ``startup_ms`` -- the same budget for loading the prelude and module top level.
* ``host_wall_ms`` -- total time spent awaiting host calls (KV, assets).  It is a
  separate budget so slow storage does not count as worker CPU.
* ``memory_bytes`` -- V8 hard heap limit per isolate.  Hitting it discards the
  isolate and raises ``WorkerError("worker exceeded its memory limit")``.
* ``queue_wait_ms`` -- how long a request may wait for a free isolate.
* ``max_request_bytes`` / ``max_response_bytes`` -- body size caps.

Isolates are reused between requests.  Every request gets fresh ``Request``,
``env`` and ``ctx`` objects, but globals a worker mutates persist in that isolate,
as on Cloudflare; a worker must not rely on either persistence or isolation of
its globals.  Work left running after the response (``ctx.waitUntil``) is not
awaited and its binding calls are refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import importlib.resources
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

from lattice.errors import LatticeError, PayloadTooLarge, WorkerError, WorkerTimeout
from lattice.plugins.runners.js_engine import Isolate
from lattice.plugins.runners.js_wire import MEMORY_MESSAGE

__all__ = [
    "POLL",
    "Binding",
    "HostOp",
    "JsHost",
    "JsLimits",
    "JsWorker",
    "WorkerRequest",
    "WorkerResponse",
    "check_ops",
    "check_request",
    "check_worker",
    "decode_message",
    "install_code",
    "install_outcome",
    "is_memory_failure",
    "log_lines",
    "module_to_script",
    "prelude",
    "request_outcome",
    "request_spec",
    "resume_code",
    "run_ops",
    "start_code",
    "validate_bindings",
]

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 1024 * 1024
MAX_BINDINGS = 32
MAX_HOST_CALLS = 64
MAX_LOG_CHARS = 4096
LOG_TIMEOUT_S = 1.0
_LOG_LEVELS = frozenset({"debug", "info", "warn", "error"})
_BINDING_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: what HTTP allows in a field value: HTAB, visible ASCII, space, obs-text (Latin-1)
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
#: V8's words when the process refuses an ArrayBuffer (the sandbox's RLIMIT_DATA)
_ALLOCATION_FAILED = "Array buffer allocation failed"


# ---- public data types -----------------------------------------------------------


@dataclass(frozen=True)
class WorkerRequest:
    method: str
    url: str  # absolute, e.g. "http://host/w/name/path?x=1"
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class WorkerResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class JsLimits:
    cpu_ms: int = 50
    memory_bytes: int = 64 * 1024 * 1024
    max_response_bytes: int = 1024 * 1024
    pool_size: int = 2
    host_wall_ms: int = 1000
    queue_wait_ms: int = 1000
    startup_ms: int = 500
    max_request_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value <= 0:
                raise WorkerError(f"JS limit {f.name} must be a positive integer")
        if self.memory_bytes < 8 * 1024 * 1024:
            raise WorkerError("JS limit memory_bytes must be at least 8 MiB")


@dataclass(frozen=True)
class Binding:
    kind: Literal["kv", "static"]
    bucket: str


class JsHost(Protocol):
    """What a worker may reach, provided per worker and backed by the broker."""

    async def kv_get(self, bucket: str, key: str) -> str | None: ...

    async def kv_list(
        self, bucket: str, prefix: str, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]: ...

    async def static_get(self, bucket: str, path: str) -> tuple[bytes, str] | None: ...

    async def log(self, level: str, message: str) -> None: ...


def validate_bindings(bindings: Mapping[str, Mapping[str, str]]) -> dict[str, Binding]:
    """Check a worker's ``bindings`` table; raise WorkerError on the first bad entry.

    Each name must be a JS identifier not starting with ``__`` (reserved for the
    runtime); each value exactly ``{"kv": bucket}`` or ``{"static": bucket}``.
    """
    if not isinstance(bindings, Mapping):
        raise WorkerError("bindings must be a mapping of name to {kind: bucket}")
    if len(bindings) > MAX_BINDINGS:
        raise WorkerError(f"a worker may declare at most {MAX_BINDINGS} bindings")
    out: dict[str, Binding] = {}
    for name, spec in bindings.items():
        # 1. the name is something JS code can write as env.NAME
        if not isinstance(name, str) or not _BINDING_NAME.fullmatch(name):
            raise WorkerError(
                "binding names must be JavaScript identifiers of at most 64 characters",
                detail={"binding": str(name)[:64]},
            )
        if name.startswith("__"):
            raise WorkerError(
                "binding names starting with '__' are reserved", detail={"binding": name}
            )
        # 2. the value names exactly one kind
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise WorkerError(
                'a binding must be exactly {"kv": bucket} or {"static": bucket}',
                detail={"binding": name},
            )
        ((kind, bucket),) = spec.items()
        if kind not in ("kv", "static"):
            raise WorkerError(f"unknown binding kind {str(kind)[:32]!r}", detail={"binding": name})
        # 3. the bucket is a plain name
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise WorkerError(
                "binding bucket names must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
                detail={"binding": name},
            )
        out[name] = Binding(kind="kv" if kind == "kv" else "static", bucket=bucket)
    return out


def check_worker(source: str, bindings: Mapping[str, Mapping[str, str]]) -> dict[str, Binding]:
    """The checks every JS worker passes before it runs anywhere: its bindings
    and its source size.  Returns the checked bindings."""
    checked = validate_bindings(bindings)
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise WorkerError(f"worker source exceeds {MAX_SOURCE_BYTES} bytes")
    return checked


# ---- ES module -> script -------------------------------------------------------

_DEFAULT_SLOT = "__lattice_default_export__"
_NAMED_DECLARATION = re.compile(
    r"\s*(?:(?:async\s+)?function\s*\*?\s*|class\s+)(?!extends\b)([A-Za-z_$][\w$]*)"
)
_NEXT_WORD = re.compile(r"(?:\s|/\*.*?\*/|//[^\n]*)*([A-Za-z_$][\w$]*|\S)", re.S)
_IDENT = re.compile(r"[A-Za-z_$\u0080-\uffff][\w$\u0080-\uffff]*")
_NUMBER = re.compile(r"[0-9][\w.]*|\.[0-9][\w]*")
_REGEX_AFTER_WORDS = frozenset(
    {
        "return",
        "typeof",
        "instanceof",
        "in",
        "of",
        "new",
        "delete",
        "void",
        "throw",
        "case",
        "do",
        "else",
        "yield",
        "await",
    }
)


def module_to_script(source: str) -> str:
    """Rewrite a single-file ES module into a function expression returning its default.

    Supported: one top-level ``export default``, no other ``import``/``export``.
    The module body runs in strict mode inside a function, so its top-level names
    stay private, like a module's.  Line numbers in stack traces are preserved.
    """
    exports: list[tuple[int, int]] = []
    for start, end, word in _top_level_keywords(source):
        following = _NEXT_WORD.match(source, end)
        nxt = following[1] if following else ""
        if word == "import":
            if nxt in ("(", "."):
                continue  # import() / import.meta: fail at run time, not a statement
            raise WorkerError(
                "worker source uses 'import'; a worker must be one self-contained module"
            )
        if following is None or nxt != "default":
            raise WorkerError(f"only 'export default' is supported (found 'export {nxt}')")
        exports.append((start, following.end()))
    if not exports:
        raise WorkerError("worker source has no 'export default'")
    if len(exports) > 1:
        raise WorkerError("worker source has more than one 'export default'")
    start, end = exports[0]
    keep_lines = "\n" * source.count("\n", start, end)
    declared = _NAMED_DECLARATION.match(source, end)
    if declared:
        body = f"{source[:start]}{keep_lines}{source[end:]}\n;{_DEFAULT_SLOT} = {declared[1]};"
    else:
        body = f"{source[:start]}{keep_lines}{_DEFAULT_SLOT} = {source[end:]}"
    return (
        f'(function () {{ "use strict"; let {_DEFAULT_SLOT}; {body}\n;return {_DEFAULT_SLOT}; }})'
    )


def _top_level_keywords(src: str) -> list[tuple[int, int, str]]:
    """Spans of ``import``/``export`` tokens at brace depth 0.

    A small lexer: skips comments, strings, template literals (with nested
    substitutions) and regular expression literals (by the usual previous-token
    rule), and ignores member accesses such as ``obj.import``.
    """
    found: list[tuple[int, int, str]] = []
    i, n, depth = 0, len(src), 0
    templates: list[int] = []  # depth at which each open `${` returns to its template
    regex_ok, after_dot = True, False
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
        elif src.startswith("//", i):
            nl = src.find("\n", i)
            i = n if nl < 0 else nl
        elif src.startswith("/*", i):
            close = src.find("*/", i + 2)
            i = n if close < 0 else close + 2
        elif c in "'\"":
            i, regex_ok, after_dot = _skip_string(src, i), False, False
        elif c == "`" or (c == "}" and templates and templates[-1] == depth - 1):
            if c == "}":
                templates.pop()
                depth -= 1
            i, opened = _skip_template(src, i + 1)
            if opened:
                templates.append(depth)
                depth += 1
            regex_ok, after_dot = opened, False  # after `${` an expression starts
        elif c == "/" and regex_ok:
            i, regex_ok, after_dot = _skip_regex(src, i), False, False
        elif word := _IDENT.match(src, i):
            text = word[0]
            if text in ("import", "export") and depth == 0 and not after_dot:
                found.append((i, word.end(), text))
            i = word.end()
            regex_ok, after_dot = text in _REGEX_AFTER_WORDS, False
        elif number := _NUMBER.match(src, i):
            i, regex_ok, after_dot = number.end(), False, False
        else:
            if c in "({[":
                depth += 1
            elif c in ")}]":
                depth = max(depth - 1, 0)
            regex_ok = c not in ")]"
            after_dot = c == "."
            i += 1
    return found


def _skip_string(src: str, i: int) -> int:
    quote, i = src[i], i + 1
    while i < len(src) and src[i] != quote and src[i] != "\n":
        i += 2 if src[i] == "\\" else 1
    return i + 1


def _skip_template(src: str, i: int) -> tuple[int, bool]:
    """Scan template text from ``i``; return (next index, whether a ``${`` opened)."""
    while i < len(src):
        if src[i] == "\\":
            i += 2
        elif src[i] == "`":
            return i + 1, False
        elif src.startswith("${", i):
            return i + 2, True
        else:
            i += 1
    return i, False


def _skip_regex(src: str, i: int) -> int:
    i, in_class = i + 1, False
    while i < len(src) and src[i] != "\n":
        c = src[i]
        if c == "\\":
            i += 1
        elif c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "/" and not in_class:
            break
        i += 1
    flags = _IDENT.match(src, i + 1)
    return flags.end() if flags else i + 1


@functools.cache
def prelude() -> str:
    resource = importlib.resources.files("lattice.plugins.runners").joinpath("js_prelude.js")
    return resource.read_text(encoding="utf-8")


# ---- the conversation with an isolate (shared by JsWorker and the sandbox) --------
#
# The driver calls `__lattice.start(spec, entropy, maxBody)`; it answers with a
# final message, or "" when the handler awaits something, and then
# `__lattice.poll()` gives either the final message or the binding calls queued
# meanwhile (`{"t": "ops"}`), answered with `__lattice.resume(results)`.  The
# functions below read those messages; in production they run on the server,
# which must not trust what the sandbox process sends (see js_process).

POLL = b"__lattice.poll()"


def request_spec(request: WorkerRequest) -> bytes:
    """The request as the JSON object ``__lattice.start`` takes (ASCII, so it is a
    valid JavaScript expression as it stands)."""
    return json.dumps(
        {
            "method": request.method,
            "url": request.url,
            "headers": [[k, v] for k, v in request.headers],
            "body": base64.b64encode(request.body).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode("ascii")


def start_code(spec: bytes, max_body: int) -> bytes:
    """The script that starts one request; ``spec`` comes from :func:`request_spec`."""
    return b'__lattice.start(%s,"%s",%d)' % (spec, _entropy().encode("ascii"), max_body)


def resume_code(results: list[dict[str, Any]]) -> bytes:
    return b"__lattice.resume(%s)" % json.dumps(results, separators=(",", ":")).encode("ascii")


def decode_message(reply: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(reply)
    except ValueError as exc:
        raise WorkerError("worker runtime sent a malformed message") from exc
    if not isinstance(value, dict):
        raise WorkerError("worker runtime sent a malformed message")
    return value


def log_lines(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The console lines a message carries (well-formed ones only, levels checked)."""
    lines = message.get("logs")
    if not isinstance(lines, list):
        return []
    return [
        (line[0] if line[0] in _LOG_LEVELS else "info", line[1][:MAX_LOG_CHARS])
        for line in lines
        if isinstance(line, list) and len(line) == 2 and all(isinstance(p, str) for p in line)
    ]


def install_outcome(message: Mapping[str, Any]) -> tuple[LatticeError | None, str | None]:
    """What loading the module came to: (error or None, a line for the worker log)."""
    kind = message.get("t")
    if kind == "ready":
        return None, None
    if kind == "invalid":
        return WorkerError(str(message.get("reason", "invalid default export"))[:500]), None
    if kind == "error":
        line = f"worker failed to load: {message.get('stack', '')}"
        return WorkerError("worker threw an exception while loading"), line
    return WorkerError("worker runtime sent an unknown message"), None


def request_outcome(
    message: Mapping[str, Any], max_body: int
) -> tuple[WorkerResponse | LatticeError, str | None]:
    """What a final message comes to: (the response or the error to raise, a line
    for the worker log).  Every field is checked: status, each header name and
    value (what HTTP can carry), the body and its size."""
    kind = message.get("t")
    if kind == "done":
        try:
            return response_from(message, max_body), None
        except WorkerError as exc:
            return exc, None
    if kind == "error":
        stack = str(message.get("stack", ""))
        line = f"uncaught exception in fetch: {stack}"
        if _ALLOCATION_FAILED in stack:
            return WorkerError(MEMORY_MESSAGE), line
        return WorkerError("worker threw an exception"), line
    if kind == "too_large":
        error = WorkerError(
            f"worker response body exceeds {max_body} bytes", detail={"limit": max_body}
        )
        return error, None
    if kind == "stalled":
        return WorkerError("worker did not produce a response"), None
    return WorkerError("worker runtime sent an unknown message"), None


def is_memory_failure(reply: bytes) -> bool:
    """A final message saying the process refused an allocation (cheap: no parsing)."""
    return reply.startswith(b'{"t":"error"') and _ALLOCATION_FAILED.encode() in reply


def response_from(message: Mapping[str, Any], limit: int) -> WorkerResponse:
    status = message.get("status")
    if type(status) is not int or not 200 <= status <= 599:
        raise WorkerError("worker returned an invalid status")
    raw_headers = message.get("headers")
    if not isinstance(raw_headers, list) or len(raw_headers) > 256:
        raise WorkerError("worker returned invalid headers")
    headers: list[tuple[str, str]] = []
    for pair in raw_headers:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            raise WorkerError("worker returned an invalid header")
        if not _HEADER_NAME.fullmatch(pair[0]) or len(pair[0]) > 256:
            raise WorkerError(
                f"worker returned an invalid header name {pair[0][:64]!r}",
                detail={"header": pair[0][:64]},
            )
        if not _HEADER_VALUE.fullmatch(pair[1]) or len(pair[1]) > 16384:
            raise WorkerError(
                f"worker returned an invalid value for header {pair[0]!r} "
                "(control characters, or characters outside Latin-1)",
                detail={"header": pair[0]},
            )
        headers.append((pair[0], pair[1]))
    encoded = message.get("body")
    if not isinstance(encoded, str) or len(encoded) > (limit + 2) // 3 * 4:
        raise WorkerError(f"worker response body exceeds {limit} bytes", detail={"limit": limit})
    try:
        body = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise WorkerError("worker returned a malformed body") from exc
    if len(body) > limit:
        raise WorkerError(f"worker response body exceeds {limit} bytes", detail={"limit": limit})
    return WorkerResponse(status=status, headers=headers, body=body)


@dataclass(frozen=True)
class HostOp:
    """One binding call that passed :func:`check_op`."""

    call_id: int
    method: Literal["kv_get", "kv_list", "static_get"]
    bucket: str
    args: tuple[Any, ...]


#: an op that failed its checks: its id and the reason (a rejection inside JS)
Refused = tuple[int, str]


def check_ops(ops: Any, bindings: Mapping[str, Binding], made: int) -> list[HostOp | Refused]:
    """Check a batch of queued binding calls, ``made`` calls into the request.

    Deny by default.  The batch must be a non-empty list within the per-request
    limit and every op must carry an integer id, or the request fails
    (WorkerError).  Then each op must name a declared binding of the matching
    kind, with arguments of the right types and sizes; an op that does not is
    refused on its own (answered with a rejection inside JS).
    """
    if not isinstance(ops, list) or not ops:
        raise WorkerError("worker runtime sent malformed binding calls")
    if made + len(ops) > MAX_HOST_CALLS:
        raise WorkerError(f"worker made more than {MAX_HOST_CALLS} binding calls")
    out: list[HostOp | Refused] = []
    for op in ops:
        call_id = op.get("id") if isinstance(op, dict) else None
        if not isinstance(op, dict) or type(call_id) is not int:
            raise WorkerError("worker runtime sent a malformed binding call")
        try:
            out.append(_check_op(call_id, op, bindings))
        except WorkerError as exc:
            out.append((call_id, exc.message))
    return out


def _check_op(call_id: int, op: dict[str, Any], bindings: Mapping[str, Binding]) -> HostOp:
    # 1. a declared binding of the kind the call needs
    kind, name = op.get("op"), op.get("binding")
    binding = bindings.get(name) if isinstance(name, str) else None
    wanted = "static" if kind == "static_get" else "kv"
    if binding is None or binding.kind != wanted:
        raise WorkerError(f"binding {str(name)[:64]!r} is not declared for this worker")
    # 2. plain arguments of bounded size
    if kind == "kv_get":
        return HostOp(call_id, "kv_get", binding.bucket, (_arg_str(op, "key", 512),))
    if kind == "kv_list":
        limit = op.get("limit")
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise WorkerError("KV list limit must be an integer in 1..1000")
        cursor = op.get("cursor")
        args = (
            _arg_str(op, "prefix", 512),
            limit,
            None if cursor is None else _arg_str(op, "cursor", 1024),
        )
        return HostOp(call_id, "kv_list", binding.bucket, args)
    if kind == "static_get":
        return HostOp(call_id, "static_get", binding.bucket, (_arg_str(op, "path", 1024),))
    raise WorkerError("unknown binding call")


async def run_ops(
    ops: list[HostOp | Refused], host: JsHost, max_response_bytes: int, name: str
) -> list[dict[str, Any]]:
    """Answer a checked batch through ``host``; failures become rejections in JS."""
    if len(ops) == 1:  # the common case: no tasks
        return [await _run_op(ops[0], host, max_response_bytes, name)]
    return list(await asyncio.gather(*(_run_op(op, host, max_response_bytes, name) for op in ops)))


async def _run_op(
    op: HostOp | Refused, host: JsHost, max_response_bytes: int, name: str
) -> dict[str, Any]:
    if isinstance(op, tuple):
        return {"id": op[0], "err": op[1]}
    try:
        if op.method == "kv_get":
            return {"id": op.call_id, "ok": await host.kv_get(op.bucket, *op.args)}
        if op.method == "kv_list":
            names, next_cursor = await host.kv_list(op.bucket, *op.args)
            return {"id": op.call_id, "ok": [list(names), next_cursor]}
        found = await host.static_get(op.bucket, *op.args)
        if found is None:
            return {"id": op.call_id, "ok": None}
        body, content_type = found
        if len(body) > max_response_bytes:
            raise WorkerError("asset is larger than the worker response limit")
        return {"id": op.call_id, "ok": [base64.b64encode(body).decode("ascii"), content_type]}
    except LatticeError as exc:
        return {"id": op.call_id, "err": exc.message}
    except Exception:
        log.exception("binding call of JS worker %r failed", name)
        return {"id": op.call_id, "err": "binding call failed"}


# ---- the worker --------------------------------------------------------------------


@dataclass
class _Run:
    """Budgets and progress of one request on one isolate."""

    isolate: Isolate
    cpu_left: float
    host_left: float
    calls: int = 0
    settled: bool = False  # the JS side finished the request (any outcome)

    async def eval(self, code: bytes) -> str:
        if self.cpu_left <= 0:
            raise WorkerTimeout("worker exceeded its CPU time limit")
        result, used = await self.isolate.run(code.decode("ascii"), cpu_s=self.cpu_left)
        self.cpu_left -= used
        return result


class JsWorker:
    """One worker's compiled source and its isolate pool, on the caller's event loop.
    Build with :meth:`create`.

    In production each sandbox process drives one isolate synchronously
    (:mod:`js_sandbox`); this class runs the same conversation in-process, with
    a pool, for embedding and for the runtime's own tests.
    """

    def __init__(
        self,
        *,
        name: str,
        script: str,
        bindings: dict[str, Binding],
        host: JsHost,
        limits: JsLimits,
    ) -> None:
        self.name = name
        self._script = script
        self._bindings = bindings
        self._host = host
        self._limits = limits
        self._idle: list[Isolate] = []
        self._slots = asyncio.Semaphore(limits.pool_size)
        self._closed = False

    @classmethod
    async def create(
        cls,
        *,
        name: str,
        source: str,
        bindings: Mapping[str, Mapping[str, str]],
        host: JsHost,
        limits: JsLimits,
    ) -> JsWorker:
        """Validate everything, then load the source into a first isolate."""
        checked = check_worker(source, bindings)
        worker = cls(
            name=name,
            script=module_to_script(source),
            bindings=checked,
            host=host,
            limits=limits,
        )
        worker._idle.append(await worker._spawn())
        return worker

    async def handle(self, request: WorkerRequest) -> WorkerResponse:
        """Run one request.  Raises WorkerError / WorkerTimeout / PayloadTooLarge."""
        if self._closed:
            raise WorkerError("worker is closed")
        check_request(request, self._limits)
        isolate = await self._acquire()
        run = _Run(
            isolate,
            cpu_left=self._limits.cpu_ms / 1000,
            host_left=self._limits.host_wall_ms / 1000,
        )
        try:
            return await self._serve(run, request)
        finally:
            self._release(isolate, reuse=run.settled)

    async def close(self) -> None:
        """Release every idle isolate; busy ones are closed when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for isolate in idle:
            isolate.close()

    # -- pool ------------------------------------------------------------------

    async def _acquire(self) -> Isolate:
        try:
            async with asyncio.timeout(self._limits.queue_wait_ms / 1000):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise WorkerTimeout("worker is busy: no isolate became free in time") from exc
        try:
            while self._idle:
                isolate = self._idle.pop()
                if isolate.usable:
                    return isolate
                isolate.close()
            return await self._spawn()
        except BaseException:
            self._slots.release()
            raise

    def _release(self, isolate: Isolate, *, reuse: bool) -> None:
        if reuse and isolate.usable and not self._closed:
            self._idle.append(isolate)
        else:
            isolate.close()
        self._slots.release()

    async def _spawn(self) -> Isolate:
        """A fresh isolate with the prelude and this worker's module loaded."""
        isolate = Isolate.open(memory_bytes=self._limits.memory_bytes)
        try:
            await self._install(isolate)
        except BaseException:
            isolate.close()
            raise
        return isolate

    async def _install(self, isolate: Isolate) -> None:
        budget = self._limits.startup_ms / 1000
        try:
            _, used = await isolate.run(prelude(), cpu_s=budget)
            installed, _ = await isolate.run(
                install_code(self._bindings, self._script), cpu_s=budget - used
            )
        except WorkerTimeout as exc:
            raise WorkerTimeout("worker took too long to start") from exc
        reply = decode_message(installed)
        await self._flush_logs(reply)
        error, line = install_outcome(reply)
        if line is not None:
            await self._log("error", line)
        if error is not None:
            raise error

    # -- one request -------------------------------------------------------------

    async def _serve(self, run: _Run, request: WorkerRequest) -> WorkerResponse:
        limit = self._limits.max_response_bytes
        reply = await run.eval(start_code(request_spec(request), limit))
        while True:
            if reply == "":
                reply = await run.eval(POLL)
            message = decode_message(reply)
            await self._flush_logs(message)
            if message.get("t") == "ops":
                results = await self._host_calls(message.get("ops"), run)
                reply = await run.eval(resume_code(results))
                continue
            run.settled = True
            outcome, line = request_outcome(message, limit)
            if line is not None:
                await self._log("error", line)
            if isinstance(outcome, WorkerResponse):
                return outcome
            if outcome.message == MEMORY_MESSAGE:
                run.settled = False  # discard the isolate: its memory is exhausted
            raise outcome

    async def _host_calls(self, ops: Any, run: _Run) -> list[dict[str, Any]]:
        checked = check_ops(ops, self._bindings, run.calls)
        run.calls += len(checked)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(max(run.host_left, 0.0)):
                results = await run_ops(
                    checked, self._host, self._limits.max_response_bytes, self.name
                )
        except TimeoutError as exc:
            raise WorkerTimeout("worker binding calls exceeded their time budget") from exc
        run.host_left -= time.perf_counter() - started
        return results

    # -- logs --------------------------------------------------------------------

    async def _flush_logs(self, message: Mapping[str, Any]) -> None:
        for level, line in log_lines(message):
            await self._log(level, line)

    async def _log(self, level: str, message: str) -> None:
        """Best effort: a denied, failing or slow log host never fails the request."""
        with contextlib.suppress(LatticeError, TimeoutError):
            async with asyncio.timeout(LOG_TIMEOUT_S):
                await self._host.log(level, message[:MAX_LOG_CHARS])


def check_request(request: WorkerRequest, limits: JsLimits) -> None:
    """What a request must be before it reaches any isolate."""
    if len(request.body) > limits.max_request_bytes:
        raise PayloadTooLarge(
            f"request body exceeds {limits.max_request_bytes} bytes",
            detail={"limit": limits.max_request_bytes},
        )
    if not request.url.startswith(("http://", "https://")):
        raise WorkerError("worker request URL must be absolute http(s)")


def install_code(bindings: Mapping[str, Binding], script: str) -> str:
    """The script that loads a worker's module into an isolate with the prelude."""
    table = [[name, b.kind] for name, b in bindings.items()]
    return f"__lattice.install({json.dumps(table)}, {json.dumps(_entropy())}, {script})"


def _arg_str(op: dict[str, Any], key: str, max_len: int) -> str:
    value = op.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise WorkerError(f"binding argument {key!r} must be a string of at most {max_len} chars")
    return value


def _entropy() -> str:
    """A fresh ChaCha20 key and nonce (base64) seeding the isolate's ``crypto``."""
    return base64.b64encode(secrets.token_bytes(44)).decode("ascii")
