"""Shared fixtures: a throwaway PostgreSQL, per-test databases, a live server.

Store and API tests take the ``db_url`` fixture, which runs them once on
SQLite and once on PostgreSQL.  PostgreSQL comes from ``LATTICE_TEST_PG_URL``
(an admin URL, e.g. ``postgresql+psycopg://postgres@127.0.0.1:55432/postgres``)
or, when that is unset and the server binaries are installed, from a cluster
this session starts in a temporary directory.  Without either, PostgreSQL
cases are skipped - unless ``LATTICE_TEST_REQUIRE_PG=1`` (CI), which turns
that into a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

from lattice.app import build_container, create_app, server_config
from lattice.config import Settings
from lattice.container import Container

ADMIN_PASSWORD = "test-admin-password-123"


# -- PostgreSQL ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_throwaway_pg() -> tuple[str, Any] | None:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        return None
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="lattice-pg-"))
    port = _free_port()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres"]
        + ["-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
        + ["-o", f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"]
        + ["-o", "-c fsync=off -c synchronous_commit=off -c max_connections=300", "start"],
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str | None]:
    url = os.environ.get("LATTICE_TEST_PG_URL")
    stop = None
    if not url:
        try:
            started = _start_throwaway_pg()
        except (subprocess.CalledProcessError, OSError) as exc:
            started = None
            reason = f"could not start PostgreSQL: {exc}"
        else:
            reason = "PostgreSQL binaries not installed"
        if started is None:
            if os.environ.get("LATTICE_TEST_REQUIRE_PG") == "1":
                pytest.fail(f"LATTICE_TEST_REQUIRE_PG=1 but {reason}")
            yield None
            return
        url, stop = started
    try:
        yield url
    finally:
        if stop is not None:
            stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'lattice.db'}"
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    if admin_url is None:
        pytest.skip("PostgreSQL not available (set LATTICE_TEST_PG_URL or install postgresql)")
    name = "t_" + uuid.uuid4().hex[:16]
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


# -- settings and a live server ------------------------------------------------


@pytest.fixture
def settings_factory(tmp_path: Path, db_url: str) -> Any:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": db_url,
            "admin_password": ADMIN_PASSWORD,
            "listen": "127.0.0.1:0",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(settings_factory: Any) -> Settings:
    return settings_factory()  # type: ignore[no-any-return]


@dataclass
class LiveServer:
    """A real uvicorn server on an ephemeral loopback port, in a thread."""

    container: Container
    server: uvicorn.Server
    thread: threading.Thread
    url: str
    clients: list[httpx.Client] = field(default_factory=list)
    _admin: str | None = None

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)
        self.clients.append(c)
        return c

    def token(self, *scopes: str, user: str = "admin", name: str | None = None) -> str:
        token, _info = self.container.auth.create_token(
            user, name=name or "test", scopes=list(scopes), expires_in_days=None
        )
        return token

    @property
    def admin_token(self) -> str:
        if self._admin is None:
            self._admin = self.token("*", name="admin")
        return self._admin

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(settings: Settings) -> LiveServer:
    container = build_container(settings, announce=lambda _msg: None)
    app = create_app(container)
    config = server_config(app, settings, host="127.0.0.1", port=0)  # what `lattice serve` runs
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server failed to start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return LiveServer(container, server, thread, f"http://127.0.0.1:{port}")


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    srv = start_server(settings)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True, scope="session")
def _cheap_argon2() -> Iterator[None]:
    """Real argon2id, with the smallest cost parameters: tests create and check
    many passwords, and the defaults (64 MiB, 3 passes) cost ~100 ms each here.
    The production parameters are pinned by tests/core/test_passwords.py."""
    from argon2 import PasswordHasher

    from lattice.core import auth

    original = auth.make_hasher
    auth.make_hasher = lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    auth.make_hasher = original
