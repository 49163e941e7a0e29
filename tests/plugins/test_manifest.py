from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lattice.errors import CapabilityError, ManifestError
from lattice.plugins.manifest import FIELDS, Manifest

DIGEST = "ab" * 32


def base(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "demo.plugin",
        "name": "Demo",
        "type": "wasm",
        "capabilities": ["kv:read", "kv:write"],
        "version": "1.2.3",
        "entrypoint": "main",
        "publisher": "acme.dev",
        "digest_sha256": DIGEST,
        "signature_ed25519": "",
    }
    doc.update(over)
    return doc


def parse(**over: Any) -> Manifest:
    return Manifest.from_json(json.dumps(base(**over)))


def test_valid_round_trip() -> None:
    m = parse()
    assert m.capabilities == ("kv:read", "kv:write")
    assert list(m.to_dict()) == list(FIELDS)
    assert Manifest.from_json(m.to_json()) == m
    assert Manifest.from_json(json.dumps(base()).encode()) == m
    assert not m.signed
    signed = parse(signature_ed25519="A" * 86)
    assert signed.signed and signed.without_signature() == m


def test_signing_payload_is_byte_exact() -> None:
    m = Manifest(
        id="acme.hello",
        name="Hello ✓",
        type="system",
        capabilities=("task:run", "kv:read", "audit:read"),
        version="0.1.0+b1",
        entrypoint="hello:main",
        publisher="acme.dev",
        digest_sha256="0" * 64,
        signature_ed25519="ignored+by/payload==",
    )
    expected = (
        b"lattice-plugin-manifest-v1\nacme.hello\nHello \xe2\x9c\x93\nsystem\n0.1.0+b1\n"
        b"hello:main\nacme.dev\n" + b"0" * 64 + b"\naudit:read\x00kv:read\x00task:run"
    )
    assert m.signing_payload() == expected
    assert m.without_signature().signing_payload() == expected


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "a b", "A", "ab", "-abc", "abc-", "a..b", "x" * 129]
)
def test_unsafe_ids(bad: str) -> None:
    with pytest.raises(ManifestError, match=r"^id .* must be 3-128 characters of \[a-z0-9.-\]"):
        parse(id=bad)


def test_publisher_rules() -> None:
    assert parse(publisher="").publisher == ""
    with pytest.raises(ManifestError, match=r"^publisher 'Acme' must be 3-128"):
        parse(publisher="Acme")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("evil\u202ename", r"bidi control character U\+202E"),
        ("a\u2066b", r"bidi control character U\+2066"),
        ("a\u200fb", r"bidi control character U\+200F"),
        ("a\u061cb", r"bidi control character U\+061C"),
        ("zero\u200bwidth", r"zero-width character U\+200B"),
        ("bom\ufeff", r"zero-width character U\+FEFF"),
        ("wj\u2060", r"zero-width character U\+2060"),
        ("bell\x07", r"non-printable character U\+0007"),
        ("new\nline", r"non-printable character U\+000A"),
        ("", r"name must be 1-80 characters, got 0"),
        ("x" * 81, r"name must be 1-80 characters, got 81"),
        ("   ", r"name must not be blank"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(name=name)


def test_unicode_name_allowed() -> None:
    assert parse(name="Überwachung 監視").name == "Überwachung 監視"


@pytest.mark.parametrize(
    ("over", "exc", "message"),
    [
        ({"capabilities": []}, ManifestError, "at least one capability"),
        (
            {"capabilities": ["kv:read", "kv:read"]},
            CapabilityError,
            "duplicate capability 'kv:read'",
        ),
        ({"capabilities": ["fs:write"]}, CapabilityError, "unknown capability 'fs:write'"),
        (
            {"capabilities": ["node:admin"]},
            CapabilityError,
            r"'node:admin' \(host risk\) is not allowed for type 'wasm'",
        ),
        (
            {"type": "worker", "capabilities": ["kv:write"]},
            CapabilityError,
            "not allowed for type 'worker'",
        ),
        ({"type": "native"}, ManifestError, "type 'native' must be one of system, wasm, worker"),
        ({"version": "-1"}, ManifestError, "version '-1' must match"),
        ({"version": "1" * 65}, ManifestError, "version .* must match"),
        ({"entrypoint": "x" * 129}, ManifestError, "must be empty or up to 128"),
        ({"entrypoint": "/abs"}, ManifestError, "not absolute"),
        ({"entrypoint": "a/../b"}, ManifestError, "not contain '..'"),
        ({"entrypoint": "a b"}, ManifestError, "entrypoint 'a b' must be"),
        ({"digest_sha256": DIGEST.upper()}, ManifestError, "64 lowercase hex"),
        ({"digest_sha256": DIGEST[:-1]}, ManifestError, "64 lowercase hex"),
        (
            {"signature_ed25519": "not base64!"},
            ManifestError,
            "signature_ed25519 must be empty or standard base64",
        ),
    ],
)
def test_field_rules(over: dict[str, Any], exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        parse(**over)


def test_entrypoint_forms_allowed() -> None:
    for ep in ("main", "pkg.module:run", "lib/handler.wasm", "_start"):
        assert parse(entrypoint=ep).entrypoint == ep


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (json.dumps({**base(), "extra": 1}), r"unknown field\(s\): 'extra'"),
        (
            json.dumps({k: v for k, v in base().items() if k != "version"}),
            r"missing field\(s\): version",
        ),
        (json.dumps(base()) + " {}", r"trailing data after the JSON object"),
        (json.dumps(base()) + "x", r"trailing data"),
        ('{"id": "a.b.c", "id": "a.b.c"}', r"duplicate key 'id'"),
        ("[]", r"must be a JSON object, got array"),
        ('"str"', r"must be a JSON object, got string"),
        ("{", r"not valid JSON"),
        ("", r"not valid JSON"),
        (b"\xff\xfe{}", r"not valid UTF-8"),
        (json.dumps(base()).replace('"Demo"', "NaN"), r"contains NaN"),
        (json.dumps(base()).replace('"Demo"', "-Infinity"), r"contains -Infinity"),
        ("[" * 100_000 + "]" * 100_000, r"not valid JSON"),
        ("1" * 5000, r"not valid JSON"),
    ],
)
def test_json_level_errors(text: str | bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(text)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", True, "field 'name' must be a string, got boolean"),
        ("id", 5, "field 'id' must be a string, got number"),
        ("publisher", None, "field 'publisher' must be a string, got null"),
        ("capabilities", "kv:read", "field 'capabilities' must be an array, got string"),
        ("capabilities", [True], "capabilities must contain only strings, got boolean"),
        ("version", ["1"], "field 'version' must be a string, got array"),
        ("entrypoint", {}, "field 'entrypoint' must be a string, got object"),
    ],
)
def test_wrong_types(field: str, value: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(**{field: value})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_validation_errors(data: bytes) -> None:
    with contextlib.suppress(ManifestError, CapabilityError):
        Manifest.from_json(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from([*FIELDS, "extra"]), json_values, max_size=10), st.booleans()
)
def test_arbitrary_structures_only_raise_validation_errors(doc: dict[str, Any], fill: bool) -> None:
    if fill:
        doc = {**base(), **doc}
    with contextlib.suppress(ManifestError, CapabilityError):
        Manifest.from_json(json.dumps(doc))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), json_values)
def test_one_bad_field_only_raises_validation_errors(field: str, value: Any) -> None:
    with contextlib.suppress(ManifestError, CapabilityError):
        Manifest.from_json(json.dumps(base(**{field: value})))
