"""Benchmark: PluginLoader.scan() throughput vs plain hashlib.sha256 over the same files.

Creates N signed bundles with 1 MiB random artifacts in a temp dir, then reports
the best of several runs of each (fresh loader per run; page cache warm for both).
Target: loader throughput >= 0.8 x plain hashing.

    python3 bench/loader.py [--bundles 200] [--size-mib 1] [--runs 5]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lattice.plugins.loader import PluginLoader
from lattice.plugins.manifest import Manifest
from lattice.plugins.signing import sign_manifest
from lattice.plugins.trust import TrustPolicy, Verifier


class NullSink:
    def append(self, **_: Any) -> None:
        pass


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


def file_digest(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as fh:
            hashlib.file_digest(fh, "sha256").hexdigest()


def best(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    key = Ed25519PrivateKey.generate()
    pub = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    policy = TrustPolicy.from_json(json.dumps({"trusted_publishers": {"bench.dev": pub.decode()}}))
    verifier = Verifier(policy)
    total = args.bundles * args.size_mib * 1024 * 1024

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_bundles(root, args.bundles, args.size_mib * 1024 * 1024, key)

        def scan() -> None:
            loader = PluginLoader(plugin_dir=root, verifier=verifier, audit=NullSink())
            loader.scan()
            if len(loader.loaded) != args.bundles:
                raise SystemExit(f"expected {args.bundles} loaded, got {len(loader.loaded)}")

        plain_hash(paths)  # warm the page cache
        plain = best(lambda: plain_hash(paths), args.runs)
        fdig = best(lambda: file_digest(paths), args.runs)
        loader = best(scan, args.runs)

    mib = total / (1024 * 1024)
    print(f"bundles: {args.bundles} x {args.size_mib} MiB, best of {args.runs}")
    print(f"plain hashlib.sha256: {plain * 1000:8.1f} ms  {mib / plain:8.1f} MiB/s")
    print(f"hashlib.file_digest:  {fdig * 1000:8.1f} ms  {mib / fdig:8.1f} MiB/s")
    print(f"PluginLoader.scan():  {loader * 1000:8.1f} ms  {mib / loader:8.1f} MiB/s")
    print(f"ratio vs plain read+sha256: {plain / loader:.3f}  (target >= 0.8)")
    print(f"ratio vs hashlib.file_digest: {fdig / loader:.3f}")


if __name__ == "__main__":
    main()
