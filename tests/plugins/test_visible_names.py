"""Plugin names need a visible character; blanks that look like nothing are refused.

Checked on real signed bundles on disk (the loader rejects them, with the
reason), through the verify API, and on the shared check in core/names.py.
"""

from __future__ import annotations

import base64
import json

import pytest

from lattice.core.names import check_visible_name
from lattice.errors import ValidationFailed
from tests.plugins.bundles import read_manifest
from tests.plugins.conftest import PluginEnv

INVISIBLE: dict[str, str] = {
    "hangul-filler": "\u3164",
    "hangul-fillers": "\u3164\u3164\u3164",
    "braille-blank": "\u2800\u2800",
    "hangul-choseong-filler": "\u115f",
    "hangul-jungseong-filler": "\u1160",
    "halfwidth-hangul-filler": "\uffa0",
    "khitan-filler": "\U00016fe4",
    "mongolian-vowel-separator": "\u180e",
    "en-quad": "\u2000",
    "hair-space": "\u200a",
    "narrow-nbsp": "\u202f",
    "math-space": "\u205f",
    "ideographic-space": "\u3000",
    "nbsp": "\u00a0",
    "soft-hyphen": "\u00ad",
    "combining-acute": "\u0301",
    "combining-marks-only": "\u0301\u0308\u20dd",
    "grapheme-joiner": "\u034f",
    "variation-selector": "\ufe0f",
    "tag-letter": "\U000e0041",
    "word-joiner": "\u2060",
    "spaces-around-filler": " \u3164 ",
    "space-and-braille": " \u2800",
    "filler-inside-a-word": "Admin\u3164",
    "braille-blank-suffix": "Demo plugin\u2800",
    "ascii-spaces": "   ",
    "line-separator": "a\u2028b",
    "private-use": "\ue000",
}

VISIBLE = ["Demo", "Überwachung 監視", "é", "e\u0301", "⚙", "日本", "· x", "🙂", "a b"]


@pytest.mark.parametrize("value", list(INVISIBLE.values()), ids=list(INVISIBLE))
def test_the_shared_check_refuses_invisible_names(value: str) -> None:
    with pytest.raises(ValidationFailed, match="token name"):
        check_visible_name("token name", value)


@pytest.mark.parametrize("value", VISIBLE)
def test_the_shared_check_accepts_visible_names(value: str) -> None:
    assert check_visible_name("name", value) == value


def test_invisible_names_on_disk_are_rejected_and_visible_ones_load(penv: PluginEnv) -> None:
    for i, name in enumerate(INVISIBLE.values()):
        penv.bundle(id=f"blank.n{i}", name=name)
    for i, name in enumerate(VISIBLE):
        penv.bundle(id=f"shown.n{i}", name=name)
    live = penv.start()
    try:
        listing = live.admin().get("/api/plugins").json()
        loaded = {p["id"]: p["name"] for p in listing["loaded"]}
        assert loaded == {f"shown.n{i}": n for i, n in enumerate(VISIBLE)}
        rejected = {r["bundle"]: r["reason"] for r in listing["rejected"]}
        assert set(rejected) == {f"blank.n{i}" for i in range(len(INVISIBLE))}
        for reason in rejected.values():
            assert reason.startswith("name "), reason
        lifecycle = live.admin().get("/api/plugins/lifecycle").json()["plugins"]
        assert not any(p["id"].startswith("blank.") for p in lifecycle)
    finally:
        live.stop()


def test_the_verify_api_refuses_each_invisible_name(penv: PluginEnv) -> None:
    bundle = penv.bundle(id="verify.name")
    artifact = base64.b64encode((bundle / "artifact").read_bytes()).decode()
    live = penv.start()
    try:
        client = live.client(live.token("plugin:verify"))
        for label, name in INVISIBLE.items():
            manifest = {**read_manifest(bundle), "name": name}
            r = client.post(
                "/api/plugins/verify",
                content=json.dumps({"manifest": manifest, "artifact_base64": artifact}),
            )
            assert r.status_code == 400, (label, r.text)
            assert r.json()["error"].startswith("name "), (label, r.text)
        ok = client.post(
            "/api/plugins/verify",
            content=json.dumps({"manifest": read_manifest(bundle), "artifact_base64": artifact}),
        )
        assert ok.status_code == 200, ok.text
    finally:
        live.stop()
