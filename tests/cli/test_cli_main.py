"""The lattice CLI as a user runs it: a real subprocess per command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from lattice.app import build_container
from lattice.config import Settings
from lattice.store.db import Database
from lattice.store.tables import audit_events


def run(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lattice", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def fresh_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    """A data dir (and database) nothing has touched yet."""
    return {
        "LATTICE_DATA_DIR": str(tmp_path / "data"),
        "LATTICE_DATABASE_URL": db_url,
        "LATTICE_ADMIN_PASSWORD": "cli-admin-password",
    }


@pytest.fixture
def env(fresh_env: dict[str, str]) -> dict[str, str]:
    """A data dir a server has started on once (so the admin user exists)."""
    settings = Settings(
        data_dir=Path(fresh_env["LATTICE_DATA_DIR"]),
        database_url=fresh_env["LATTICE_DATABASE_URL"],
        admin_password=fresh_env["LATTICE_ADMIN_PASSWORD"],
    )
    build_container(settings, announce=lambda _msg: None).close()
    return fresh_env


def test_help_for_every_command(env: dict[str, str]) -> None:
    for cmd in (
        [],
        ["serve"],
        ["db", "upgrade"],
        ["admin", "set-password"],
        ["admin", "create-user"],
        ["admin", "unlock"],
        ["token", "create"],
        ["audit", "verify"],
    ):
        r = run(*cmd, "--help", env=env)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_db_upgrade_then_token_then_verify(env: dict[str, str], db_url: str) -> None:
    r = run("db", "upgrade", env=env)
    assert r.returncode == 0 and "revision 0" in r.stdout, r.stderr
    r = run("audit", "verify", env=env)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    r = run(
        "token",
        "create",
        "--user",
        "admin",
        "--scopes",
        "kv:read,kv:write",
        "--name",
        "ci",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("lat_")
    r = run("audit", "verify", env=env)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
    db = Database(db_url)
    with db.write() as conn:
        conn.execute(update(audit_events).where(audit_events.c.seq == 1).values(reason="edited"))
    db.dispose()
    r = run("audit", "verify", env=env)
    assert r.returncode == 1
    assert "BROKEN at seq 1" in r.stdout


def test_token_create_errors_are_one_line(env: dict[str, str]) -> None:
    r = run("token", "create", "--user", "nobody", "--scopes", "kv:read", "--name", "x", env=env)
    assert r.returncode == 1
    assert r.stderr.startswith("error: no user named 'nobody'")
    assert "Traceback" not in r.stderr
    r = run("token", "create", "--user", "admin", "--scopes", "bogus", "--name", "x", env=env)
    assert r.returncode == 1 and "unknown scope 'bogus'" in r.stderr


def test_set_password_from_stdin(env: dict[str, str]) -> None:
    r = run(
        "admin", "set-password", "admin", "--password-stdin", env=env, stdin="a-new-long-password\n"
    )
    assert r.returncode == 0, r.stderr
    short = run("admin", "set-password", "admin", "--password-stdin", env=env, stdin="short\n")
    assert short.returncode == 1 and "at least 12" in short.stderr
    ghost = run(
        "admin", "set-password", "ghost", "--password-stdin", env=env, stdin="x" * 20 + "\n"
    )
    assert ghost.returncode == 1 and "no user named 'ghost'" in ghost.stderr


def test_bad_settings_are_reported_by_name(env: dict[str, str]) -> None:
    r = run("db", "upgrade", env={**env, "LATTICE_LISTEN": "nonsense"})
    assert r.returncode == 1
    assert "LATTICE_LISTEN" in r.stderr and "Traceback" not in r.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_prints_the_password_once_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    port = _free_port()
    env = {**os.environ, "LATTICE_DATA_DIR": str(tmp_path / "data")}
    env.pop("LATTICE_ADMIN_PASSWORD", None)
    env.pop("LATTICE_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lattice", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("server did not become ready")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Created user 'admin' with password:" in err and "password" not in out
    password = err.split("password: ", 1)[1].split()[0]
    assert len(password) >= 16 and err.count(password) == 1
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    for private in ("lattice.db", "secret.key"):
        assert (tmp_path / "data" / private).stat().st_mode & 0o777 == 0o600, private


def test_serve_on_a_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(
            "serve", "--listen", f"127.0.0.1:{port}", env={"LATTICE_DATA_DIR": str(tmp_path / "d")}
        )
    assert r.returncode == 1
    assert "cannot listen on" in r.stderr and "Traceback" not in r.stderr


def test_create_user_bounds_the_tokens_it_can_hold(env: dict[str, str]) -> None:
    pw = "ops-password-1234\n"
    r = run("admin", "create-user", "ops", "--scopes", "kv:read,audit:read", "--password-stdin",
            env=env, stdin=pw)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "user 'ops' created with scopes audit:read,kv:read" in r.stdout
    ok = run("token", "create", "--user", "ops", "--scopes", "kv:read", "--name", "t", env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("lat_")
    wide = run("token", "create", "--user", "ops", "--scopes", "kv:write", "--name", "t", env=env)
    assert wide.returncode == 1 and "does not hold" in wide.stderr
    again = run("admin", "create-user", "ops", "--scopes", "kv:read", "--password-stdin",
                env=env, stdin=pw)  # fmt: skip
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = run("admin", "create-user", "x", "--scopes", "root", "--password-stdin",
              env=env, stdin=pw)  # fmt: skip
    assert bad.returncode == 1 and "unknown scope 'root'" in bad.stderr
