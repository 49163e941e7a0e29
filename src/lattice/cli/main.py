"""The ``lattice`` command line.

Every command reads the same ``LATTICE_*`` settings as the server; flags
override them.  Errors print one actionable line to stderr and exit non-zero,
never a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn

from lattice import __version__
from lattice.config import Settings, load_settings
from lattice.errors import (
    AuditChainBroken,
    AuditChainTruncated,
    AuditCheckpointInvalid,
    LatticeError,
)

app = typer.Typer(
    name="lattice",
    help="Lattice: a self-hosted control plane with a safe plugin platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
admin_app = typer.Typer(help="User administration.", no_args_is_help=True)
token_app = typer.Typer(help="Personal access tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")

T = TypeVar("T")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory [env LATTICE_DATA_DIR]")
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL [env LATTICE_DATABASE_URL]"),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def guarded(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except LatticeError as exc:
        raise fail(exc.message) from None


def _settings(**flags: Any) -> Settings:
    return guarded(lambda: load_settings(**flags))


def _container(settings: Settings) -> Any:
    from lattice.app import build_container

    return guarded(lambda: build_container(settings))


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.command()
def serve(
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT [env LATTICE_LISTEN]")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    plugin_dir: Annotated[
        Path | None, typer.Option("--plugin-dir", help="Bundles [env LATTICE_PLUGIN_DIR]")
    ] = None,
    plugin_trust: Annotated[
        Path | None, typer.Option("--plugin-trust", help="Trust policy [env LATTICE_PLUGIN_TRUST]")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug|info|warning [env LATTICE_LOG_LEVEL]")
    ] = None,
) -> None:
    """Start the server (migrates the database first; Ctrl-C or SIGTERM stops it cleanly)."""
    from lattice.app import create_app
    from lattice.core.logging import configure_logging

    settings = _settings(
        listen=listen,
        data_dir=data_dir,
        database_url=database_url,
        plugin_dir=plugin_dir,
        plugin_trust=plugin_trust,
        log_level=log_level,
    )
    configure_logging(settings.log_level)
    sock = _bind(settings.host, settings.port)
    container = _container(settings)
    application = create_app(container)
    host, port = sock.getsockname()[:2]
    typer.echo(f"Lattice {__version__} listening on http://{host}:{port}", err=True)
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    _GracefulServer(config).run(sockets=[sock])


class _GracefulServer(uvicorn.Server):
    """SIGINT/SIGTERM start a graceful shutdown (lifespan: plugins stopped, audit
    buffer flushed); the process then exits 0 instead of re-raising the signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _bind(host: str, port: int) -> socket.socket:
    """Bind before doing any work, so a busy port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise fail(
            f"cannot listen on {host}:{port}: {exc.strerror}; "
            "choose another address with --listen or LATTICE_LISTEN"
        ) from None
    sock.set_inheritable(True)
    return sock


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Apply database migrations up to the newest revision."""
    from lattice.app import prepare_data_dir
    from lattice.store.db import Database
    from lattice.store.migrate import current_revision, upgrade

    settings = _settings(data_dir=data_dir, database_url=database_url)
    guarded(lambda: prepare_data_dir(settings))
    db = Database(settings.effective_database_url)
    try:
        upgrade(db)
        typer.echo(f"database at revision {current_revision(db)}")
    except Exception as exc:
        raise fail(f"migration failed: {type(exc).__name__}: {exc}") from None
    finally:
        db.dispose()


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin")
]


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@admin_app.command("create-user")
def create_user(
    user: Annotated[str, typer.Argument(help="User name: a-z, 0-9, '.', '_', '-'")],
    scopes: Annotated[
        str, typer.Option("--scopes", help="Comma-separated scopes, e.g. kv:read,audit:read")
    ],
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a user holding the given scopes (their tokens can hold no more)."""
    password = _read_password(password_stdin)
    container = _container(_settings(data_dir=data_dir, database_url=database_url))
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    guarded(lambda: container.auth.create_user(user, password, wanted, actor="cli"))
    typer.echo(f"user {user!r} created with scopes {','.join(sorted(set(wanted)))}")


@admin_app.command("set-password")
def set_password(
    user: Annotated[str, typer.Argument(help="User name, e.g. admin")],
    password_stdin: PasswordStdin = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a user's password (and end their sessions)."""
    password = _read_password(password_stdin)
    container = _container(_settings(data_dir=data_dir, database_url=database_url))
    guarded(lambda: container.auth.set_password(user, password))
    typer.echo(f"password for {user!r} updated")


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="Owner of the token")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated scopes, e.g. kv:read")],
    name: Annotated[str, typer.Option("--name", help="A label for the token")],
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", help="Expiry (default: never)")
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a personal access token; it is printed once."""
    container = _container(_settings(data_dir=data_dir, database_url=database_url))
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    token, info = guarded(
        lambda: container.auth.create_token(
            user, name=name, scopes=wanted, expires_in_days=expires_in_days
        )
    )
    typer.echo(token)
    typer.echo(f"token id {info.id}, scopes {','.join(info.scopes)} (shown once)", err=True)


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Check the audit chain (hashes, MACs, checkpoint); exit 1 naming the first bad seq."""
    from lattice.core.audit import AuditLog
    from lattice.core.auditseal import CHECKPOINT_FILE, AuditKey, CheckpointFile
    from lattice.core.secrets import load_key
    from lattice.store.db import Database

    settings = _settings(data_dir=data_dir, database_url=database_url)
    try:  # fail closed: without the key nothing can be said about the chain
        key = AuditKey(load_key(settings.effective_secret_key_file))
    except LatticeError as exc:
        raise fail(f"cannot verify the audit chain without its key: {exc.message}", 2) from None
    checkpoints = CheckpointFile(settings.data_dir / CHECKPOINT_FILE, key)
    db = Database(settings.effective_database_url)
    log = AuditLog(db, key=key, checkpoints=checkpoints)

    def progress(n: int) -> None:
        typer.echo(f"  verified {n}/{total} events", err=True)

    try:
        anchor = log.latest_checkpoint()
        total = log.count()
        checked = log.verify(progress=progress if total >= 5000 else None)
    except AuditChainTruncated as exc:
        typer.echo(f"audit chain TRUNCATED after seq {exc.last_seq}: {exc.reason}")
        raise typer.Exit(1) from None
    except AuditChainBroken as exc:
        typer.echo(f"audit chain BROKEN at seq {exc.seq}: {exc.reason}")
        raise typer.Exit(1) from None
    except AuditCheckpointInvalid as exc:
        typer.echo(f"audit checkpoint INVALID: {exc.message}")
        raise typer.Exit(1) from None
    except LatticeError as exc:
        raise fail(exc.message) from None
    finally:
        db.dispose()
    if anchor is None:
        typer.echo(f"audit chain OK: {checked} events verified")
        typer.echo(
            f"warning: no checkpoint at {checkpoints.path} yet, so a deleted tail would go "
            "unnoticed (the server writes one at start, every 10 s and at shutdown)",
            err=True,
        )
        return
    typer.echo(
        f"audit chain OK: {checked} events verified; "
        f"checkpoint at seq {anchor.seq} ({anchor.ts}) matches"
    )


def _mount_optional() -> None:
    try:
        from lattice.cli.plugin import plugin_app
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    app.add_typer(plugin_app, name="plugin", help="Plugin bundles: keys, signing, verification.")


_mount_optional()


def main() -> None:
    app()
