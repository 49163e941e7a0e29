"""Concurrent first starts on a fresh data dir: one migrator, one bootstrap,
the one-time password only on the server's stderr, never a crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

NO_USERS = "start the server once"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lattice", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _wait_ready(port: int, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


@pytest.mark.parametrize("round_", range(3))
def test_serve_and_other_commands_started_together_on_a_fresh_data_dir(
    tmp_path: Path, db_url: str, round_: int
) -> None:
    env = {**os.environ, "LATTICE_DATA_DIR": str(tmp_path / "data"), "LATTICE_DATABASE_URL": db_url}
    env.pop("LATTICE_ADMIN_PASSWORD", None)
    port = _free_port()
    token = ("token", "create", "--user", "admin", "--scopes", "kv:read", "--name", "ci")
    # all at once: who wins the race differs from round to round
    others = {
        "token": _start(*token, env=env),
        "upgrade": _start("db", "upgrade", env=env),
        "verify": _start("audit", "verify", env=env),
    }
    server = _start("serve", "--listen", f"127.0.0.1:{port}", env=env)
    results = {name: (p.communicate(timeout=120), p.returncode) for name, p in others.items()}
    try:
        _wait_ready(port, server)
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert "Traceback" not in err and "password" not in out
    assert err.count("Created user 'admin' with password: ") == 1, err

    for name, ((stdout, stderr), code) in results.items():
        assert "Traceback" not in stderr, (name, stderr)
        assert "password" not in stdout.lower(), (name, stdout)
        assert len(stderr.strip().splitlines()) <= 1 or code == 0, (name, stderr)
    (t_out, t_err), t_code = results["token"]
    assert (t_code == 0 and t_out.startswith("lat_")) or (
        t_code == 1 and NO_USERS in t_err and t_out == ""
    ), (t_code, t_out, t_err)
    assert results["upgrade"][1] == 0 and "revision" in results["upgrade"][0][0]
    (v_out, v_err), v_code = results["verify"]
    assert (v_code == 0 and "OK" in v_out) or (v_code == 1 and "nothing to verify" in v_err)

    # the outcome is consistent: admin exists once, the data dir is private and sound
    again = subprocess.run(
        [sys.executable, "-m", "lattice", *token], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and again.stdout.startswith("lat_"), again.stderr
    verify = subprocess.run(
        [sys.executable, "-m", "lattice", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for path in (tmp_path / "data").rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path
