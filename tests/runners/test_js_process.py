"""The server side of a JS sandbox: what it checks of the child, and how a
conversation that breaks off is recovered.  Real sandbox processes throughout;
the hosts are in-memory (the JsHost contract)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from lattice.errors import WorkerError, WorkerTimeout
from lattice.plugins.runners.js import (
    MAX_HOST_CALLS,
    Binding,
    HostOp,
    JsLimits,
    check_ops,
    request_outcome,
)
from lattice.plugins.runners.js_process import SandboxedJsWorker
from lattice.plugins.runners.js_wire import MAX_FRAME, FrameBuffer, FrameError, FrameReader, frame
from lattice.plugins.runners.js_wire import write_all as wire_write_all
from tests.runners.conftest import MemoryHost, get, text

KV_JS = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/loop") while (true) {}
    return new Response("v=" + (await env.CONFIG.get("k")));
  },
};"""
BINDINGS = {"CONFIG": Binding(kind="kv", bucket="default")}


# -- what the server checks of a child it does not trust --------------------------


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        ({"id": 1, "op": "kv_get", "binding": "OTHER", "key": "k"}, "not declared"),
        ({"id": 1, "op": "static_get", "binding": "CONFIG", "path": "a"}, "not declared"),
        ({"id": 1, "op": "kv_get", "binding": "CONFIG", "key": 7}, "must be a string"),
        ({"id": 1, "op": "kv_get", "binding": "CONFIG", "key": "k" * 513}, "at most 512"),
        (
            {"id": 1, "op": "kv_list", "binding": "CONFIG", "prefix": "", "limit": 10**6},
            "limit must be an integer",
        ),
        ({"id": 1, "op": "exec", "binding": "CONFIG"}, "unknown binding call"),
    ],
)
def test_each_binding_call_is_checked_on_the_server(op: dict[str, object], reason: str) -> None:
    (refused,) = check_ops([op], BINDINGS, made=0)
    assert isinstance(refused, tuple)
    call_id, message = refused
    assert call_id == 1 and reason in message


def test_a_good_binding_call_names_the_declared_bucket() -> None:
    op = {"id": 3, "op": "kv_get", "binding": "CONFIG", "key": "k", "bucket": "secret"}
    assert check_ops([op], BINDINGS, made=0) == [HostOp(3, "kv_get", "default", ("k",))]


@pytest.mark.parametrize(
    ("ops", "made"),
    [
        ([], 0),
        ("kv_get", 0),
        ([{"op": "kv_get", "binding": "CONFIG", "key": "k"}], 0),  # no id
        ([["kv_get"]], 0),
        ([{"id": 1, "op": "kv_get", "binding": "CONFIG", "key": "k"}], MAX_HOST_CALLS),
    ],
    ids=["empty", "not-a-list", "no-id", "not-an-object", "over-the-limit"],
)
def test_a_malformed_batch_fails_the_request(ops: object, made: int) -> None:
    with pytest.raises(WorkerError):
        check_ops(ops, BINDINGS, made=made)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"t": "done", "status": 99, "headers": [], "body": ""}, "invalid status"),
        ({"t": "done", "status": 200, "headers": [["x-a", "b\nc"]], "body": ""}, "invalid value"),
        ({"t": "done", "status": 200, "headers": [["bad name", "v"]], "body": ""}, "header name"),
        ({"t": "done", "status": 200, "headers": [], "body": "!!"}, "malformed body"),
        ({"t": "done", "status": 200, "headers": [], "body": "QUFBQUFB"}, "exceeds 4 bytes"),
        ({"t": "ready"}, "unknown message"),
    ],
)
def test_a_response_from_the_child_is_checked_on_the_server(
    message: dict[str, object], reason: str
) -> None:
    outcome, _ = request_outcome(message, 4)
    assert isinstance(outcome, WorkerError)
    assert reason in outcome.message


# -- conversations that break off ---------------------------------------------------


