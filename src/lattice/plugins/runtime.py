"""The runtime manager: arms active plugins in a runner with a broker.

A :class:`Runner` gets a deadline-bearing :class:`RunContext`, the verified
plugin and its capability-scoped :class:`Broker` - never a service.  Runners
are chosen by plugin type, falling back to ``noop``.

Every start and stop runs on a worker thread with a timeout (default 5 s); a
runner that hangs or raises is marked ``failed``.  Each plugin has a
generation counter: an operation records the generation it belongs to and may
only write the runtime state while that generation is still current, so a
slow, stale stop can never overwrite a newer start.
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from lattice.core.auditsink import AuditSink
from lattice.errors import LatticeError, RunnerError
from lattice.plugins.broker import Broker
from lattice.plugins.loader import LoadedPlugin
from lattice.store.clock import now_iso

__all__ = ["RunContext", "Runner", "RuntimeManager", "RuntimeState"]

log = logging.getLogger("lattice.runtime")


@dataclass(frozen=True)
class RunContext:
    """What a runner call may know: a deadline and a correlation id."""

    deadline: float  # time.monotonic() value
    correlation_id: str = field(default_factory=lambda: secrets.token_hex(8))

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline


class Runner(Protocol):
    name: str

    def start(self, ctx: RunContext, plugin: LoadedPlugin, broker: Broker) -> None: ...

    def stop(self, ctx: RunContext, plugin_id: str, reason: str) -> None: ...


@dataclass(frozen=True)
class RuntimeState:
    plugin_id: str
    state: str  # armed | stopped | failed
    runner: str
    message: str
    started_at: str | None
    stopped_at: str | None
    updated_at: str
    generation: int = 0

    def to_public_dict(self) -> dict[str, Any]:
        return {
            "plugin_id": self.plugin_id,
            "state": self.state,
            "runner": self.runner,
            "message": self.message,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "updated_at": self.updated_at,
        }


class RuntimeManager:
    def __init__(
        self,
        *,
        audit: AuditSink,
        broker_factory: Callable[[LoadedPlugin], Broker],
        runners: Mapping[str, Runner],
        timeout: float = 5.0,
    ) -> None:
        if "noop" not in runners:
            raise ValueError("a noop runner is required as the fallback")
        self._audit = audit
        self._broker_factory = broker_factory
        self._runners = dict(runners)
        self._timeout = timeout
        self._states: dict[str, RuntimeState] = {}
        self._brokers: dict[str, Broker] = {}
        self._started_by: dict[str, Runner] = {}  # the runner to stop each plugin with
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="runner")

    def register(self, plugin_type: str, runner: Runner) -> None:
        """Use ``runner`` for plugins of ``plugin_type`` from the next arm on."""
        with self._lock:
            self._runners[plugin_type] = runner

    def runner_for(self, plugin_type: str) -> Runner:
        return self._runners.get(plugin_type) or self._runners["noop"]

    def state(self, plugin_id: str) -> RuntimeState | None:
        with self._lock:
            return self._states.get(plugin_id)

    def states(self) -> dict[str, RuntimeState]:
        with self._lock:
            return dict(self._states)

    def broker(self, plugin_id: str) -> Broker | None:
        with self._lock:
            return self._brokers.get(plugin_id)

    def _next_generation(self, plugin_id: str) -> int:
        with self._lock:
            gen = self._generation.get(plugin_id, 0) + 1
            self._generation[plugin_id] = gen
            return gen

    def _set(self, plugin_id: str, gen: int, **changes: Any) -> bool:
        """Write state only if ``gen`` is still the plugin's current generation."""
        with self._lock:
            if self._generation.get(plugin_id) != gen:
                return False
            now = now_iso()
            old = self._states.get(plugin_id)
            base = old or RuntimeState(plugin_id, "stopped", "", "", None, None, now)
            self._states[plugin_id] = replace(base, updated_at=now, generation=gen, **changes)
            return True

    def _run(self, fn: Callable[[], None], what: str) -> None:
        future = self._pool.submit(fn)
        try:
            future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            raise RunnerError(f"{what} timed out after {self._timeout:g}s") from None
        except LatticeError as exc:
            raise RunnerError(f"{what} failed: {exc.message}") from None
        except Exception as exc:
            raise RunnerError(f"{what} failed: {type(exc).__name__}") from None

    def _audit_runtime(self, plugin_id: str, state: str, runner: str, message: str) -> None:
        self._audit.append(
            actor="system",
            action="plugin.runtime",
            target=plugin_id,
            decision="deny" if state == "failed" else "allow",
            reason=message,
            detail={"state": state, "runner": runner},
        )

    # -- arming and stopping --------------------------------------------------

    def arm(self, plugin: LoadedPlugin) -> RuntimeState:
        """Build a broker and start the plugin's runner; raise RunnerError on failure
        (after stopping whatever was started and marking the runtime failed)."""
        plugin_id = plugin.id
        runner = self.runner_for(plugin.manifest.type)
        gen = self._next_generation(plugin_id)
        ctx = RunContext(deadline=time.monotonic() + self._timeout)
        try:
            broker = self._broker_factory(plugin)
        except LatticeError as exc:
            self._fail(plugin_id, gen, runner.name, f"broker refused: {exc.message}", None)
            raise RunnerError(
                f"cannot arm {plugin_id!r}: {exc.message}", plugin_id=plugin_id
            ) from None
        with self._lock:
            old = self._brokers.pop(plugin_id, None)
            self._brokers[plugin_id] = broker
            self._started_by[plugin_id] = runner
        if old is not None:
            old.detach()
        try:
            self._run(lambda: runner.start(ctx, plugin, broker), f"runner {runner.name} start")
        except RunnerError as exc:
            self._fail(plugin_id, gen, runner.name, exc.message, broker)
            try:
                self._run(
                    lambda: runner.stop(ctx, plugin_id, "start failed"),
                    f"runner {runner.name} stop",
                )
            except RunnerError:
                log.warning("runner %s stop after failed start also failed", runner.name)
            raise RunnerError(
                f"cannot arm {plugin_id!r}: {exc.message}", plugin_id=plugin_id
            ) from None
        now = now_iso()
        if self._set(
            plugin_id,
            gen,
            state="armed",
            runner=runner.name,
            message="",
            started_at=now,
            stopped_at=None,
        ):
            self._audit_runtime(plugin_id, "armed", runner.name, "")
        state = self.state(plugin_id)
        assert state is not None
        return state

    def _fail(
        self, plugin_id: str, gen: int, runner: str, message: str, broker: Broker | None
    ) -> None:
        if broker is not None:
            broker.detach()
            with self._lock:
                if self._brokers.get(plugin_id) is broker:
                    del self._brokers[plugin_id]
        if self._set(plugin_id, gen, state="failed", runner=runner, message=message):
            self._audit_runtime(plugin_id, "failed", runner, message)

    def stop(
        self, plugin_id: str, reason: str, plugin_type: str | None = None
    ) -> RuntimeState | None:
        """Detach the broker and stop the runner, even if the runner's stop fails."""
        with self._lock:
            current = self._states.get(plugin_id)
            broker = self._brokers.pop(plugin_id, None)
        if current is None and broker is None:
            return None
        gen = self._next_generation(plugin_id)
        if broker is not None:
            broker.detach()
        with self._lock:
            runner = self._started_by.get(plugin_id) or self.runner_for(plugin_type or "")
        ctx = RunContext(deadline=time.monotonic() + self._timeout)
        try:
            self._run(lambda: runner.stop(ctx, plugin_id, reason), f"runner {runner.name} stop")
        except RunnerError as exc:
            if self._set(plugin_id, gen, state="failed", message=exc.message, stopped_at=now_iso()):
                self._audit_runtime(plugin_id, "failed", runner.name, exc.message)
        else:
            if self._set(plugin_id, gen, state="stopped", message=reason, stopped_at=now_iso()):
                self._audit_runtime(plugin_id, "stopped", runner.name, reason)
        return self.state(plugin_id)

    def shutdown(self) -> None:
        for plugin_id in list(self.states()):
            with self._lock:
                armed = plugin_id in self._brokers
            if armed:
                self.stop(plugin_id, "server shutdown")
        self._pool.shutdown(wait=False, cancel_futures=True)
