"""Access lines: the same format as every other line, in order, never a secret."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lattice.core import logging as lattice_logging

LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>[\w.]+) "
    r"\[(?P<rid>[^\]]+)\] (?P<message>.*)"
)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger("lattice")
    saved = (root.handlers[:], root.level, root.propagate, lattice_logging._handler)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    lattice_logging.configure_logging("info")
    yield out
    root.handlers[:], root.level, root.propagate, lattice_logging._handler = saved


def _lines(out: io.StringIO) -> list[re.Match[str]]:
    found = [LINE.fullmatch(line) for line in out.getvalue().splitlines()]
    assert all(found), out.getvalue()
    return [m for m in found if m is not None]


def test_outside_an_event_loop_a_line_is_written_at_once(stream: io.StringIO) -> None:
    lattice_logging.access("rid-0001", "GET /healthz 200 0.4ms")
    (line,) = _lines(stream)
    assert line["level"] == "INFO" and line["logger"] == "lattice.access"
    assert line["rid"] == "rid-0001" and line["message"] == "GET /healthz 200 0.4ms"


def test_access_lines_have_the_format_of_ordinary_records(stream: io.StringIO) -> None:
    logging.getLogger("lattice.x").warning("ordinary")
    lattice_logging.access("abc", "GET / 404 1.0ms")
    first, second = _lines(stream)
    assert (first["level"], first["logger"], first["rid"]) == ("WARNING", "lattice.x", "-")
    assert (second["level"], second["logger"]) == ("INFO", "lattice.access")


async def test_in_a_loop_lines_are_batched_and_stay_in_order(stream: io.StringIO) -> None:
    for i in range(5):
        lattice_logging.access(f"rid-{i}", f"GET /a {i}")
    assert stream.getvalue() == ""  # buffered
    logging.getLogger("lattice.api").error("boom")  # flushes the buffer first
    lines = _lines(stream)
    assert [m["message"] for m in lines] == [*(f"GET /a {i}" for i in range(5)), "boom"]


async def test_buffered_lines_are_written_without_more_traffic(stream: io.StringIO) -> None:
    lattice_logging.access("rid-late", "GET /late 200")
    deadline = time.monotonic() + 30
    while "GET /late" not in stream.getvalue():
        assert time.monotonic() < deadline, "the buffered line was never written"
        await asyncio.sleep(lattice_logging.ACCESS_FLUSH_SECONDS)
    assert _lines(stream)[0]["rid"] == "rid-late"


async def test_a_full_buffer_is_written_at_once(stream: io.StringIO) -> None:
    for i in range(lattice_logging._ACCESS_BATCH):
        lattice_logging.access("r", f"GET /{i}")
    assert len(_lines(stream)) == lattice_logging._ACCESS_BATCH


def test_above_info_no_access_lines(stream: io.StringIO) -> None:
    logging.getLogger("lattice").setLevel("WARNING")
    lattice_logging.access("r", "GET / 200")
    lattice_logging.flush_access()
    assert stream.getvalue() == ""


def test_without_configure_logging_access_is_an_ordinary_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="lattice.access"):
        lattice_logging.access("r", "GET /plain 200")
    assert [r.getMessage() for r in caplog.records] == ["GET /plain 200"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_logs_each_request_with_its_id_and_route_template_only(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LATTICE_DATA_DIR": str(tmp_path / "data"),
        "LATTICE_LISTEN": f"127.0.0.1:{port}",
        "LATTICE_ADMIN_PASSWORD": "access-log-password-1",
    }
    env.pop("LATTICE_DATABASE_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "lattice", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        r = httpx.get(
            base + "/api/kv/secret-bucket/secret-key",
            headers={
                "authorization": "Bearer lat_abcdefgh_supersecretvalue",
                "x-request-id": "trace-12345",
            },
        )
        assert r.status_code == 401 and r.headers["x-request-id"] == "trace-12345"
        generated = httpx.get(base + "/healthz").headers["x-request-id"]
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    access = [
        m for m in map(LINE.fullmatch, err.splitlines()) if m and m["logger"] == "lattice.access"
    ]
    by_id = {m["rid"]: m["message"] for m in access}
    assert by_id["trace-12345"].startswith("GET /api/kv/{bucket}/{key:path} 401 ")
    assert by_id[generated].startswith("GET /healthz 200 ")
    assert "secret-key" not in err and "secret-bucket" not in err and "supersecret" not in err
