"""Shared pieces of the HTTP benchmarks: servers in their own processes, an
external load generator, and the server's CPU per request.

Every HTTP benchmark drives a real ``lattice serve`` (default settings, one
process, SQLite in a temporary data dir, loopback) with ``wrk`` and compares
it with a baseline measured in the same run:

* ``bare``: an async FastAPI route on the same uvicorn settings
  (``lattice.app.server_config``), in its own process;
* ``workerd``: Cloudflare's runtime, from the npm registry, when it can be
  installed (``--workerd`` benches only).

Server CPU is read from ``/proc`` (utime + stime of the server and of its
live children, so a JS worker's sandbox processes count), before and after
each load run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-admin-password-123"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_TICK = os.sysconf("SC_CLK_TCK")

BARE_APP = textwrap.dedent(
    """
    import sys
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from lattice.app import server_config
    from lattice.config import Settings

    app = FastAPI()

    @app.get("/{path:path}")
    async def bare(path: str) -> PlainTextResponse:
        return PlainTextResponse("hello /x world")

    settings = Settings(listen=sys.argv[1], data_dir="/nonexistent")
    uvicorn.Server(server_config(app, settings)).run()
    """
)


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{what} did not answer {url} within 90 s")


def _env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src") + (os.pathsep + path if path else ""),
        **extra,
    }


@dataclass
class Server:
    name: str
    base: str
    proc: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """utime + stime of the process and of its live children."""
        return process_tree_cpu(self.proc.pid)


@contextmanager
def lattice_server(tmp: Path, **env: str) -> Iterator[Server]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lattice", "serve"],
        env=_env(
            LATTICE_DATA_DIR=str(tmp / "data"),
            LATTICE_LISTEN=f"127.0.0.1:{port}",
            LATTICE_ADMIN_PASSWORD=PASSWORD,
            **env,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz", proc, "lattice serve")
        yield Server("lattice", base, proc)
    finally:
        _stop(proc)


@contextmanager
def bare_server() -> Iterator[Server]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, f"127.0.0.1:{port}"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/", proc, "the bare FastAPI server")
        yield Server("bare", base, proc)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def admin_token(base: str) -> str:
    with httpx.Client(base_url=base, timeout=30) as c:
        login = c.post("/api/login", json={"username": "admin", "password": PASSWORD})
        login.raise_for_status()
        r = c.post(
            "/api/tokens",
            json={"name": "bench", "scopes": ["*"]},
            headers={"x-csrf-token": login.json()["csrf_token"]},
        )
        r.raise_for_status()
        return str(r.json()["token"])


def process_tree_cpu(pid: int) -> float:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
            found.extend(_children(int(entry)))
    return found


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU per request
    errors: int  # non-2xx/3xx answers and socket errors


def wrk(
    server: Server,
    path: str,
    *,
    seconds: int,
    connections: int = 32,
    headers: dict[str, str] | None = None,
) -> Run:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in (headers or {}).items():
        args += ["-H", f"{k}: {v}"]
    cpu0 = server.cpu_seconds()
    out = subprocess.run(
        [*args, server.base + path], capture_output=True, text=True, check=True
    ).stdout
    cpu = server.cpu_seconds() - cpu0
    rps = float(_grab(r"^Requests/sec:\s+([\d.]+)", out))
    requests = int(_grab(r"^\s*(\d+) requests in", out))
    errors = int(_find(r"Non-2xx or 3xx responses:\s+(\d+)", out) or 0)
    sock = _find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out, 0)
    if sock:
        errors += sum(int(x) for x in sock)
    return Run(
        rps=rps,
        p50_ms=_latency(out, "50%"),
        p99_ms=_latency(out, "99%"),
        cpu_us=cpu / max(requests, 1) * 1e6,
        errors=errors,
    )


def _find(pattern: str, text: str, group: int | None = 1) -> str | tuple[str, ...] | None:
    m = re.search(pattern, text, re.M)
    if not m:
        return None
    return m.groups() if group == 0 else m.group(group or 1)


def _grab(pattern: str, text: str) -> str:
    found = _find(pattern, text)
    if not isinstance(found, str):
        raise SystemExit(f"could not read wrk's output ({pattern}):\n{text}")
    return found


def _latency(out: str, pct: str) -> float:
    m = re.search(rf"^\s*{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        raise SystemExit(f"could not read wrk's {pct} latency:\n{out}")
    return float(m[1]) * _UNITS[m[2]]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def spread(values: list[float]) -> str:
    """min / median / max."""
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def workerd_binary() -> Path | None:
    """Cloudflare's workerd from the npm registry, cached; None when npm cannot get it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lattice-bench"
    found = list((cache / "node_modules").glob("@cloudflare/workerd-*/bin/workerd"))
    if not found and shutil.which("npm"):
        cache.mkdir(parents=True, exist_ok=True)
        print("installing workerd from the npm registry ...", flush=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "workerd"],
            capture_output=True,
            check=False,
            timeout=600,
        )
        found = list((cache / "node_modules").glob("@cloudflare/workerd-*/bin/workerd"))
    return found[0] if found else None


@contextmanager
def workerd_server(binary: Path, script: str, kv: dict[str, str]) -> Iterator[Server]:
    """Serve ``script`` (module syntax) with a KV binding ``KV`` holding ``kv``.

    workerd's KV binding talks to a service over HTTP (GET /<key>); here that
    service is a second worker answering from memory, which is cheaper than
    any real store, so the ratio against workerd is a floor."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lattice-workerd-") as tmp:
        d = Path(tmp)
        (d / "main.js").write_text(script)
        values = ",".join(f"{k!r}: {v!r}" for k, v in kv.items())
        (d / "kv.js").write_text(
            "const DATA = {" + values + "};\n"
            "export default { async fetch(request) {\n"
            "  const key = decodeURIComponent(new URL(request.url).pathname.slice(1));\n"
            "  if (request.method === 'GET' && key in DATA) return new Response(DATA[key]);\n"
            "  return new Response(null, { status: 404 });\n"
            "} };\n"
        )
        (d / "config.capnp").write_text(
            textwrap.dedent(
                f"""
                using Workerd = import "/workerd/workerd.capnp";
                const config :Workerd.Config = (
                  services = [
                    (name = "main", worker = .mainWorker),
                    (name = "kv", worker = .kvWorker),
                  ],
                  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (),
                              service = "main")],
                );
                const mainWorker :Workerd.Worker = (
                  modules = [(name = "main.js", esModule = embed "main.js")],
                  compatibilityDate = "2024-09-23",
                  bindings = [(name = "KV", kvNamespace = "kv")],
                );
                const kvWorker :Workerd.Worker = (
                  modules = [(name = "kv.js", esModule = embed "kv.js")],
                  compatibilityDate = "2024-09-23",
                );
                """
            )
        )
        proc = subprocess.Popen(
            [str(binary), "serve", str(d / "config.capnp")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base + "/", proc, "workerd")
            yield Server("workerd", base, proc)
        finally:
            _stop(proc)
