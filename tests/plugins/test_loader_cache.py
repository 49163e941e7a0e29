"""Rescans reuse a bundle's verdict only while nothing it came from changed.

The cache key is the opened artifact's fstat identity (device, inode, size,
mtime and ctime in ns), the manifest bytes and the verifier with its policy.
Each test first lets the filesystem clock move past the files it wrote
(``settle``) - not a timing assumption: it waits until a new file gets a later
ctime - so the loader with ``SETTLE_NS = 0`` really caches, and then checks
that a change is still seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lattice.plugins import loader as loader_module
from lattice.plugins.loader import PluginLoader, ScanDiff
from lattice.plugins.trust import TrustPolicy, Verifier
from tests.plugins.bundles import (
    Publisher,
    RecordingSink,
    make_bundle,
    make_publisher,
    read_manifest,
    sign_dict,
    write_manifest,
)


@pytest.fixture
def pub() -> Publisher:
    return make_publisher("acme.dev")


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    return d


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Cache everything that was read (no settle margin) and count artifact hashes."""
    monkeypatch.setattr(loader_module, "SETTLE_NS", 0)
    calls: list[int] = []
    real = loader_module._hash_capped

    def counting(*args: Any, **kw: Any) -> tuple[str, int]:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(loader_module, "_hash_capped", counting)
    yield calls


def settle(path: Path) -> None:
    """Return once the filesystem clock has moved past ``path``'s ctime, so a
    change made now gets a different ctime (waits on the clock, at most 2 s)."""
    ctime = path.stat().st_ctime_ns
    probe = path.parent / ".settle-probe"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > ctime:
            probe.unlink()
            return
        time.sleep(0.002)
    raise AssertionError("the filesystem clock did not move")  # pragma: no cover


def new_loader(plugin_dir: Path, pub: Publisher) -> tuple[PluginLoader, RecordingSink]:
    policy = TrustPolicy.from_json(json.dumps({"trusted_publishers": {pub.id: pub.public_b64}}))
    sink = RecordingSink()
    return PluginLoader(plugin_dir=plugin_dir, verifier=Verifier(policy), audit=sink), sink


def signed(root: Path, pub: Publisher, **kw: Any) -> Path:
    return make_bundle(root, key=pub.key, publisher=pub.id, **kw)


def reasons(loader: PluginLoader) -> dict[str, str]:
    return {r.bundle: r.reason for r in loader.rejected}


def test_an_unchanged_bundle_is_not_hashed_again(
    plugins: Path, pub: Publisher, hashed: list[int]
) -> None:
    signed(plugins, pub, id="a.plugin")
    make_bundle(plugins, id="bad.plugin", signed=False)  # rejected verdicts are kept too
    loader, sink = new_loader(plugins, pub)
    assert loader.scan() and len(hashed) == 2
    first = loader.loaded["a.plugin"]
    events = list(sink.events)
    for _ in range(3):
        assert not loader.scan()
    assert len(hashed) == 2
    assert loader.loaded["a.plugin"] is first and sink.events == events
    assert "bad.plugin" in reasons(loader)