class SlowHost(MemoryHost):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def kv_get(self, bucket: str, key: str) -> str | None:
        await self.release.wait()
        return await super().kv_get(bucket, key)


async def test_slow_binding_calls_end_the_request_and_the_child_serves_the_next() -> None:
    host = SlowHost()
    host.kv["default"]["k"] = "1"
    worker = await SandboxedJsWorker.create(
        name="slow",
        source=KV_JS,
        bindings={"CONFIG": {"kv": "default"}},
        host=host,
        limits=JsLimits(pool_size=1, host_wall_ms=100),
    )
    try:
        (pid,) = worker.pids
        with pytest.raises(WorkerTimeout, match="binding calls exceeded their time budget"):
            await worker.handle(get("http://host/"))
        host.release.set()
        assert text(await worker.handle(get("http://host/"))) == "v=1"
        assert worker.pids == [pid]  # the same process: the abort kept it in step
    finally:
        await worker.close()


async def test_a_cancelled_request_ends_its_child_and_the_next_one_starts_fresh() -> None:
    host = MemoryHost()
    host.kv["default"]["k"] = "2"
    worker = await SandboxedJsWorker.create(
        name="cancel",
        source=KV_JS,
        bindings={"CONFIG": {"kv": "default"}},
        host=host,
        limits=JsLimits(pool_size=1, cpu_ms=30_000),
    )
    try:
        (pid,) = worker.pids
        spinning = asyncio.create_task(worker.handle(get("http://host/loop")))
        await asyncio.sleep(0.2)
        spinning.cancel()
        with pytest.raises(asyncio.CancelledError):
            await spinning
        assert text(await worker.handle(get("http://host/"))) == "v=2"
        assert worker.pids != [pid]  # a child left mid-request is never reused
    finally:
        await worker.close()


async def test_a_child_that_breaks_the_protocol_is_ended() -> None:
    host = MemoryHost()
    host.kv["default"]["k"] = "3"
    worker = await SandboxedJsWorker.create(
        name="garbage",
        source=KV_JS,
        bindings={"CONFIG": {"kv": "default"}},
        host=host,
        limits=JsLimits(pool_size=1),
    )
    try:
        (child,) = worker._idle
        # what a compromised sandbox could write: a frame of another kind, not JSON
        child.pipe_data_received(1, frame(b"x", b"{not json"))
        assert not child.alive
        assert text(await worker.handle(get("http://host/"))) == "v=3"
    finally:
        await worker.close()


# -- framing ----------------------------------------------------------------------------


def test_frames_arrive_whole_however_the_bytes_are_split() -> None:
    stream = frame(b"m", b'{"t":"a"}') + frame(b"h", b"[1,2]") + frame(b"a", b"")
    buffer = FrameBuffer()
    got = []
    for i in range(len(stream)):
        got += buffer.feed(stream[i : i + 1])
    assert got == [(b"m", b'{"t":"a"}'), (b"h", b"[1,2]"), (b"a", b"")]
    assert buffer.pending == 0


@pytest.mark.parametrize("size", [0, MAX_FRAME + 1])
def test_a_frame_outside_the_limits_ends_the_conversation(size: int) -> None:
    with pytest.raises(FrameError):
        FrameBuffer().feed(size.to_bytes(4, "big") + b"m")


def test_large_frames_cross_a_pipe_intact() -> None:
    read_fd, write_fd = os.pipe()
    payload = os.urandom(3 * 1024 * 1024)  # many times a pipe's buffer
    writer = threading.Thread(target=wire_write_all, args=(write_fd, frame(b"r", payload)))
    writer.start()
    try:
        assert FrameReader(read_fd).read(timeout=60) == (b"r", payload)
    finally:
        writer.join()
        os.close(write_fd)
    assert FrameReader(read_fd).read() is None  # end of stream
    os.close(read_fd)


def test_waiting_for_a_frame_can_time_out() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(TimeoutError):
            FrameReader(read_fd).read(timeout=0.01)
    finally:
        os.close(read_fd)
        os.close(write_fd)
