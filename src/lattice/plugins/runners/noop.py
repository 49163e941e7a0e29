"""The default runner: holds the broker and a deadline, runs no artifact code."""

from __future__ import annotations

import threading

from lattice.errors import RunnerError
from lattice.plugins.broker import Broker
from lattice.plugins.loader import LoadedPlugin
from lattice.plugins.runtime import RunContext

__all__ = ["NoopRunner"]


class NoopRunner:
    name = "noop"

    def __init__(self) -> None:
        self._armed: dict[str, Broker] = {}
        self._lock = threading.Lock()

    def start(self, ctx: RunContext, plugin: LoadedPlugin, broker: Broker) -> None:
        if ctx.expired():
            raise RunnerError("deadline passed before start", plugin_id=plugin.id)
        if broker.plugin_id != plugin.id:
            raise RunnerError("broker belongs to another plugin", plugin_id=plugin.id)
        with self._lock:
            self._armed[plugin.id] = broker

    def stop(self, ctx: RunContext, plugin_id: str, reason: str) -> None:
        with self._lock:
            self._armed.pop(plugin_id, None)

    def healthy(self, plugin_id: str) -> bool:
        """Health as the noop runner sees it: armed with a live broker."""
        with self._lock:
            broker = self._armed.get(plugin_id)
        return broker is not None and broker.armed
