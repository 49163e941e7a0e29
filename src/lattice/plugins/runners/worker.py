"""Runner for signed ``type: worker`` bundles: serves them while active.

The artifact is the template or JS source and ``entrypoint`` says which.
Starting deploys the worker under the plugin id (``/w/<plugin id>/...``) with
the manifest's capabilities, every read going through the plugin's broker;
stopping removes the route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from lattice.errors import LatticeError, RunnerError
from lattice.plugins.broker import Broker
from lattice.plugins.loader import LoadedPlugin
from lattice.plugins.runtime import RunContext
from lattice.plugins.worker_registry import WorkerRegistry
from lattice.plugins.workers import BrokerReads, validate_spec

__all__ = ["WorkerRunner"]


class WorkerRunner:
    name = "worker"

    def __init__(self, registry: WorkerRegistry) -> None:
        self._registry = registry

    def _run(self, ctx: RunContext, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        loop = self._registry.loop
        if loop is None or loop.is_closed():
            raise RunnerError("the worker runtime is not running")
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        return future.result(timeout=max(0.1, ctx.remaining()))

    def start(self, ctx: RunContext, plugin: LoadedPlugin, broker: Broker) -> None:
        kind = plugin.manifest.entrypoint
        if kind not in ("template", "js"):
            raise RunnerError(
                "worker bundles need entrypoint 'template' or 'js'", plugin_id=plugin.id
            )
        try:
            source = plugin.read_artifact().decode("utf-8")
        except UnicodeDecodeError:
            raise RunnerError("worker artifact is not UTF-8 text", plugin_id=plugin.id) from None
        try:
            spec = validate_spec(
                name=plugin.id,
                kind=kind,
                source=source,
                capabilities=frozenset(plugin.manifest.capabilities),
                public=True,
                origin=f"plugin:{plugin.id}",
            )
            self._run(ctx, lambda: self._registry.deploy(spec, BrokerReads(spec, broker)))
        except LatticeError as exc:
            raise RunnerError(exc.message, plugin_id=plugin.id) from None

    def stop(self, ctx: RunContext, plugin_id: str, reason: str) -> None:
        self._run(ctx, lambda: self._registry.remove(plugin_id, origin=f"plugin:{plugin_id}"))
