"""Publisher namespaces in the trust file, and duplicate ids that cannot take
out the rightful plugin."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lattice.cli.plugin import plugin_app
from lattice.errors import ConfigError, VerificationError
from lattice.plugins.manifest import Manifest
from lattice.plugins.signing import add_to_trust_file
from lattice.plugins.trust import TrustPolicy, Verifier, namespace_covers
from tests.conftest import LiveServer
from tests.plugins.bundles import (
    Publisher,
    make_bundle,
    make_publisher,
    read_manifest,
    sign_dict,
    write_trust,
)
from tests.plugins.conftest import PluginEnv

# -- the trust file format ---------------------------------------------------------


def test_old_and_new_entry_forms_load_and_round_trip(tmp_path: Path) -> None:
    a, b = make_publisher("acme.dev"), make_publisher("plain.dev")
    doc = {
        "trusted_publishers": {
            "acme.dev": {"key": a.public_b64, "namespaces": ["acme.", "dev.acme"]},
            "plain.dev": b.public_b64,
        }
    }
    policy = TrustPolicy.from_json(json.dumps(doc))
    assert dict(policy.namespaces) == {"acme.dev": ("acme.", "dev.acme")}
    assert set(policy.trusted_publishers) == {"acme.dev", "plain.dev"}
    assert policy.to_dict()["trusted_publishers"] == doc["trusted_publishers"]
    assert TrustPolicy.from_json(json.dumps(policy.to_dict())) == policy
    assert policy.to_public_dict()["namespaces"] == {"acme.dev": ["acme.", "dev.acme"]}
    # an entry without namespaces in object form is unbound
    unbound = TrustPolicy.from_json(
        json.dumps({"trusted_publishers": {"x.dev": {"key": b.public_b64}}})
    )
    assert dict(unbound.namespaces) == {}
    # adding a publisher with the CLI's helper keeps the other entries' namespaces
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(doc))
    c = make_publisher("third.dev")
    add_to_trust_file(path, c.id, c.public_b64)
    again = TrustPolicy.from_file(path)
    assert dict(again.namespaces) == {"acme.dev": ("acme.", "dev.acme")}
    assert set(again.trusted_publishers) == {"acme.dev", "plain.dev", "third.dev"}


KEY = make_publisher("k.dev").public_b64


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"key": KEY, "namespace": ["acme."]}, r"unknown field\(s\): 'namespace'"),
        ({"key": KEY, "namespaces": ["acme."], "note": "x"}, r"unknown field\(s\): 'note'"),
        ({"namespaces": ["acme."]}, r"needs a 'key'"),
        ({"key": KEY, "namespaces": []}, r"non-empty list"),
        ({"key": KEY, "namespaces": "acme."}, r"non-empty list"),
        ({"key": KEY, "namespaces": ["Acme."]}, r"namespace 'Acme\.' must be"),
        ({"key": KEY, "namespaces": [""]}, r"namespace '' must be"),
        ({"key": KEY, "namespaces": [".acme"]}, r"namespace '\.acme' must be"),
        ({"key": KEY, "namespaces": ["a..b"]}, r"namespace 'a\.\.b' must be"),
        ({"key": KEY, "namespaces": ["acme/"]}, r"namespace 'acme/' must be"),
        ({"key": KEY, "namespaces": [5]}, r"namespace int must be"),
        ({"key": KEY, "namespaces": ["x" * 129]}, r"must be 1-128"),
        ({"key": KEY, "namespaces": ["acme.", "acme."]}, r"duplicate namespace"),
        ({"key": KEY, "namespaces": [f"n{i}." for i in range(65)]}, r"at most 64"),
        ({"key": 5, "namespaces": ["acme."]}, r"must be a base64 string"),
    ],
)
def test_bad_entries_are_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrustPolicy.from_json(json.dumps({"trusted_publishers": {"acme.dev": entry}}))


def test_a_bad_trust_file_is_one_line_from_the_cli(tmp_path: Path, penv: PluginEnv) -> None:
    bundle = penv.bundle(id="acme.x")
    trust = tmp_path / "bad.json"
    trust.write_text(json.dumps({"trusted_publishers": {"acme.dev": {"key": KEY, "ns": []}}}))
    cli = CliRunner().invoke(plugin_app, ["verify", str(bundle), "--trust", str(trust)])
    assert cli.exit_code == 1 and "unknown field(s): 'ns'" in cli.output
    assert "Traceback" not in cli.output


@pytest.mark.parametrize(
    ("namespace", "inside", "outside"),
    [
        ("acme.", ["acme.x", "acme.x.y"], ["acme", "acmex.y", "xacme.y", "dev.acme"]),
        ("dev.acme", ["dev.acme", "dev.acme.tool"], ["dev.acmex", "dev.acme-x", "dev"]),
        ("acme-", ["acme-tool"], ["acme", "acme.tool"]),
    ],
)
def test_what_a_namespace_covers(namespace: str, inside: list[str], outside: list[str]) -> None:
    assert all(namespace_covers(namespace, i) for i in inside)
    assert not any(namespace_covers(namespace, o) for o in outside)


# -- the verifier -------------------------------------------------------------------


def _manifest(pub: Publisher | None, plugin_id: str) -> tuple[Manifest, bytes]:
    artifact = b"ns artifact"
    doc: dict[str, Any] = {
        "id": plugin_id,
        "name": "NS",
        "type": "wasm",
        "capabilities": ["kv:read"],
        "version": "1.0.0",
        "entrypoint": "main",
        "publisher": pub.id if pub else "",
        "digest_sha256": hashlib.sha256(artifact).hexdigest(),
        "signature_ed25519": "",
    }
    if pub is not None:
        doc = sign_dict(doc, pub.key)
    return Manifest.from_mapping(doc), artifact


def _policy(*pubs: Publisher, bound: dict[str, list[str]], unsigned: bool = False) -> Verifier:
    entries: dict[str, Any] = {
        p.id: {"key": p.public_b64, "namespaces": bound[p.id]} if p.id in bound else p.public_b64
        for p in pubs
    }
    doc = {"trusted_publishers": entries, "allow_unsigned": unsigned}
    return Verifier(TrustPolicy.from_json(json.dumps(doc)))


def test_a_bound_publisher_ships_only_inside_its_namespaces() -> None:
    acme = make_publisher("acme.dev")
    v = _policy(acme, bound={"acme.dev": ["acme.", "dev.acme"]})
    for ok in ("acme.tool", "dev.acme", "dev.acme.x"):
        v.verify(*_manifest(acme, ok))
    for bad in ("other.tool", "dev.acmex", "acmetool.x"):
        with pytest.raises(VerificationError, match="outside the namespaces") as info:
            v.verify(*_manifest(acme, bad))
        assert "acme., dev.acme" in info.value.message and bad in info.value.message


def test_nobody_else_may_ship_inside_a_bound_namespace() -> None:
    acme, squat = make_publisher("acme.dev"), make_publisher("squat.dev")
    v = _policy(acme, squat, bound={"acme.dev": ["acme."]}, unsigned=True)
    v.verify(*_manifest(squat, "squat.tool"))  # unbound: anything not reserved
    with pytest.raises(VerificationError, match=r"namespace of publisher 'acme\.dev'") as info:
        v.verify(*_manifest(squat, "acme.tool"))
    assert "'squat.dev' may not ship it" in info.value.message
    with pytest.raises(VerificationError, match="an unsigned bundle may not ship it"):
        v.verify(*_manifest(None, "acme.tool"))
    v.verify(*_manifest(None, "free.tool"))


# -- the server ---------------------------------------------------------------------


def item(live: LiveServer, plugin_id: str) -> dict[str, Any]:
    plugins = live.admin().get("/api/plugins/lifecycle").json()["plugins"]
    return next(p for p in plugins if p["id"] == plugin_id)


def activate(live: LiveServer, plugin_id: str) -> None:
    for status in ("installed", "active"):
        r = live.admin().post("/api/plugins/lifecycle", json={"id": plugin_id, "status": status})
        assert r.status_code == 200, r.text


def worker(root: Path, pub: Publisher, *, bundle: str, text: bytes) -> Path:
    return make_bundle(
        root,
        id="acme.site",
        type="worker",
        entrypoint="template",
        capabilities=("worker:route",),
        artifact=text,
        key=pub.key,
        publisher=pub.id,
        bundle=bundle,
    )


def test_the_server_rejects_a_bundle_outside_its_namespace(penv: PluginEnv) -> None:
    write_trust(penv.trust, [penv.publisher], namespaces={"acme.dev": ["acme."]})
    penv.bundle(id="acme.fine")
    penv.bundle(id="other.grab", bundle="grab")
    live = penv.start()
    try:
        listing = live.admin().get("/api/plugins").json()
        assert [p["id"] for p in listing["loaded"]] == ["acme.fine"]
        (rejected,) = listing["rejected"]
        assert rejected["bundle"] == "grab"
        assert "outside the namespaces of publisher 'acme.dev' (acme.)" in rejected["reason"]
        trust = live.admin().get("/api/plugins/trust").json()
        assert trust["namespaces"] == {"acme.dev": ["acme."]}
    finally:
        live.stop()


def test_a_squatting_duplicate_cannot_take_out_the_active_plugin(penv: PluginEnv) -> None:
    squat = make_publisher("squat.dev")
    write_trust(penv.trust, [penv.publisher, squat])  # both unbound
    worker(penv.plugin_dir, penv.publisher, bundle="a-rightful", text=b"rightful {{path}}")
    live = penv.start()
    try:
        activate(live, "acme.site")
        worker(penv.plugin_dir, squat, bundle="z-squat", text=b"squatted")
        diff = live.admin().post("/api/plugins/rescan").json()
        assert diff["removed"] == [] and diff["changed"] == []
        (rejected,) = diff["rejected"]
        assert rejected["bundle"] == "z-squat"
        reason = rejected["reason"]
        assert "duplicate plugin id 'acme.site'" in reason
        assert "'a-rightful' from publisher 'acme.dev' keeps it" in reason
        assert "publisher 'squat.dev'" in reason
        it = item(live, "acme.site")
        assert it["status"] == "active" and it["runtime"]["state"] == "armed"
        assert it["review_required"] is False and it["publisher"] == "acme.dev"
        assert live.client().get("/w/acme.site/x").text == "rightful /x"
    finally:
        live.stop()
    # and after a restart, the record still decides
    live = penv.start()
    try:
        assert live.client().get("/w/acme.site/x").text == "rightful /x"
        rejected = live.admin().get("/api/plugins").json()["rejected"]
        assert [r["bundle"] for r in rejected] == ["z-squat"]
    finally:
        live.stop()


def test_the_record_owner_wins_even_while_its_review_is_pending(penv: PluginEnv) -> None:
    squat = make_publisher("squat.dev")
    write_trust(penv.trust, [penv.publisher, squat])
    rightful = worker(penv.plugin_dir, penv.publisher, bundle="a-rightful", text=b"one")
    live = penv.start()
    try:
        activate(live, "acme.site")
        # the rightful bundle is away for a moment; the squatter's loads alone
        shutil.rmtree(rightful)
        squatter = worker(penv.plugin_dir, squat, bundle="z-squat", text=b"squatted")
        live.admin().post("/api/plugins/rescan")
        it = item(live, "acme.site")
        assert it["status"] == "disabled" and it["review"]["changed"] == ["digest", "publisher"]
        # the rightful bundle returns: the approved publisher keeps the id
        worker(penv.plugin_dir, penv.publisher, bundle="a-rightful", text=b"one")
        diff = live.admin().post("/api/plugins/rescan").json()
        assert [r["bundle"] for r in diff["rejected"]] == ["z-squat"]
        it = item(live, "acme.site")
        assert it["review_required"] is False and it["publisher"] == "acme.dev"
        assert squatter.exists()
    finally:
        live.stop()


def test_without_a_record_owner_all_duplicates_are_rejected(penv: PluginEnv) -> None:
    squat = make_publisher("squat.dev")
    write_trust(penv.trust, [penv.publisher, squat])
    worker(penv.plugin_dir, penv.publisher, bundle="one", text=b"1")
    worker(penv.plugin_dir, squat, bundle="two", text=b"2")
    live = penv.start()
    try:
        listing = live.admin().get("/api/plugins").json()
        assert listing["loaded"] == []
        reasons = {r["bundle"]: r["reason"] for r in listing["rejected"]}
        assert set(reasons) == {"one", "two"}
        assert all("duplicate plugin id 'acme.site'" in r for r in reasons.values())
    finally:
        live.stop()


def test_a_namespace_bound_publisher_beats_an_unbound_squatter(penv: PluginEnv) -> None:
    squat = make_publisher("squat.dev")
    write_trust(penv.trust, [penv.publisher, squat], namespaces={"acme.dev": ["acme."]})
    worker(penv.plugin_dir, squat, bundle="a-squat", text=b"squatted")
    worker(penv.plugin_dir, penv.publisher, bundle="b-rightful", text=b"rightful")
    live = penv.start()  # fresh: no record yet
    try:
        listing = live.admin().get("/api/plugins").json()
        assert [(p["id"], p["bundle"]) for p in listing["loaded"]] == [("acme.site", "b-rightful")]
        (rejected,) = listing["rejected"]
        assert rejected["bundle"] == "a-squat"
        assert "in the namespace of publisher 'acme.dev'" in rejected["reason"]
        assert item(live, "acme.site")["publisher"] == "acme.dev"
    finally:
        live.stop()


def test_verify_api_and_cli_agree_on_namespaces(penv: PluginEnv) -> None:
    squat = make_publisher("squat.dev")
    write_trust(penv.trust, [penv.publisher, squat], namespaces={"acme.dev": ["acme."]})
    cases = {
        "inside": (penv.publisher, "acme.ok", True),
        "outside": (penv.publisher, "other.x", False),
        "reserved": (squat, "acme.taken", False),
        "unreserved": (squat, "squat.x", True),
    }
    bundles = {
        label: make_bundle(penv.plugin_dir, id=pid, key=pub.key, publisher=pub.id)
        for label, (pub, pid, _ok) in cases.items()
    }
    live = penv.start()
    try:
        client = live.client(live.token("plugin:verify"))
        for label, (_pub, _pid, ok) in cases.items():
            bundle = bundles[label]
            cli = CliRunner().invoke(
                plugin_app, ["verify", str(bundle), "--trust", str(penv.trust)]
            )
            body = {
                "manifest": read_manifest(bundle),
                "artifact_base64": base64.b64encode((bundle / "artifact").read_bytes()).decode(),
            }
            api = client.post("/api/plugins/verify", content=json.dumps(body))
            assert (cli.exit_code == 0) == ok == (api.status_code == 200), (label, cli.output)
            if not ok:
                assert api.json()["error"] in cli.output, (label, api.text, cli.output)
    finally:
        live.stop()
