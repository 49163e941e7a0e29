"""Property-based fuzzing of every documented operation (schemathesis).

Whatever schemathesis generates from /openapi.json - valid, edge-case and
malformed requests, and stateful sequences - the server must never answer
with a 5xx.  Runs against a live server on each backend.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis not installed")
def test_no_generated_request_gets_a_server_error(live: LiveServer) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{live.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {live.admin_token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "10",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "passed" in r.stdout
