from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from lattice.errors import BundleError, VerificationError
from lattice.plugins.loader import AUDIT_ACTOR, LoadedPlugin, PluginLoader, ScanDiff, load_bundle
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


def new_loader(plugin_dir: Path, pub: Publisher, **kw: int) -> tuple[PluginLoader, RecordingSink]:
    policy = TrustPolicy.from_json(json.dumps({"trusted_publishers": {pub.id: pub.public_b64}}))
    sink = RecordingSink()
    return PluginLoader(plugin_dir=plugin_dir, verifier=Verifier(policy), audit=sink, **kw), sink


def signed(root: Path, pub: Publisher, **kw: object) -> Path:
    return make_bundle(root, key=pub.key, publisher=pub.id, **kw)  # type: ignore[arg-type]


def reasons(loader: PluginLoader) -> dict[str, str]:
    return {r.bundle: r.reason for r in loader.rejected}


def test_loads_signed_bundle_and_audits(plugins: Path, pub: Publisher) -> None:
    signed(plugins, pub, id="hello.plugin", capabilities=["kv:read", "kv:write"], artifact=b"A")
    loader, sink = new_loader(plugins, pub)
    diff = loader.scan()
    assert diff == ScanDiff(added=("hello.plugin",))
    p = loader.loaded["hello.plugin"]
    assert p.signed and p.bundle == "hello.plugin" and p.read_artifact() == b"A"
    public = p.to_public_dict()
    assert "bundle_path" not in public and str(plugins) not in json.dumps(public)
    assert public["capabilities"] == [
        {"name": "kv:read", "risk": "read"},
        {"name": "kv:write", "risk": "write"},
    ]
    assert "bundle_path" not in repr(p) and str(plugins) not in repr(p)
    [event] = sink.events
    assert event["action"] == "plugin.loaded" and event["target"] == "hello.plugin"
    assert event["actor"] == AUDIT_ACTOR and event["decision"] == "allow"
    assert event["detail"] == {
        "version": "1.0.0",
        "digest": p.digest_sha256,
        "capabilities": ["kv:read", "kv:write"],
        "signed": True,
        "publisher": "acme.dev",
        "bundle": "hello.plugin",
    }


def test_missing_plugin_dir_is_empty(tmp_path: Path, pub: Publisher) -> None:
    loader, sink = new_loader(tmp_path / "nope", pub)
    assert not loader.scan()
    assert loader.loaded == {} and loader.rejected == [] and sink.events == []


def test_hidden_and_non_directory_entries_skipped(plugins: Path, pub: Publisher) -> None:
    signed(plugins, pub, bundle=".hidden")
    (plugins / "README").write_text("x")
    loader, sink = new_loader(plugins, pub)
    assert not loader.scan() and sink.events == []


def test_symlinked_bundle_dir_manifest_artifact(
    plugins: Path, tmp_path: Path, pub: Publisher
) -> None:
    outside = tmp_path / "outside"
    real = signed(outside, pub, id="real.plugin")
    (plugins / "dirlink").symlink_to(real)
    m = signed(plugins, pub, id="mlink.plugin")
    (outside / "m.json").write_bytes((m / "manifest.json").read_bytes())
    (m / "manifest.json").unlink()
    (m / "manifest.json").symlink_to(outside / "m.json")
    a = signed(plugins, pub, id="alink.plugin")
    (outside / "art").write_bytes((a / "artifact").read_bytes())
    (a / "artifact").unlink()
    (a / "artifact").symlink_to(outside / "art")
    loader, sink = new_loader(plugins, pub)
    loader.scan()
    assert loader.loaded == {}
    assert reasons(loader) == {
        "dirlink": "bundle directory is a symlink",
        "mlink.plugin": "manifest.json is a symlink",
        "alink.plugin": "artifact is a symlink",
    }
    assert [e["action"] for e in sink.events] == ["plugin.rejected"] * 3
    assert all(e["decision"] == "deny" for e in sink.events)
    assert str(tmp_path) not in json.dumps(sink.events)


def test_size_limits(plugins: Path, pub: Publisher) -> None:
    signed(plugins, pub, id="big.artifact", artifact=b"x" * 1025)
    signed(plugins, pub, id="ok.plugin", artifact=b"x" * 1024)
    big_m = signed(plugins, pub, id="big.manifest")
    write_manifest(big_m, json.dumps(read_manifest(big_m)) + " " * 600)
    loader, _ = new_loader(plugins, pub, max_artifact_bytes=1024, max_manifest_bytes=900)
    loader.scan()
    assert list(loader.loaded) == ["ok.plugin"]
    assert reasons(loader)["big.artifact"] == "artifact is 1025 bytes, over the 1024-byte limit"
    assert reasons(loader)["big.manifest"].startswith("manifest.json is ")
    assert reasons(loader)["big.manifest"].endswith("bytes, over the 900-byte limit")


