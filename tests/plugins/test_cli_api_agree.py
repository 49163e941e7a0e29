"""`lattice plugin verify` and POST /api/plugins/verify agree on every case."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lattice.cli.plugin import plugin_app
from tests.plugins.bundles import make_publisher, read_manifest, write_manifest
from tests.plugins.conftest import PluginEnv


def _tamper_artifact(bundle: Path) -> None:
    (bundle / "artifact").write_bytes(b"tampered")


def _rename(bundle: Path) -> None:
    m = read_manifest(bundle)
    m["name"] = "Renamed"
    write_manifest(bundle, m)


def _grow(bundle: Path) -> None:
    m = read_manifest(bundle)
    m["capabilities"] = [*m["capabilities"], "kv:write"]
    write_manifest(bundle, m)


def _unknown_field(bundle: Path) -> None:
    m = read_manifest(bundle)
    m["homepage"] = "https://example.org"
    write_manifest(bundle, m)


def _v1_unsigned(bundle: Path) -> None:
    """As the original Lattice writes an unsigned bundle: no publisher or signature."""
    m = read_manifest(bundle)
    del m["publisher"], m["signature_ed25519"]
    m["entrypoint"] = ""
    write_manifest(bundle, m)


CASES: list[tuple[str, dict[str, object], Callable[[Path], None] | None]] = [
    ("good", {}, None),
    ("tampered artifact", {}, _tamper_artifact),
    ("renamed after signing", {}, _rename),
    ("capability added after signing", {}, _grow),
    ("unknown field", {}, _unknown_field),
    ("untrusted publisher", {"untrusted": True}, None),
    ("unsigned", {"signed": False}, None),
    ("worker holding a host capability", {"type": "worker", "capabilities": ("task:run",)}, None),
    ("v1 unsigned, optional fields absent", {}, _v1_unsigned),
    ("name of hangul fillers", {"name": "\u3164\u3164"}, None),
    ("name of a braille blank", {"name": "\u2800"}, None),
    ("name of combining marks", {"name": "\u0301\u0308"}, None),
]


@pytest.mark.parametrize("label,options,mutate", CASES, ids=[c[0] for c in CASES])
def test_cli_and_api_agree(
    penv: PluginEnv, label: str, options: dict[str, object], mutate: Callable[[Path], None] | None
) -> None:
    kwargs: dict[str, object] = {"id": "agree.case", "capabilities": ("kv:read",)}
    kwargs.update({k: v for k, v in options.items() if k != "untrusted"})
    if options.get("untrusted"):
        stranger = make_publisher("stranger.dev")
        kwargs.update(key=stranger.key, publisher=stranger.id)
    if kwargs.get("type") == "worker":
        # a manifest the decoder rejects cannot be signed by the helpers: build it unsigned
        kwargs["signed"] = False
    bundle = penv.bundle(**kwargs)
    if mutate is not None:
        mutate(bundle)

    cli = CliRunner().invoke(plugin_app, ["verify", str(bundle), "--trust", str(penv.trust)])

    live = penv.start()
    try:
        api = live.client(live.token("plugin:verify")).post(
            "/api/plugins/verify",
            content=b'{"manifest": '
            + (bundle / "manifest.json").read_bytes()
            + b', "artifact_base64": "'
            + base64.b64encode((bundle / "artifact").read_bytes())
            + b'"}',
        )
    finally:
        live.stop()

    assert (cli.exit_code == 0) == (api.status_code == 200), (label, cli.output, api.text)
    if cli.exit_code != 0:
        assert api.status_code == 400
        reason = api.json()["error"]
        assert reason in cli.output, (label, reason, cli.output)
    assert (label == "good") == (api.status_code == 200)
