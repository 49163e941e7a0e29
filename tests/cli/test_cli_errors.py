"""Every CLI failure is one actionable line on stderr and a non-zero exit, and
``--help`` names each option's env var and default.  Real subprocesses."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lattice.config import Settings


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    for name in ("LATTICE_DATABASE_URL", "LATTICE_DEBUG"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "lattice", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--listen", "127.0.0.1:0"],
        ["db", "upgrade"],
        ["audit", "verify"],
        ["token", "create", "--user", "admin", "--scopes", "kv:read", "--name", "t"],
    ],
)
def test_unreachable_postgresql_is_one_line_naming_host_and_port(
    data: Path, command: list[str]
) -> None:
    port = _free_port()  # nothing listens there
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/lattice"
    r = run(*command, env={"LATTICE_DATA_DIR": str(data), "LATTICE_DATABASE_URL": url})
    line = one_line_error(r)
    assert f"cannot connect to the database at 127.0.0.1:{port}" in line
    assert "LATTICE_DATABASE_URL" in line


@pytest.mark.parametrize("command", [["serve", "--listen", "127.0.0.1:0"], ["db", "upgrade"]])
def test_an_invalid_log_level_is_one_line(data: Path, command: list[str]) -> None:
    r = run(*command, env={"LATTICE_DATA_DIR": str(data), "LATTICE_LOG_LEVEL": "verbose"})
    line = one_line_error(r)
    assert "LATTICE_LOG_LEVEL" in line and "debug, info, warning, error" in line
    flag = run("serve", "--log-level", "loud", env={"LATTICE_DATA_DIR": str(data)})
    assert "LATTICE_LOG_LEVEL" in one_line_error(flag)


def test_invalid_trusted_proxies_are_one_line(data: Path) -> None:
    r = run("db", "upgrade", env={"LATTICE_DATA_DIR": str(data), "LATTICE_TRUSTED_PROXIES": "lb"})
    line = one_line_error(r)
    assert "LATTICE_TRUSTED_PROXIES" in line and "'lb'" in line


def test_audit_verify_on_a_new_data_dir_creates_nothing(tmp_path: Path, data: Path) -> None:
    r = run("audit", "verify", env={"LATTICE_DATA_DIR": str(data)})
    line = one_line_error(r)
    assert "nothing to verify" in line and str(data / "lattice.db") in line
    assert list(tmp_path.iterdir()) == []  # not even the data dir


@pytest.mark.parametrize("kind", ["missing", "directory", "unreadable"])
def test_a_bad_trust_file_is_named(tmp_path: Path, data: Path, kind: str) -> None:
    trust = tmp_path / "policy" / "trust.json"
    if kind == "directory":
        trust.mkdir(parents=True)
    elif kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads every file")
        trust.parent.mkdir()
        trust.write_text("{}")
        trust.chmod(0)
    env = {"LATTICE_DATA_DIR": str(data), "LATTICE_PLUGIN_TRUST": str(trust)}
    line = one_line_error(run("serve", "--listen", "127.0.0.1:0", env=env))
    assert str(trust) in line and "LATTICE_PLUGIN_TRUST" in line
    verify = run("plugin", "verify", str(tmp_path), env=env)
    assert str(trust) in one_line_error(verify)


def test_an_unexpected_exception_is_one_line_unless_debugging(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from lattice.cli.main import app, main\n"
        "@app.command('boom')\n"
        "def boom() -> None:\n"
        "    raise RuntimeError('wires crossed\\nsecond line')\n"
        "sys.argv = ['lattice', 'boom']\n"
        "main()\n"
    )

    def go(debug: bool) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LATTICE_DEBUG": "1" if debug else "0"}
        return subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )

    line = one_line_error(go(False))
    assert "RuntimeError: wires crossed" in line and "LATTICE_DEBUG=1" in line
    debug = go(True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_files_the_cli_creates_are_private(tmp_path: Path, data: Path) -> None:
    r = run("db", "upgrade", env={"LATTICE_DATA_DIR": str(data)})
    assert r.returncode == 0, r.stderr
    keys = tmp_path / "keys"
    r = run("plugin", "keygen", "--publisher", "acme.dev", "--out", str(keys), env={})
    assert r.returncode == 0, r.stderr
    created = [p for root in (data, keys) for p in (root, *root.rglob("*"))]
    assert len(created) >= 5
    for path in created:
        assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


COMMANDS = {
    ("serve",): ["listen", "data_dir", "database_url", "plugin_dir", "plugin_trust", "log_level"],
    ("db", "upgrade"): ["data_dir", "database_url"],
    ("admin", "create-user"): ["data_dir", "database_url"],
    ("admin", "set-password"): ["data_dir", "database_url"],
    ("admin", "unlock"): ["data_dir", "database_url"],
    ("token", "create"): ["data_dir", "database_url"],
    ("audit", "verify"): ["data_dir", "database_url"],
}


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_help_names_each_options_env_var_and_default(command: tuple[str, ...]) -> None:
    r = run(*command, "--help", env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    text = _flat(r.stdout)
    for field in COMMANDS[command]:
        flag = "--" + field.replace("_", "-")
        after = text.split(flag, 1)[1]
        env_name = f"LATTICE_{field.upper()}"
        assert f"(env {env_name}; default: " in after.split("--", 1)[0], (flag, after[:200])
        default = Settings.model_fields[field].default
        if default is not None:
            assert str(default) in after.split("--", 1)[0], (flag, default)
