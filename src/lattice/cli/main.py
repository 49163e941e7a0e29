"""The ``lattice`` command line.

Every command reads the same ``LATTICE_*`` settings as the server; flags
override them.  Errors print one actionable line to stderr and exit non-zero,
never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from sqlalchemy.engine import make_url

from lattice import __version__
from lattice.config import LOG_LEVELS, Settings, load_settings
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

#: how a setting whose default is computed from another one is shown in --help
_COMPUTED_DEFAULTS = {
    "database_url": "SQLite at <data dir>/lattice.db",
    "plugin_dir": "<data dir>/plugins",
    "plugin_trust": "none: no publisher is trusted",
}


def setting_help(field: str, text: str) -> str:
    """Help text naming the setting's env var and default, read from
    :class:`Settings` so the two cannot drift apart."""
    default = Settings.model_fields[field].default
    if default is None:
        shown = _COMPUTED_DEFAULTS.get(field, "none")
    elif isinstance(default, Path) and not default.is_absolute():
        shown = f"./{default}"
    else:
        shown = str(default)
    return f"{text} (env LATTICE_{field.upper()}; default: {shown})"


DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help=setting_help("data_dir", "Data directory."))
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help=setting_help("database_url", "SQLAlchemy URL.")),
]

NO_USERS = (
    "no users yet: start the server once (`lattice serve`); it creates the admin user "
    "and prints its one-time password to its stderr"
)


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
    """The services, for a command that manages users or tokens.  Never
    bootstraps: only ``lattice serve`` creates the admin user."""
    from lattice.app import build_container

    container = guarded(lambda: build_container(settings))
    if not guarded(container.auth.has_users):
        raise fail(NO_USERS)
    return container


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
        str | None, typer.Option("--listen", help=setting_help("listen", "HOST:PORT to serve on."))
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    plugin_dir: Annotated[
        Path | None,
        typer.Option("--plugin-dir", help=setting_help("plugin_dir", "Plugin bundles.")),
    ] = None,
    plugin_trust: Annotated[
        Path | None,
        typer.Option("--plugin-trust", help=setting_help("plugin_trust", "Trust policy file.")),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", help=setting_help("log_level", "|".join(LOG_LEVELS) + ".")),
    ] = None,
) -> None:
    """Start the server (migrates the database first; Ctrl-C or SIGTERM stops it cleanly).

    On first start it creates the user 'admin' and prints its one-time password
    to stderr (or uses LATTICE_ADMIN_PASSWORD).  Every other setting is read
    from its LATTICE_* variable; see the README's configuration table.
    """
    from lattice.app import build_container, create_app, server_config
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
    container = guarded(
        lambda: build_container(settings, announce=lambda msg: typer.echo(msg, err=True))
    )
    application = create_app(container)
    host, port = sock.getsockname()[:2]
    typer.echo(f"Lattice {__version__} listening on http://{host}:{port}", err=True)
    _GracefulServer(server_config(application, settings)).run(sockets=[sock])


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
    except LatticeError as exc:
        raise fail(exc.message) from None
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
    container = _container(_settings(data_dir=data_dir, database_url=database_url))
    password = _read_password(password_stdin)
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
    container = _container(_settings(data_dir=data_dir, database_url=database_url))
    password = _read_password(password_stdin)
    guarded(lambda: container.auth.set_password(user, password))
    typer.echo(f"password for {user!r} updated")


@admin_app.command("unlock")
def unlock(
    user: Annotated[str, typer.Argument(help="User name, e.g. admin")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Clear a user's failed logins from every address (audited as user.unlock)."""
    container = _container(_settings(data_dir=data_dir, database_url=database_url))
    cleared = guarded(lambda: container.auth.unlock(user))
    typer.echo(f"cleared {cleared} failed login(s) of {user!r}")


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="Owner of the token")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated scopes, e.g. kv:read")],
    name: Annotated[str, typer.Option("--name", help="A label for the token")],
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", help="Days until it expires (default: never)")
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
    _database_exists(settings)
    db = Database(settings.effective_database_url)
    _migrated(db)
    try:  # fail closed: without the key nothing can be said about the chain
        key = AuditKey(load_key(settings.effective_secret_key_file))
    except LatticeError as exc:
        empty = guarded(AuditLog(db).count) == 0
        db.dispose()
        if empty:  # a first start is still under way: no key, no events yet
            raise fail("nothing to verify yet: the audit log is empty") from None
        raise fail(f"cannot verify the audit chain without its key: {exc.message}", 2) from None
    checkpoints = CheckpointFile(settings.data_dir / CHECKPOINT_FILE, key)
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


def _database_exists(settings: Settings) -> None:
    """``audit verify`` on a data dir without a database: say so, create nothing."""
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise fail(
            f"nothing to verify: no database at {url.database} "
            "(check --data-dir / LATTICE_DATA_DIR)"
        )


def _migrated(db: Any) -> None:
    from lattice.store.migrate import check_reachable, current_revision

    try:
        check_reachable(db)
        revision = current_revision(db)
    except LatticeError as exc:
        db.dispose()
        raise fail(exc.message) from None
    if revision is None:
        db.dispose()
        raise fail("nothing to verify: the database has no Lattice tables yet")


def _mount_optional() -> None:
    try:
        from lattice.cli.plugin import plugin_app
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    app.add_typer(plugin_app, name="plugin", help="Plugin bundles: keys, signing, verification.")


_mount_optional()


def main() -> None:
    """Run the CLI: files it creates are private to the user (umask 077), and an
    unexpected failure is one line (LATTICE_DEBUG=1 prints the traceback)."""
    os.umask(0o077)
    try:
        app()
    except Exception as exc:  # the last line of defence: never a bare traceback
        if os.environ.get("LATTICE_DEBUG") == "1":
            traceback.print_exc()
        else:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            typer.echo(
                f"error: unexpected {type(exc).__name__}: {first} "
                "(rerun with LATTICE_DEBUG=1 for the traceback)",
                err=True,
            )
        sys.exit(1)
