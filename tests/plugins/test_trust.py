from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lattice.errors import CapabilityError, ConfigError, VerificationError
from lattice.plugins.capabilities import Risk
from lattice.plugins.manifest import Manifest
from lattice.plugins.trust import TrustPolicy, Verification, Verifier, b64decode_exact
from tests.plugins.bundles import Publisher, make_publisher, sign_dict

ARTIFACT = b"artifact bytes"
DIGEST = hashlib.sha256(ARTIFACT).hexdigest()


def doc(pub: Publisher | None = None, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": "demo.plugin",
        "name": "Demo",
        "type": "system",
        "capabilities": ["kv:read"],
        "version": "1.0.0",
        "entrypoint": "main",
        "publisher": pub.id if pub else "",
        "digest_sha256": DIGEST,
        "signature_ed25519": "",
    }
    d.update(over)
    return sign_dict(d, pub.key) if pub else d


def manifest(d: dict[str, Any]) -> Manifest:
    return Manifest.from_json(json.dumps(d))


def policy(*pubs: Publisher, **flags: bool) -> TrustPolicy:
    return TrustPolicy.from_json(
        json.dumps({"trusted_publishers": {p.id: p.public_b64 for p in pubs}, **flags})
    )


@pytest.fixture
def pub() -> Publisher:
    return make_publisher("acme.dev")


# -- policy -----------------------------------------------------------------


def test_default_policy_fails_closed(pub: Publisher) -> None:
    p = TrustPolicy.default()
    assert dict(p.trusted_publishers) == {} and p.insecure_flags() == ()
    assert TrustPolicy.from_json("{}") == p
    with pytest.raises(VerificationError, match=r"publisher 'acme\.dev' is not trusted"):
        Verifier(p).verify(manifest(doc(pub)), ARTIFACT)
    with pytest.raises(VerificationError, match="unsigned bundle not allowed"):
        Verifier(p).verify(manifest(doc()), ARTIFACT)


def test_policy_round_trip_and_flags(pub: Publisher, tmp_path: Path) -> None:
    p = policy(pub, allow_unsigned=True)
    assert p.insecure_flags() == ("allow_unsigned",)
    assert policy(allow_unsigned=True, allow_unsigned_host_risk=True).insecure_flags() == (
        "allow_unsigned",
        "allow_unsigned_host_risk",
    )
    assert p.to_dict()["trusted_publishers"] == {"acme.dev": pub.public_b64}
    assert p.to_public_dict() == {
        "trusted_publishers": ["acme.dev"],
        "namespaces": {},
        "allow_unsigned": True,
        "allow_unsigned_host_risk": False,
        "insecure_flags": ["allow_unsigned"],
    }
    f = tmp_path / "trust.json"
    f.write_text(json.dumps(p.to_dict()))
    assert TrustPolicy.from_file(f) == p