def test_layout_errors(plugins: Path, pub: Publisher) -> None:
    os.mkfifo(signed(plugins, pub, id="fifo.plugin") / "fifo")
    f = plugins / "fifo.plugin"
    (f / "artifact").unlink()
    os.mkfifo(f / "artifact")  # must not block the scan
    (signed(plugins, pub, id="noart.plugin") / "artifact").unlink()
    (signed(plugins, pub, id="nomani.plugin") / "manifest.json").unlink()
    d = signed(plugins, pub, id="dir.plugin")
    (d / "artifact").unlink()
    (d / "artifact").mkdir()
    loader, _ = new_loader(plugins, pub)
    loader.scan()
    assert reasons(loader) == {
        "fifo.plugin": "artifact is not a regular file",
        "noart.plugin": "artifact is missing",
        "nomani.plugin": "manifest.json is missing",
        "dir.plugin": "artifact is not a regular file",
    }


def test_bad_bundles_do_not_stop_the_scan(plugins: Path, pub: Publisher) -> None:
    write_manifest(signed(plugins, pub, id="a.corrupt"), b'{"id": ')
    bad = signed(plugins, pub, id="b.digest")
    (bad / "artifact").write_bytes(b"tampered")
    other = make_publisher("evil.dev")
    make_bundle(plugins, id="c.untrusted", key=other.key, publisher=other.id)
    make_bundle(plugins, id="d.unsigned", signed=False)
    signed(plugins, pub, id="e.good")
    loader, _ = new_loader(plugins, pub)
    loader.scan()
    assert list(loader.loaded) == ["e.good"]
    r = reasons(loader)
    assert r["a.corrupt"].startswith("manifest is not valid JSON")
    assert r["b.digest"].startswith("artifact digest mismatch")
    assert r["c.untrusted"] == "publisher 'evil.dev' is not trusted"
    assert r["d.unsigned"] == "unsigned bundle not allowed (allow_unsigned is false)"


def test_duplicate_ids_both_rejected(plugins: Path, pub: Publisher) -> None:
    signed(plugins, pub, id="same.id", bundle="one")
    signed(plugins, pub, id="same.id", bundle="two")
    make_bundle(plugins, id="same.id", bundle="three", signed=False)  # unverified: no vote
    loader, sink = new_loader(plugins, pub)
    loader.scan()
    assert loader.loaded == {}
    r = reasons(loader)
    assert r["one"] == "duplicate plugin id 'same.id' (also in bundle 'two')"
    assert r["two"] == "duplicate plugin id 'same.id' (also in bundle 'one')"
    assert r["three"].startswith("unsigned bundle not allowed")
    assert sorted(sink.actions()) == [("plugin.rejected", b) for b in ("one", "three", "two")]


def test_duplicate_ids_go_to_the_recorded_owner(plugins: Path, pub: Publisher) -> None:
    other = make_publisher("other.dev")
    signed(plugins, pub, id="same.id", bundle="one", artifact=b"1")
    signed(plugins, other, id="same.id", bundle="two", artifact=b"2")
    policy = TrustPolicy.from_json(
        json.dumps({"trusted_publishers": {pub.id: pub.public_b64, other.id: other.public_b64}})
    )
    loader = PluginLoader(plugin_dir=plugins, verifier=Verifier(policy), audit=RecordingSink())
    loader.scan()
    assert loader.loaded == {}  # nobody on record: both lose
    loader.scan({"same.id": "other.dev"})
    assert loader.loaded["same.id"].bundle == "two"
    assert reasons(loader) == {
        "one": "duplicate plugin id 'same.id': bundle 'two' from publisher 'other.dev' keeps it "
        "(its publisher is the one on the plugin's record); this bundle is from publisher "
        "'acme.dev'"
    }
    loader.scan({"same.id": "nobody.dev"})  # the owner shipped neither: both lose again
    assert loader.loaded == {}
    signed(plugins, other, id="same.id", bundle="three", artifact=b"3")
    loader.scan({"same.id": "other.dev"})  # two bundles from the owner: no rightful one
    assert loader.loaded == {} and len(reasons(loader)) == 3


def test_rescan_unchanged_audits_nothing(plugins: Path, pub: Publisher) -> None:
    signed(plugins, pub, id="good.one")
    make_bundle(plugins, id="bad.one", signed=False)
    loader, sink = new_loader(plugins, pub)
    assert loader.scan()
    first = list(sink.events)
    seen = loader.rejected[0].seen_at
    for _ in range(3):
        assert not loader.scan()
    assert sink.events == first
    assert loader.rejected[0].seen_at == seen


