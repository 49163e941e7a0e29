"""The plugin platform facade: loader + lifecycle registry + runtime manager.

The API talks to this object only.  It keeps three things consistent:

* the loader's verified set (what is on disk and trusted right now),
* the lifecycle records (what the operator decided, persisted),
* the runtime (which plugins are armed with a broker).

One rule arms plugins, at startup and on every rescan alike: a record that is
``active`` and not waiting for review, whose bundle is in the verified set, is
armed if it is not armed already (and re-armed if its bundle changed), so a
bundle removed or corrupted and then restored serves again.  Posting ``active``
to an active plugin that is not armed arms it too.

Per-plugin operations are serialized by a lock so that a status change and
its arm/stop happen together.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from lattice.core.auditsink import AuditSink
from lattice.errors import LifecycleError, RunnerError
from lattice.plugins.lifecycle import LifecycleRecord, LifecycleRegistry
from lattice.plugins.loader import PluginLoader, ScanDiff
from lattice.plugins.runtime import RuntimeManager
from lattice.plugins.trust import TrustPolicy, Verifier

__all__ = ["PluginPlatform"]

log = logging.getLogger("lattice.plugins")


class PluginPlatform:
    def __init__(
        self,
        *,
        policy: TrustPolicy,
        loader: PluginLoader,
        registry: LifecycleRegistry,
        runtime: RuntimeManager,
        audit: AuditSink,
    ) -> None:
        self.policy = policy
        self.verifier = Verifier(policy)
        self.loader = loader
        self.registry = registry
        self.runtime = runtime
        self._audit = audit
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._scan_lock = threading.RLock()

    def _lock(self, plugin_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(plugin_id, threading.Lock())

    # -- startup and rescans ---------------------------------------------------

    def start(self) -> None:
        """Scan, reconcile records, and re-arm every active plugin still verified."""
        for flag in self.policy.insecure_flags():
            log.warning(
                "INSECURE plugin trust policy: %s is on; unsigned bundles may load. "
                "Use this only for development.",
                flag,
            )
        self.rescan(actor="system")

    def rescan(self, *, actor: str) -> ScanDiff:
        with self._scan_lock:
            diff = self.loader.scan(self.registry.owners())
            self._apply(diff, actor=actor)
            return diff

    def _apply(self, diff: ScanDiff, *, actor: str) -> None:
        """Bring records and runtime in line with the loader's new verified set."""
        with self._scan_lock:
            loaded = self.loader.loaded
            disarmed = set(self.registry.sync(loaded))
            for plugin_id in disarmed:
                with self._lock(plugin_id):
                    self.runtime.stop(plugin_id, "bundle changed; review required")
            for plugin_id in diff.removed:
                with self._lock(plugin_id):
                    if self.runtime.broker(plugin_id) is not None:
                        self.runtime.stop(plugin_id, "bundle no longer verified")
            records = {r.id: r for r in self.registry.all()}
            for plugin_id in loaded:
                record = records.get(plugin_id)
                if plugin_id in disarmed or record is None:
                    continue
                if record.status != "active" or record.review_required:
                    continue
                with self._lock(plugin_id):
                    record = self.registry.get(plugin_id)  # again, under the plugin's lock
                    if record.status != "active" or record.review_required:
                        continue
                    if plugin_id in diff.changed or self.runtime.broker(plugin_id) is None:
                        self._rearm(plugin_id, actor=actor)
            if diff:
                self._audit.append(
                    actor=actor,
                    action="plugin.rescan",
                    detail={
                        "added": list(diff.added),
                        "changed": list(diff.changed),
                        "removed": list(diff.removed),
                        "rejected": [r.bundle for r in diff.rejected],
                    },
                )

    def _rearm(self, plugin_id: str, *, actor: str) -> None:
        """Arm without raising: a plugin that fails is disabled, never the server."""
        try:
            self._arm_or_disable(plugin_id, actor=actor)
        except RunnerError as exc:
            log.error("plugin %r failed to start and was disabled: %s", plugin_id, exc.message)

    def _arm_or_disable(self, plugin_id: str, *, actor: str) -> None:
        plugin = self.loader.loaded.get(plugin_id)
        if plugin is None:
            return
        try:
            self.runtime.arm(plugin)
        except RunnerError as exc:
            self.registry.force_disable(plugin_id, actor=actor, reason=exc.message)
            raise

    # -- lifecycle ---------------------------------------------------------------

    def item(self, record: LifecycleRecord) -> dict[str, Any]:
        out = record.to_public_dict(available=record.id in self.loader.loaded)
        state = self.runtime.state(record.id)
        if state is not None:
            out["runtime"] = state.to_public_dict()
        else:
            out["runtime"] = {
                "plugin_id": record.id,
                "state": "stopped",
                "runner": self.runtime.runner_for(record.type).name,
                "message": "" if record.status != "active" else "not armed: bundle unavailable",
                "started_at": None,
                "stopped_at": None,
                "updated_at": record.updated_at,
            }
        return out

    def lifecycle(self) -> list[dict[str, Any]]:
        return [self.item(r) for r in self.registry.all()]

    def set_status(
        self, plugin_id: str, status: str, *, actor: str, approve_digest: str | None = None
    ) -> dict[str, Any]:
        with self._lock(plugin_id):
            current = self.loader.loaded.get(plugin_id)
            record, prior = self.registry.transition(
                plugin_id,
                status,
                actor=actor,
                available=current is not None,
                current=current,
                approve_digest=approve_digest,
            )
            if prior is None and status == "active" and self.runtime.broker(plugin_id) is None:
                # active but not armed (its bundle came back, or arming was lost): arm now
                if current is None:
                    raise LifecycleError(
                        f"plugin {plugin_id!r} is not available: its bundle is not in the "
                        "current verified loader set",
                        plugin_id=plugin_id,
                        detail={"from": "active", "to": "active", "available": False},
                    )
                prior = "active"
            if prior is not None:
                if status == "active":
                    try:
                        self._arm_or_disable(plugin_id, actor=actor)
                    except RunnerError as exc:
                        raise RunnerError(
                            f"plugin {plugin_id!r} failed to start and was disabled; "
                            "see its runtime message and the audit log",
                            plugin_id=plugin_id,
                        ) from exc
                elif status == "disabled":
                    self.runtime.stop(plugin_id, f"disabled by {actor}", record.type)
            return self.item(self.registry.get(plugin_id))

    def require_known(self, plugin_id: str) -> LifecycleRecord:
        """The record, or NotFound (404) naming the id."""
        return self.registry.get(plugin_id)

    def shutdown(self) -> None:
        self.runtime.shutdown()

    def watch(self, stop: threading.Event) -> None:
        """Rescan on file changes until ``stop`` is set (LATTICE_PLUGIN_WATCH=1)."""

        def on_change(diff: ScanDiff) -> None:
            try:
                self._apply(diff, actor="system:watch")
            except Exception:  # a failing rescan must not kill the watcher
                log.exception("applying a plugin rescan after a file change failed")

        self.loader.watch(stop, on_change, owners=self.registry.owners)
