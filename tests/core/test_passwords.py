"""Production password hashing parameters (the suite runs with cheaper ones)."""

from __future__ import annotations

from argon2 import Type

# imported at collection time, before conftest's session fixture swaps it
from lattice.core.auth import make_hasher


def test_production_hasher_is_argon2id_with_strong_costs() -> None:
    hasher = make_hasher()
    assert hasher.type is Type.ID
    assert hasher.memory_cost >= 64 * 1024 and hasher.time_cost >= 3
    encoded = hasher.hash("correct horse battery staple")
    assert encoded.startswith("$argon2id$")
    assert hasher.verify(encoded, "correct horse battery staple")