def test_changed_bundle_is_reaudited(plugins: Path, pub: Publisher) -> None:
    b = signed(plugins, pub, id="chg.plugin", artifact=b"v1")
    loader, sink = new_loader(plugins, pub)
    loader.scan()
    old = loader.loaded["chg.plugin"]
    (b / "artifact").write_bytes(b"v2")
    with pytest.raises(VerificationError, match="artifact changed on disk since it was verified"):
        old.read_artifact()
    m = read_manifest(b)
    m["digest_sha256"] = hashlib.sha256(b"v2").hexdigest()
    m["version"] = "2.0.0"
    write_manifest(b, sign_dict(m, pub.key))
    assert loader.scan() == ScanDiff(changed=("chg.plugin",))
    assert sink.actions() == [("plugin.loaded", "chg.plugin")] * 2
    assert sink.events[-1]["detail"]["version"] == "2.0.0"
    assert loader.loaded["chg.plugin"].read_artifact() == b"v2"


def test_loaded_then_rejected_then_removed(plugins: Path, pub: Publisher) -> None:
    b = signed(plugins, pub, id="life.plugin")
    loader, sink = new_loader(plugins, pub)
    loader.scan()
    before = loader.loaded
    (b / "artifact").write_bytes(b"evil")
    diff = loader.scan()
    assert diff.removed == ("life.plugin",) and [r.bundle for r in diff.rejected] == ["life.plugin"]
    assert "life.plugin" in before and loader.loaded == {}  # old snapshot untouched
    assert sink.actions()[1:] == [
        ("plugin.unloaded", "life.plugin"),
        ("plugin.rejected", "life.plugin"),
    ]
    assert sink.events[1]["reason"] == "bundle rejected on rescan"
    for f in b.iterdir():
        f.unlink()
    b.rmdir()
    assert loader.scan() == ScanDiff(cleared=("life.plugin",))
    assert len(sink.events) == 3


def test_removed_plugin_audited_as_unloaded(plugins: Path, pub: Publisher) -> None:
    b = signed(plugins, pub, id="gone.plugin")
    loader, sink = new_loader(plugins, pub)
    loader.scan()
    os.rename(b, plugins / ".trash")
    assert loader.scan() == ScanDiff(removed=("gone.plugin",))
    assert (
        sink.events[-1]["action"] == "plugin.unloaded"
        and sink.events[-1]["reason"] == "bundle removed"
    )


def test_read_artifact_refuses_swapped_symlink(
    plugins: Path, tmp_path: Path, pub: Publisher
) -> None:
    b = signed(plugins, pub, id="swap.plugin", artifact=b"A")
    loader, _ = new_loader(plugins, pub)
    loader.scan()
    (tmp_path / "x").write_bytes(b"A")
    (b / "artifact").unlink()
    (b / "artifact").symlink_to(tmp_path / "x")
    with pytest.raises(BundleError, match="artifact is a symlink"):
        loader.loaded["swap.plugin"].read_artifact()


def test_loaded_plugin_needs_a_verification(plugins: Path) -> None:
    with pytest.raises(VerificationError, match="needs a Verification"):
        LoadedPlugin(object(), "b", plugins)  # type: ignore[arg-type]


def test_load_bundle_single(plugins: Path, pub: Publisher) -> None:
    b = signed(plugins, pub, id="one.plugin")
    policy = TrustPolicy.from_json(json.dumps({"trusted_publishers": {pub.id: pub.public_b64}}))
    assert load_bundle(b, Verifier(policy)).id == "one.plugin"
    with pytest.raises(VerificationError, match=r"publisher 'acme\.dev' is not trusted"):
        load_bundle(b, Verifier(TrustPolicy.default()))


def test_concurrent_scans_are_serialised(plugins: Path, pub: Publisher) -> None:
    for i in range(10):
        signed(plugins, pub, id=f"p{i}.plugin")
    loader, sink = new_loader(plugins, pub)
    threads = [threading.Thread(target=loader.scan) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loader.loaded) == 10
    assert sorted(sink.actions()) == [("plugin.loaded", f"p{i}.plugin") for i in range(10)]


def test_watch_rescans_on_change(plugins: Path, pub: Publisher) -> None:
    loader, _ = new_loader(plugins, pub)
    stop = threading.Event()
    diffs: list[ScanDiff] = []
    t = threading.Thread(target=loader.watch, args=(stop, diffs.append), kwargs={"debounce_ms": 50})
    t.start()
    try:
        stop.wait(0.5)  # let the watcher start
        signed(plugins, pub, id="watched.plugin")
        deadline = time.monotonic() + 10
        while "watched.plugin" not in loader.loaded and time.monotonic() < deadline:
            stop.wait(0.05)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert any("watched.plugin" in d.added for d in diffs)