def test_same_size_rewrite_with_restored_mtime_is_a_digest_mismatch(
    plugins: Path, pub: Publisher, hashed: list[int]
) -> None:
    b = signed(plugins, pub, id="tamper.plugin", artifact=b"good bytes")
    loader, sink = new_loader(plugins, pub)
    loader.scan()
    artifact = b / "artifact"
    st = artifact.stat()
    settle(artifact)
    with open(artifact, "r+b") as fh:  # same inode, same size, then the old mtime back
        fh.write(b"evil bytes")
    os.utime(artifact, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = artifact.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    diff = loader.scan()
    assert diff.removed == ("tamper.plugin",)
    assert "artifact digest mismatch" in reasons(loader)["tamper.plugin"]
    assert sink.actions()[-2:] == [
        ("plugin.unloaded", "tamper.plugin"),
        ("plugin.rejected", "tamper.plugin"),
    ]


def test_a_different_inode_is_hashed_again(
    plugins: Path, pub: Publisher, hashed: list[int]
) -> None:
    b = signed(plugins, pub, id="swap.plugin", artifact=b"good bytes")
    loader, _sink = new_loader(plugins, pub)
    loader.scan()
    artifact = b / "artifact"
    st = artifact.stat()
    settle(artifact)
    # same content first: a new inode is re-hashed and still loads, nothing changes
    (b / ".new").write_bytes(b"good bytes")
    os.replace(b / ".new", artifact)
    assert artifact.stat().st_ino != st.st_ino
    assert not loader.scan() and len(hashed) == 2
    # then other bytes of the same size with the old times
    settle(artifact)
    (b / ".new").write_bytes(b"evil bytes")
    os.utime(b / ".new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(b / ".new", artifact)
    assert loader.scan().removed == ("swap.plugin",)
    assert "artifact digest mismatch" in reasons(loader)["swap.plugin"]


def test_a_touched_artifact_with_the_same_content_still_loads(
    plugins: Path, pub: Publisher, hashed: list[int]
) -> None:
    b = signed(plugins, pub, id="touch.plugin")
    loader, sink = new_loader(plugins, pub)
    loader.scan()
    first = loader.loaded["touch.plugin"]
    settle(b / "artifact")
    os.utime(b / "artifact")
    assert not loader.scan()  # re-hashed, same digest: no change, no audit
    assert len(hashed) == 2
    assert loader.loaded["touch.plugin"].digest_sha256 == first.digest_sha256
    assert sink.actions() == [("plugin.loaded", "touch.plugin")]


def test_a_changed_manifest_is_verified_again(
    plugins: Path, pub: Publisher, hashed: list[int]
) -> None:
    b = signed(plugins, pub, id="man.plugin")
    loader, _sink = new_loader(plugins, pub)
    loader.scan()
    m = read_manifest(b)
    # a re-signed manifest (new version) over the unchanged artifact: verified and loaded
    write_manifest(b, sign_dict({**m, "version": "2.0.0"}, pub.key))
    assert loader.scan() == ScanDiff(changed=("man.plugin",))
    assert loader.loaded["man.plugin"].manifest.version == "2.0.0"
    # an edited manifest whose signature no longer covers it: rejected
    write_manifest(b, {**read_manifest(b), "capabilities": ["kv:read", "kv:write"]})
    assert loader.scan().removed == ("man.plugin",)
    assert "signature" in reasons(loader)["man.plugin"]


def test_a_changed_trust_policy_is_applied_to_cached_bundles(
    plugins: Path, pub: Publisher, hashed: list[int]
) -> None:
    signed(plugins, pub, id="trust.plugin")
    loader, _sink = new_loader(plugins, pub)
    loader.scan()
    other = make_publisher("other.dev")
    loader.verifier = Verifier(
        TrustPolicy.from_json(json.dumps({"trusted_publishers": {other.id: other.public_b64}}))
    )
    assert loader.scan().removed == ("trust.plugin",)
    assert "not trusted" in reasons(loader)["trust.plugin"]


def test_a_fresh_artifact_is_hashed_on_every_scan_until_it_settles(
    plugins: Path, pub: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with the default margin a file written just now is never taken from the cache
    # (a rewrite in the same clock tick could keep its ctime)
    monkeypatch.setattr(loader_module, "SETTLE_NS", 3600 * 10**9)
    calls: list[int] = []
    real = loader_module._hash_capped
    monkeypatch.setattr(
        loader_module, "_hash_capped", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    signed(plugins, pub, id="fresh.plugin", artifact=b"A")
    loader, _sink = new_loader(plugins, pub)
    for _ in range(3):
        loader.scan()
    assert len(calls) == 3
    assert loader.loaded["fresh.plugin"].digest_sha256 == hashlib.sha256(b"A").hexdigest()
