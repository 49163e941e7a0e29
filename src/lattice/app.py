"""Application assembly: build the services once, mount the routers.

``build_container`` is the one place where concrete implementations are
wired together; ``create_app`` turns a container into an ASGI app.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.concurrency import run_in_threadpool

from lattice import __version__
from lattice.api import audit as audit_api
from lattice.api import auth as auth_api
from lattice.api import docs as docs_api
from lattice.api import health as health_api
from lattice.api import kv as kv_api
from lattice.api import notify as notify_api
from lattice.api import plugins as plugins_api
from lattice.api import static as static_api
from lattice.api import workers as workers_api
from lattice.api.errors import install_error_handlers
from lattice.api.middleware import RequestMiddleware
from lattice.config import Settings
from lattice.container import Container
from lattice.core.audit import AuditLog
from lattice.core.auditbuffer import BufferedAudit
from lattice.core.auditseal import CHECKPOINT_FILE, AuditKey, Checkpointer, CheckpointFile
from lattice.core.auth import AuthService
from lattice.core.logging import flush_access
from lattice.core.metrics import Metrics
from lattice.core.secrets import SecretBox, load_or_create_key
from lattice.errors import ConfigError, LatticeError
from lattice.plugins.broker import Broker
from lattice.plugins.host import HostServices
from lattice.plugins.lifecycle import LifecycleRegistry
from lattice.plugins.loader import PluginLoader
from lattice.plugins.platform import PluginPlatform
from lattice.plugins.ratelimits import HostRateLimits, parse_limits
from lattice.plugins.runners.js import JsLimits
from lattice.plugins.runners.noop import NoopRunner
from lattice.plugins.runners.worker import WorkerRunner
from lattice.plugins.runtime import RuntimeManager
from lattice.plugins.trust import TrustPolicy, Verifier
from lattice.plugins.worker_registry import WorkerRegistry
from lattice.services.egress import EgressGuard
from lattice.services.egress_policy import EgressPolicy
from lattice.services.kv import SqlKV
from lattice.services.logs import SqlPluginLogs
from lattice.services.notify import NotifyService
from lattice.services.notify_store import NotifyStore
from lattice.services.plugin_policy import SqlPluginPolicies
from lattice.services.static import SqlStatic
from lattice.services.worker_store import SqlWorkerStore
from lattice.store.db import Database, secure_sqlite_file
from lattice.store.migrate import file_lock, upgrade

__all__ = ["ROUTERS", "build_container", "create_app", "first_run_lock", "server_config"]

log = logging.getLogger("lattice")

VERIFY_BODY_LIMIT = 4 * 1024 * 1024
#: how often the server writes the audit head to the checkpoint file (when it moved)
AUDIT_CHECKPOINT_SECONDS = 10.0

#: every router the app mounts; tests walk these to check each route's scope.
#: Routes are matched in this order, so the hot paths come first (worker
#: serving, probes, KV and static reads); no two routers' paths overlap.
ROUTERS: tuple[APIRouter, ...] = (
    workers_api.serve_router,
    health_api.router,
    kv_api.router,
    static_api.router,
    auth_api.router,
    audit_api.router,
    plugins_api.router,
    workers_api.router,
    notify_api.router,
)


def prepare_data_dir(settings: Settings) -> None:
    path = settings.data_dir
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create data directory {path}: {exc.strerror}") from exc


def _bootstrap(settings: Settings, auth: AuthService, announce: Callable[[str], None]) -> None:
    admin_password = settings.admin_password.get_secret_value() if settings.admin_password else None
    generated = auth.bootstrap_admin(admin_password)
    if generated:
        announce(
            "Created user 'admin' with password: "
            f"{generated}\n(shown once; change it with `lattice admin set-password admin`)"
        )


@contextmanager
def first_run_lock(settings: Settings) -> Iterator[None]:
    """One process at a time prepares a data directory (migrations, the secret
    key, the admin user), so concurrent first starts of any commands are safe."""
    prepare_data_dir(settings)
    with file_lock(settings.data_dir / "lattice.lock"):
        yield


def build_container(
    settings: Settings, *, announce: Callable[[str], None] | None = None
) -> Container:
    """Wire every service.  With ``announce`` (only ``lattice serve`` and test
    servers pass one) a missing ``admin`` user is created, and a generated
    password is handed to ``announce`` once; without it nothing is bootstrapped."""
    policy = _trust_policy(settings)  # a bad trust file fails before any work
    prepare_data_dir(settings)
    db = Database(settings.effective_database_url)
    with first_run_lock(settings):
        upgrade(db)
        secure_sqlite_file(db.url)
        secret_key = load_or_create_key(settings.effective_secret_key_file)
        box = SecretBox(secret_key)
        metrics = Metrics()
        audit_key = AuditKey(secret_key)
        audit = AuditLog(
            db,
            key=audit_key,
            checkpoints=CheckpointFile(settings.data_dir / CHECKPOINT_FILE, audit_key),
            on_append=metrics.on_audit,
        )
        audit.prepare()
        host_audit = BufferedAudit(audit)  # write-behind, folds floods of identical events
        auth = AuthService(
            db,
            audit,
            session_ttl=timedelta(hours=settings.session_ttl_hours),
            login_limit=settings.login_max_attempts,
            login_window=float(settings.login_window_seconds),
            flood_audit=host_audit,
        )
        if announce is not None:
            _bootstrap(settings, auth, announce)
    kv = SqlKV(db, max_value_bytes=settings.kv_max_value_bytes)
    static = SqlStatic(db, max_bytes=settings.static_max_bytes)
    logs = SqlPluginLogs(db)
    policies = SqlPluginPolicies(db)
    egress_policy = EgressPolicy.from_settings(
        allow_cidrs=settings.egress_allow_cidrs, allow_ports=settings.egress_allow_ports
    )
    egress = EgressGuard(egress_policy)
    notify = NotifyService(
        NotifyStore(db),
        box,
        audit,
        egress_policy=egress_policy,
        retry_base_seconds=settings.notify_retry_base_seconds,
        max_attempts=settings.notify_max_attempts,
        timeout_seconds=settings.notify_timeout_seconds,
        egress=egress,
    )
    host = HostServices(
        kv=kv,
        logs=logs,
        static=static,
        egress=egress,
        notify=notify,
        audit_reader=audit,
        policy=policies,
    )
    limits = HostRateLimits(parse_limits(settings.plugin_rate_limits))
    loader = PluginLoader(
        plugin_dir=settings.effective_plugin_dir,
        verifier=Verifier(policy),
        audit=audit,
        max_manifest_bytes=settings.plugin_max_manifest_bytes,
        max_artifact_bytes=settings.plugin_max_artifact_bytes,
    )
    workers = WorkerRegistry(
        JsLimits(
            cpu_ms=settings.worker_cpu_ms,
            memory_bytes=settings.worker_memory_mb * 1024 * 1024,
            pool_size=settings.worker_pool_size,
            queue_wait_ms=settings.worker_queue_wait_ms,
            max_request_bytes=settings.max_body_bytes,
            max_response_bytes=settings.worker_max_response,
        ),
        inline_reads=db.is_sqlite,
        max_concurrency=settings.worker_max_concurrency,
    )
    runtime = RuntimeManager(
        audit=audit,
        broker_factory=lambda plugin: Broker(plugin, host, audit=host_audit, limits=limits),
        runners={"noop": NoopRunner(), "worker": WorkerRunner(workers)},
    )
    platform = PluginPlatform(
        policy=policy,
        loader=loader,
        registry=LifecycleRegistry(db, audit),
        runtime=runtime,
        audit=audit,
    )
    return Container(
        settings=settings,
        db=db,
        metrics=metrics,
        audit=audit,
        host_audit=host_audit,
        auth=auth,
        secrets=box,
        kv=kv,
        static=static,
        logs=logs,
        policies=policies,
        egress=egress,
        notify=notify,
        plugins=platform,
        workers=workers,
        worker_store=SqlWorkerStore(db),
    )


def _trust_policy(settings: Settings) -> TrustPolicy:
    path = settings.plugin_trust
    if path is None:
        return TrustPolicy.default()
    try:
        return TrustPolicy.from_file(path)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (set by LATTICE_PLUGIN_TRUST)") from exc


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn configuration (``lattice serve`` and the test servers).

    Forwarded headers (X-Forwarded-For / -Proto) count only from the peers in
    ``LATTICE_TRUSTED_PROXIES``; by default from nobody (uvicorn alone would
    trust them from 127.0.0.1)."""
    trusted = settings.trusted_proxy_list
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": 10,
        "lifespan": "on",
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or [],
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


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


