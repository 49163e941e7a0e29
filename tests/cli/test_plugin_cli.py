from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lattice.cli.plugin import plugin_app
from tests.plugins.bundles import make_bundle, read_manifest, write_manifest

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_env_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATTICE_PLUGIN_TRUST", raising=False)


def test_keygen_sign_verify_round_trip(tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    r = runner.invoke(
        plugin_app,
        [
            "keygen",
            "--publisher",
            "acme.dev",
            "--out",
            str(tmp_path / "keys"),
            "--trust",
            str(trust),
        ],
    )
    assert r.exit_code == 0, r.output
    pub_b64 = r.stdout.strip()
    assert json.loads(trust.read_text())["trusted_publishers"] == {"acme.dev": pub_b64}
    key = tmp_path / "keys" / "acme.dev.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    bundle = make_bundle(
        tmp_path / "plugins",
        id="hello.plugin",
        type="system",
        capabilities=["task:run"],
        signed=False,
    )
    r = runner.invoke(
        plugin_app, ["sign", str(bundle), "--key", str(key), "--publisher", "acme.dev"]
    )
    assert r.exit_code == 0, r.output
    assert "signed hello.plugin 1.0.0 as acme.dev" in r.stdout

    r = runner.invoke(plugin_app, ["verify", str(bundle), "--trust", str(trust)])
    assert r.exit_code == 0, r.output
    assert "ok: hello.plugin 1.0.0 (system) signed by acme.dev" in r.stdout

    r = runner.invoke(plugin_app, ["inspect", str(bundle)])
    assert r.exit_code == 0, r.output
    assert "task:run" in r.stdout and "host" in r.stdout and "tiers: system" in r.stdout
    assert "artifact matches" in r.stdout


def test_verify_uses_env_trust_and_fails_closed_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = tmp_path / "trust.json"
    r = runner.invoke(
        plugin_app,
        ["keygen", "--publisher", "acme.dev", "--out", str(tmp_path), "--trust", str(trust)],
    )
    assert r.exit_code == 0, r.output
    bundle = make_bundle(tmp_path / "p", signed=False)
    assert (
        runner.invoke(
            plugin_app,
            [
                "sign",
                str(bundle),
                "--key",
                str(tmp_path / "acme.dev.key"),
                "--publisher",
                "acme.dev",
            ],
        ).exit_code
        == 0
    )
    r = runner.invoke(plugin_app, ["verify", str(bundle)])
    assert r.exit_code == 1
    assert "error: publisher 'acme.dev' is not trusted" in r.stderr
    monkeypatch.setenv("LATTICE_PLUGIN_TRUST", str(trust))
    assert runner.invoke(plugin_app, ["verify", str(bundle)]).exit_code == 0


def test_tampered_artifact_exits_1_with_reason(tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    runner.invoke(
        plugin_app,
        ["keygen", "--publisher", "acme.dev", "--out", str(tmp_path), "--trust", str(trust)],
    )
    bundle = make_bundle(tmp_path / "p", signed=False)
    runner.invoke(
        plugin_app,
        ["sign", str(bundle), "--key", str(tmp_path / "acme.dev.key"), "--publisher", "acme.dev"],
    )
    (bundle / "artifact").write_bytes(b"tampered")
    r = runner.invoke(plugin_app, ["verify", str(bundle), "--trust", str(trust)])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: artifact digest mismatch")
    assert "Traceback" not in r.output
    r = runner.invoke(plugin_app, ["inspect", str(bundle)])
    assert r.exit_code == 0 and "artifact MISMATCH" in r.stdout


def test_tampered_manifest_exits_1(tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    runner.invoke(
        plugin_app,
        ["keygen", "--publisher", "acme.dev", "--out", str(tmp_path), "--trust", str(trust)],
    )
    bundle = make_bundle(tmp_path / "p", signed=False)
    runner.invoke(
        plugin_app,
        ["sign", str(bundle), "--key", str(tmp_path / "acme.dev.key"), "--publisher", "acme.dev"],
    )
    write_manifest(bundle, {**read_manifest(bundle), "name": "Renamed"})
    r = runner.invoke(plugin_app, ["verify", str(bundle), "--trust", str(trust)])
    assert r.exit_code == 1
    assert "error: signature invalid for publisher 'acme.dev'" in r.stderr


def test_keygen_refuses_overwrite(tmp_path: Path) -> None:
    args = ["keygen", "--publisher", "acme.dev", "--out", str(tmp_path)]
    assert runner.invoke(plugin_app, args).exit_code == 0
    before = (tmp_path / "acme.dev.key").read_bytes()
    r = runner.invoke(plugin_app, args)
    assert r.exit_code == 1
    assert "error: refusing to overwrite existing file 'acme.dev.key'" in r.stderr
    assert (tmp_path / "acme.dev.key").read_bytes() == before


def test_bad_inputs_exit_1_without_traceback(tmp_path: Path) -> None:
    bad_trust = tmp_path / "bad.json"
    bad_trust.write_text('{"trusted_publishers": {"acme.dev": "' + "ab" * 32 + '"}}')
    bundle = make_bundle(tmp_path / "p", signed=False)
    cases = [
        (["verify", str(bundle), "--trust", str(bad_trust)], "looks like hex"),
        (["verify", str(tmp_path / "missing")], "bundle directory is missing"),
        (["inspect", str(tmp_path / "missing")], "bundle directory is missing"),
        (["sign", str(bundle), "--key", str(tmp_path / "nokey")], "cannot open private key file"),
        (["keygen", "--publisher", "Bad Id", "--out", str(tmp_path)], "publisher 'Bad Id' must be"),
    ]
    for args, message in cases:
        r = runner.invoke(plugin_app, args)
        assert r.exit_code == 1, (args, r.output)
        assert message in r.stderr, (args, r.stderr)
        assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("command", [[], ["keygen"], ["sign"], ["verify"], ["inspect"]])
def test_help(command: list[str]) -> None:
    r = runner.invoke(plugin_app, [*command, "--help"])
    assert r.exit_code == 0 and "Usage" in r.stdout
