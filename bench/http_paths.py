"""The hot HTTP paths of a real ``lattice serve``, measured from outside.

    python3 bench/http_paths.py [--seconds 8] [--rounds 3] [--only healthz,kv,...]

One ``lattice serve`` (default settings, SQLite, one process) and one bare
async FastAPI route on the same uvicorn settings, each in its own process,
are loaded in turn by ``wrk -t1 -c32``; every subject run is paired with a
bare run right before it, and the pairs alternate for ``--rounds`` rounds.
For each path the script prints the ratio of its req/s to the paired bare
run (min / median / max over the rounds), p50/p99 latency, server CPU per
request (including a JS worker's sandbox processes) and the machine load.

With ``--workerd`` (default on when npm can fetch it) the JS KV worker is
also compared with Cloudflare's ``workerd`` serving the same script.

Targets (issue 10): healthz >= 0.9, template >= 0.8, kv >= 0.7,
js-kv >= 0.5, js-kv vs workerd >= 0.25.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from harness import (
    Run,
    Server,
    admin_token,
    bare_server,
    lattice_server,
    loadavg,
    require_wrk,
    spread,
    workerd_binary,
    workerd_server,
    wrk,
)

TEMPLATE = "hello {{path}} {{kv:default/message}}"
JS_CONST = 'export default { async fetch() { return new Response("hello /x world"); } };'
JS_KV = (
    "export default { async fetch(request, env) {\n"
    '  return new Response("hello /x " + (await env.KV.get("message")));\n'
    "} };\n"
)


@dataclass
class Path_:
    name: str
    path: str
    target: float | None
    auth: bool = False
    runs: list[tuple[Run, Run]] = field(default_factory=list)  # (baseline, subject)


def deploy(base: str, token: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        c.put("/api/kv/default/message", content=b"world").raise_for_status()
        workers = {
            "tmpl": {"kind": "template", "source": TEMPLATE, "capabilities": ["kv:read"]},
            "jsconst": {"kind": "js", "source": JS_CONST, "capabilities": []},
            "jskv": {
                "kind": "js",
                "source": JS_KV,
                "capabilities": ["kv:read"],
                "bindings": {"KV": {"kv": "default"}},
            },
        }
        for name, body in workers.items():
            body["capabilities"] = ["worker:route", *body["capabilities"]]  # type: ignore[list-item]
            c.put(f"/api/workers/{name}", json={**body, "public": True}).raise_for_status()
        for name in ("tmpl", "jsconst", "jskv"):
            r = c.get(f"/w/{name}/x")
            if r.text != "hello /x world":
                raise SystemExit(f"worker {name} answered {r.status_code} {r.text!r}")


def report(paths: list[Path_], baseline: str) -> bool:
    print(f"\nratio = req/s of the path / req/s of {baseline} in the paired run")
    print(
        f"{'path':10} {'ratio min/med/max':>19} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU µs/req':>10} {'base µs':>8} {'errors':>6}  target"
    )
    ok = True
    for p in paths:
        if not p.runs:
            continue
        ratios = [s.rps / b.rps for b, s in p.runs]
        med = statistics.median(ratios)
        subj = [s for _, s in p.runs]
        base_cpu = statistics.median(b.cpu_us for b, _ in p.runs)
        errors = sum(s.errors for s in subj)
        met = p.target is None or med >= p.target
        ok = ok and met and errors == 0
        target = "—" if p.target is None else f">= {p.target} {'ok' if met else 'MISSED'}"
        print(
            f"{p.name:10} {spread(ratios):>19} {statistics.median(s.rps for s in subj):8.0f} "
            f"{statistics.median(s.p50_ms for s in subj):7.2f} "
            f"{statistics.median(s.p99_ms for s in subj):7.2f} "
            f"{statistics.median(s.cpu_us for s in subj):10.0f} {base_cpu:8.0f} {errors:6}  "
            f"{target}"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", default="", help="comma-separated path names")
    parser.add_argument("--no-workerd", action="store_true", help="skip the workerd comparison")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for lattice serve (repeatable)"
    )
    opts = parser.parse_args()
    require_wrk()
    paths = [
        Path_("healthz", "/healthz", 0.9),
        Path_("template", "/w/tmpl/x", 0.8),
        Path_("kv", "/api/kv/default/message", 0.7, auth=True),
        Path_("js-const", "/w/jsconst/x", None),
        Path_("js-kv", "/w/jskv/x", 0.5),
    ]
    if opts.only:
        wanted = set(opts.only.split(","))
        paths = [p for p in paths if p.name in wanted]
    extra = dict(kv.split("=", 1) for kv in opts.env)
    print(f"load average before: {loadavg()} on {os.cpu_count()} CPUs")
    with (
        tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp,
        lattice_server(Path(tmp), **extra) as lattice,
        bare_server() as bare,
    ):
        token = admin_token(lattice.base)
        deploy(lattice.base, token)
        run = lambda server, p, s: wrk(  # noqa: E731
            server,
            p.path,
            seconds=s,
            connections=opts.connections,
            headers={"Authorization": f"Bearer {token}"} if p.auth else None,
        )
        for p in paths:  # warm-up: pools, caches, the JIT of each isolate
            run(lattice, p, 2)
        run(bare, paths[0], 2)
        for round_no in range(opts.rounds):
            for p in paths:
                b = wrk(bare, p.path, seconds=opts.seconds, connections=opts.connections)
                s = run(lattice, p, opts.seconds)
                p.runs.append((b, s))
                print(
                    f"round {round_no + 1} {p.name:9} bare {b.rps:7.0f}/s  "
                    f"lattice {s.rps:7.0f}/s  ratio {s.rps / b.rps:.2f}  "
                    f"cpu {s.cpu_us:.0f} µs/req  load {loadavg()}",
                    flush=True,
                )
        ok = report(paths, "bare")
        js_kv = next((p for p in paths if p.name == "js-kv"), None)
        if js_kv is not None and not opts.no_workerd:
            ok = compare_workerd(lattice, js_kv, opts) and ok
    print(f"load average after: {loadavg()}")
    sys.exit(0 if ok else 1)


def compare_workerd(lattice: Server, js_kv: Path_, opts: argparse.Namespace) -> bool:
    binary = workerd_binary()
    if binary is None:
        print("\nworkerd: not available (npm could not install it); comparison skipped")
        return True
    pair = Path_("js-kv/workerd", "/x", 0.25)
    with workerd_server(binary, JS_KV, {"message": "world"}) as wd:
        r = httpx.get(wd.base + "/x")
        if r.text != "hello /x world":
            raise SystemExit(f"workerd answered {r.status_code} {r.text!r}")
        wrk(wd, "/x", seconds=2, connections=opts.connections)
        for round_no in range(opts.rounds):
            b = wrk(wd, "/x", seconds=opts.seconds, connections=opts.connections)
            s = wrk(lattice, js_kv.path, seconds=opts.seconds, connections=opts.connections)
            pair.runs.append((b, s))
            print(
                f"round {round_no + 1} workerd {b.rps:7.0f}/s  lattice js-kv {s.rps:7.0f}/s  "
                f"ratio {s.rps / b.rps:.2f}",
                flush=True,
            )
    return report([pair], "workerd")


if __name__ == "__main__":
    main()