async def deploy_stored_workers(container: Container) -> None:
    """Serve every stored operator worker; one that no longer deploys is logged."""
    stored = await run_in_threadpool(container.worker_store.all)
    for worker in stored:
        try:
            spec = workers_api.spec_of(worker)
            await container.workers.deploy(spec, workers_api.reads_for(container, spec))
        except LatticeError as exc:
            log.error("worker %r not served: %s", worker.name, exc.message)


def _mount(app: FastAPI, router: APIRouter) -> None:
    """Put a router's routes straight into the app's route list.

    Our routers carry their prefix and tags on each route and no router-level
    dependencies, so this is what ``include_router`` means for them, without
    the nested-router layer FastAPI would add: with it every request matched
    each included router twice over (a tenth of a KV GET's CPU)."""
    if router.dependencies or router.callbacks or router.responses:
        raise TypeError("a router with router-level options needs app.include_router")
    for route in router.routes:
        app.router.routes.append(route)


def create_app(container: Container) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        container.workers.bind_loop()
        checkpoints = Checkpointer(container.audit.checkpoint, interval=AUDIT_CHECKPOINT_SECONDS)
        checkpoints.start()
        container.notify.start()
        await deploy_stored_workers(container)
        await run_in_threadpool(container.plugins.start)
        stop_watch = threading.Event()
        watcher = None
        if container.settings.plugin_watch:
            watcher = threading.Thread(
                target=container.plugins.watch, args=(stop_watch,), daemon=True
            )
            watcher.start()
        try:
            yield
        finally:
            stop_watch.set()
            if watcher is not None:
                watcher.join(timeout=5)
            await run_in_threadpool(container.plugins.shutdown)
            await container.workers.close()
            await run_in_threadpool(container.close)
            await run_in_threadpool(checkpoints.stop)  # the head after the final flush
            flush_access()

    app = FastAPI(
        title="Lattice",
        version=__version__,
        description="Self-hosted control plane with a safe plugin platform",
        lifespan=lifespan,
        docs_url=None,  # served by lattice.api.docs, from local assets
        redoc_url=None,  # ReDoc would load from a CDN
    )
    app.state.container = container
    install_error_handlers(app)
    for router in (*ROUTERS, docs_api.router):
        _mount(app, router)
    app.add_middleware(
        RequestMiddleware, metrics=container.metrics, limit_for=_body_limits(container.settings)
    )
    return app
