"""Plugin loader: a full scan vs raw read+sha256, and a rescan of unchanged bundles vs a full scan.

Creates N signed bundles with random artifacts in a temporary directory, waits
until they have settled (``loader.SETTLE_NS``: files changed just before a scan
are never cached), then runs rounds that alternate the order of:

* **baseline**: open, read and ``hashlib.sha256`` every artifact (1 MiB reads);
* **full scan**: a fresh ``PluginLoader.scan()`` (``O_NOFOLLOW`` opens, fstat,
  manifest decode, streamed hash, Ed25519 verify);
* **rescan**: ``scan()`` again on a loader that has scanned the same unchanged
  directory before (the verdict cache keyed on fstat identity, manifest bytes
  and trust policy).

Page cache warm for all three.  Reported per round, then min / median / max:
full scan / baseline throughput (target >= 0.8) and rescan time / full scan
time (target <= 0.1).

    python3 bench/loader.py [--bundles 200] [--size-mib 1] [--rounds 7]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lattice.plugins import loader as loader_module
from lattice.plugins.loader import PluginLoader
from lattice.plugins.manifest import Manifest
from lattice.plugins.signing import sign_manifest
from lattice.plugins.trust import TrustPolicy, Verifier


class NullSink:
    def append(self, **_: Any) -> None:
        pass


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def spread(values: list[float]) -> str:
    return f"min {min(values):.3f}  median {statistics.median(values):.3f}  max {max(values):.3f}"


def make_bundles(root: Path, count: int, size: int, key: Ed25519PrivateKey) -> list[Path]:
    artifacts = []
    for i in range(count):
        bundle = root / f"bundle-{i:04d}"
        bundle.mkdir()
        data = os.urandom(size)
        (bundle / "artifact").write_bytes(data)
        manifest = Manifest(
            id=f"bench.plugin-{i:04d}",
            name=f"Bench {i}",
            type="wasm",
            capabilities=("kv:read", "kv:write"),
            version="1.0.0",
            entrypoint="main",
            publisher="",
            digest_sha256=hashlib.sha256(data).hexdigest(),
            signature_ed25519="",
        )
        (bundle / "manifest.json").write_bytes(sign_manifest(manifest, key, "bench.dev").to_json())
        artifacts.append(bundle / "artifact")
    return artifacts


def plain_hash(paths: list[Path]) -> None:
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                h.update(chunk)
        h.hexdigest()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    policy = TrustPolicy.from_json(json.dumps({"trusted_publishers": {"bench.dev": pub.decode()}}))
    verifier = Verifier(policy)
    mib = args.bundles * args.size_mib

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load before: {loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_bundles(root, args.bundles, args.size_mib * 1024 * 1024, key)
        settle = loader_module.SETTLE_NS / 1e9 + 0.2
        print(f"{args.bundles} bundles x {args.size_mib} MiB; waiting {settle:.1f} s to settle")
        time.sleep(settle)

        def full() -> None:
            fresh = PluginLoader(plugin_dir=root, verifier=verifier, audit=NullSink())
            fresh.scan()
            if len(fresh.loaded) != args.bundles:
                raise SystemExit(f"expected {args.bundles} loaded, got {len(fresh.loaded)}")

        warm = PluginLoader(plugin_dir=root, verifier=verifier, audit=NullSink())
        warm.scan()

        def rescan() -> None:
            if warm.scan() or len(warm.loaded) != args.bundles:
                raise SystemExit("an unchanged rescan reported a change")

        plain_hash(paths)  # warm the page cache
        full()
        sides: dict[str, Callable[[], None]] = {
            "baseline": lambda: plain_hash(paths),
            "full": full,
            "rescan": rescan,
        }
        scan_vs_plain: list[float] = []
        rescan_vs_full: list[float] = []
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            t = {name: timed(sides[name]) for name in order}
            scan_vs_plain.append(t["baseline"] / t["full"])
            rescan_vs_full.append(t["rescan"] / t["full"])
            print(
                f"  round {r + 1}: baseline {t['baseline'] * 1000:7.1f} ms "
                f"({mib / t['baseline']:6.0f} MiB/s)  full scan {t['full'] * 1000:7.1f} ms "
                f"({mib / t['full']:6.0f} MiB/s)  rescan {t['rescan'] * 1000:6.2f} ms"
            )
    print(f"full scan / raw read+sha256 throughput: {spread(scan_vs_plain)}  (target >= 0.8)")
    print(f"rescan unchanged / full scan time:      {spread(rescan_vs_full)}  (target <= 0.1)")
    print(f"load after: {loadavg()}")


if __name__ == "__main__":
    main()
