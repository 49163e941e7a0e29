"""Application assembly: build the services once, mount the routers.

``build_container`` is the one place where concrete implementations are
wired together; ``create_app`` turns a container into an ASGI app.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import APIRouter, FastAPI

from lattice import __version__
from lattice.api import audit as audit_api
from lattice.api import auth as auth_api
from lattice.api import health as health_api
from lattice.api import kv as kv_api
from lattice.api import static as static_api
from lattice.api.errors import install_error_handlers
from lattice.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from lattice.config import Settings
from lattice.container import Container
from lattice.core.audit import AuditLog
from lattice.core.auth import AuthService
from lattice.core.metrics import Metrics
from lattice.core.secrets import SecretBox, load_or_create_key
from lattice.errors import ConfigError
from lattice.services.kv import SqlKV
from lattice.services.static import SqlStatic
from lattice.store.db import Database, secure_sqlite_file
from lattice.store.migrate import upgrade

__all__ = ["ROUTERS", "build_container", "create_app"]

log = logging.getLogger("lattice")

VERIFY_BODY_LIMIT = 4 * 1024 * 1024

#: every router the app mounts; tests walk these to check each route's scope
ROUTERS: tuple[APIRouter, ...] = (
    health_api.router,
    auth_api.router,
    audit_api.router,
    kv_api.router,
    static_api.router,
)


def prepare_data_dir(settings: Settings) -> None:
    path = settings.data_dir
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {path}: {exc.strerror}") from exc


def build_container(settings: Settings, *, announce: Callable[[str], None] = print) -> Container:
    prepare_data_dir(settings)
    db = Database(settings.effective_database_url)
    upgrade(db)
    secure_sqlite_file(db.url)
    metrics = Metrics()
    audit = AuditLog(db, on_append=metrics.on_audit)
    auth = AuthService(
        db,
        audit,
        session_ttl=timedelta(hours=settings.session_ttl_hours),
        login_limit=settings.login_max_attempts,
        login_window=float(settings.login_window_seconds),
    )
    admin_password = settings.admin_password.get_secret_value() if settings.admin_password else None
    generated = auth.bootstrap_admin(admin_password)
    if generated:
        announce(
            "Created user 'admin' with password: "
            f"{generated}\n(shown once; change it with `lattice admin set-password admin`)"
        )
    box = SecretBox(load_or_create_key(settings.effective_secret_key_file))
    return Container(
        settings=settings,
        db=db,
        metrics=metrics,
        audit=audit,
        auth=auth,
        secrets=box,
        kv=SqlKV(db, max_value_bytes=settings.kv_max_value_bytes),
        static=SqlStatic(db, max_bytes=settings.static_max_bytes),
    )


def _body_limits(settings: Settings) -> Callable[[str], int]:
    def limit_for(path: str) -> int:
        if path.startswith("/api/static/"):
            return settings.static_max_bytes
        if path == "/api/plugins/verify":
            return VERIFY_BODY_LIMIT
        if path.startswith("/api/kv/"):
            return settings.kv_max_value_bytes
        return settings.max_body_bytes

    return limit_for


def create_app(container: Container) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        container.db.dispose()

    app = FastAPI(
        title="Lattice",
        version=__version__,
        description="Self-hosted control plane with a safe plugin platform",
        lifespan=lifespan,
    )
    app.state.container = container
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, limit_for=_body_limits(container.settings))
    app.add_middleware(RequestContextMiddleware, metrics=container.metrics)
    return app