def test_unpadded_key_accepted(pub: Publisher) -> None:
    text = json.dumps({"trusted_publishers": {"acme.dev": pub.public_b64.rstrip("=")}})
    assert TrustPolicy.from_json(text).public_key_b64("acme.dev") == pub.public_b64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"trusted_publishers": {}, "allow_unsafe": True}, r"unknown field\(s\): 'allow_unsafe'"),
        ({"trusted_publishers": []}, r"'trusted_publishers' must be an object"),
        ({"allow_unsigned": "false"}, r"'allow_unsigned' must be a boolean"),
        ({"allow_unsigned_host_risk": 1}, r"'allow_unsigned_host_risk' must be a boolean"),
        ({"trusted_publishers": {"acme.dev": "ab" * 32}}, r"key for 'acme.dev' looks like hex"),
        ({"trusted_publishers": {"acme.dev": "AB" * 32}}, r"looks like hex"),
        (
            {"trusted_publishers": {"acme.dev": base64.b64encode(b"k" * 31).decode()}},
            r"decodes to 31 bytes, expected 32",
        ),
        (
            {"trusted_publishers": {"acme.dev": base64.b64encode(b"k" * 48).decode()}},
            r"decodes to 48 bytes",
        ),
        ({"trusted_publishers": {"acme.dev": "not base64!"}}, r"not standard base64"),
        ({"trusted_publishers": {"acme.dev": 5}}, r"must be a base64 string"),
        (
            {"trusted_publishers": {"Bad Pub": base64.b64encode(b"k" * 32).decode()}},
            r"trust policy: publisher 'Bad Pub' must be 3-128",
        ),
    ],
)
def test_policy_errors(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrustPolicy.from_json(json.dumps(body))


def test_policy_json_level_errors() -> None:
    with pytest.raises(ConfigError, match="trust policy has trailing data"):
        TrustPolicy.from_json("{} []")
    with pytest.raises(ConfigError, match="duplicate key 'allow_unsigned'"):
        TrustPolicy.from_json('{"allow_unsigned": false, "allow_unsigned": true}')
    with pytest.raises(ConfigError, match="trust policy must be a JSON object"):
        TrustPolicy.from_json("[]")


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open trust policy file: No such file"):
        TrustPolicy.from_file(tmp_path / "missing.json")
    real = tmp_path / "real.json"
    real.write_text("{}")
    (tmp_path / "link.json").symlink_to(real)
    with pytest.raises(ConfigError, match="cannot open trust policy file: Too many levels"):
        TrustPolicy.from_file(tmp_path / "link.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        TrustPolicy.from_file(Path(os.devnull))
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="exceeds 1048576 bytes"):
        TrustPolicy.from_file(big)


def test_b64decode_exact() -> None:
    raw = bytes(range(64))
    text = base64.b64encode(raw).decode()
    assert b64decode_exact(text, 64) == raw
    assert b64decode_exact(text.rstrip("="), 64) == raw
    with pytest.raises(ValueError, match="not canonical"):
        b64decode_exact(text[:-3] + "B==", 64)  # non-zero trailing bits
    with pytest.raises(ValueError, match="not standard base64"):
        b64decode_exact(text.replace("+", "-"), 64)


# -- verifier ---------------------------------------------------------------


def test_signed_ok(pub: Publisher) -> None:
    v = Verifier(policy(pub)).verify(
        manifest(doc(pub, capabilities=["kv:read", "task:run", "http:egress"])), ARTIFACT
    )
    assert v.signed and v.publisher == "acme.dev" and v.digest_sha256 == DIGEST
    assert dict(v.capabilities) == {
        "kv:read": Risk.READ,
        "task:run": Risk.HOST,
        "http:egress": Risk.WRITE,
    }
    assert Verifier(policy(pub)).verify_digest(v.manifest, DIGEST) == v


def test_verification_cannot_be_forged(pub: Publisher) -> None:
    m = manifest(doc(pub))
    with pytest.raises(VerificationError, match="only be produced by Verifier"):
        Verification(m, DIGEST, True, "acme.dev", {}, object())


def test_digest_mismatch(pub: Publisher) -> None:
    with pytest.raises(VerificationError, match="artifact digest mismatch") as ei:
        Verifier(policy(pub)).verify(manifest(doc(pub)), ARTIFACT + b"!")
    assert ei.value.plugin_id == "demo.plugin"


def test_untrusted_publisher(pub: Publisher) -> None:
    other = make_publisher("other.dev")
    with pytest.raises(VerificationError, match=r"publisher 'other\.dev' is not trusted"):
        Verifier(policy(pub, allow_unsigned=True)).verify(manifest(doc(other)), ARTIFACT)


def test_signature_from_wrong_key_for_trusted_name(pub: Publisher) -> None:
    impostor = make_publisher("acme.dev")
    with pytest.raises(VerificationError, match=r"signature invalid for publisher 'acme\.dev'"):
        Verifier(policy(pub)).verify(manifest(doc(impostor)), ARTIFACT)


@pytest.mark.parametrize(
    "tamper",
    [
        {"id": "other.plugin"},
        {"name": "Demo 2"},
        {"version": "1.0.1"},
        {"entrypoint": "evil"},
        {"capabilities": ["kv:read", "task:run"]},
        {"type": "wasm"},
    ],
)
def test_tamper_after_signing(pub: Publisher, tamper: dict[str, Any]) -> None:
    d = {**doc(pub), **tamper}
    with pytest.raises(VerificationError, match=r"signature invalid for publisher 'acme\.dev'"):
        Verifier(policy(pub)).verify(manifest(d), ARTIFACT)


def test_tampered_digest_and_artifact_fails_on_signature(pub: Publisher) -> None:
    d = {**doc(pub), "digest_sha256": hashlib.sha256(b"evil").hexdigest()}
    with pytest.raises(VerificationError, match="signature invalid"):
        Verifier(policy(pub)).verify(manifest(d), b"evil")


@pytest.mark.parametrize(
    ("sig", "message"),
    [
        (
            base64.b64encode(b"s" * 63).decode(),
            "malformed signature: decodes to 63 bytes, expected 64",
        ),
        (base64.b64encode(b"s" * 65).decode(), "malformed signature: decodes to 65 bytes"),
        ("A", "malformed signature: not standard base64"),
    ],
)
def test_malformed_signature(pub: Publisher, sig: str, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        Verifier(policy(pub)).verify(manifest({**doc(pub), "signature_ed25519": sig}), ARTIFACT)


def test_unpadded_signature_accepted(pub: Publisher) -> None:
    d = doc(pub)
    d["signature_ed25519"] = d["signature_ed25519"].rstrip("=")
    assert Verifier(policy(pub)).verify(manifest(d), ARTIFACT).signed


def test_signature_without_publisher(pub: Publisher) -> None:
    d = {**doc(pub), "publisher": ""}
    with pytest.raises(VerificationError, match="signature present but no publisher"):
        Verifier(policy(pub, allow_unsigned=True)).verify(manifest(d), ARTIFACT)


def test_named_publisher_must_sign_whatever_the_flags(pub: Publisher) -> None:
    d = {**doc(pub), "signature_ed25519": ""}
    loose = policy(pub, allow_unsigned=True, allow_unsigned_host_risk=True)
    with pytest.raises(
        VerificationError, match=r"names publisher 'acme\.dev' but carries no signature"
    ):
        Verifier(loose).verify(manifest(d), ARTIFACT)


HOST_CAPS = ["kv:read", "node:admin"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "unsigned bundle not allowed"),
        ({"allow_unsigned_host_risk": True}, "unsigned bundle not allowed"),
        (
            {"allow_unsigned": True},
            "host-risk capability 'node:admin' requires allow_unsigned_host_risk",
        ),
    ],
)
def test_unsigned_host_risk(flags: dict[str, bool], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        Verifier(policy(**flags)).verify(manifest(doc(capabilities=HOST_CAPS)), ARTIFACT)


def test_unsigned_allowed_by_flags() -> None:
    both = policy(allow_unsigned=True, allow_unsigned_host_risk=True)
    assert not Verifier(both).verify(manifest(doc(capabilities=HOST_CAPS)), ARTIFACT).signed
    assert not Verifier(policy(allow_unsigned=True)).verify(manifest(doc()), ARTIFACT).signed


@pytest.mark.parametrize("type_", ["system", "wasm"])
def test_http_egress_unsigned_always_refused(type_: str) -> None:
    both = policy(allow_unsigned=True, allow_unsigned_host_risk=True)
    m = manifest(doc(type=type_, capabilities=["http:egress"]))
    with pytest.raises(VerificationError, match="http:egress always requires a trusted signature"):
        Verifier(both).verify(m, ARTIFACT)


def test_unsigned_digest_still_checked() -> None:
    with pytest.raises(VerificationError, match="artifact digest mismatch"):
        Verifier(policy(allow_unsigned=True)).verify(manifest(doc()), b"other")


def test_manifest_replace_revalidates(pub: Publisher) -> None:
    m = manifest(doc(pub))
    with pytest.raises(CapabilityError, match="not allowed for type 'worker'"):
        dataclasses.replace(m, type="worker", capabilities=("task:run",))


policy_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_policy_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        TrustPolicy.from_json(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["trusted_publishers", "allow_unsigned", "allow_unsigned_host_risk", "x"]),
        policy_values
        | st.dictionaries(
            st.sampled_from(["acme.dev", "A", ""]),
            policy_values | st.text(alphabet="ABCabc0123+/=", max_size=90),
        ),
    )
)
def test_policy_arbitrary_structures(body: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        TrustPolicy.from_json(json.dumps(body))
