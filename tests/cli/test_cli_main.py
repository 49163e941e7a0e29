"""The lattice CLI as a user runs it: a real subprocess per command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

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
def env(tmp_path: Path, db_url: str) -> dict[str, str]:
    return {
        "LATTICE_DATA_DIR": str(tmp_path / "data"),
        "LATTICE_DATABASE_URL": db_url,
        "LATTICE_ADMIN_PASSWORD": "cli-admin-password",
    }


def test_help_for_every_command(env: dict[str, str]) -> None:
    for cmd in (
        [],
        ["serve"],
        ["db", "upgrade"],
        ["admin", "set-password"],
        ["token", "create"],
        ["audit", "verify"],
    ):
        r = run(*cmd, "--help", env=env)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_db_upgrade_then_token_then_verify(env: dict[str, str], db_url: str) -> None:
    r = run("db", "upgrade", env=env)
    assert r.returncode == 0 and "revision 0" in r.stdout, r.stderr
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
