"""The runtime manager: generations, timeouts and failures, with real brokers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lattice.core.audit import AuditLog, AuditQuery
from lattice.errors import RunnerError
from lattice.plugins.broker import Broker
from lattice.plugins.host import HostServices
from lattice.plugins.loader import LoadedPlugin, load_bundle
from lattice.plugins.ratelimits import HostRateLimits
from lattice.plugins.runners.noop import NoopRunner
from lattice.plugins.runtime import RunContext, RuntimeManager
from lattice.plugins.trust import TrustPolicy, Verifier
from lattice.services.kv import SqlKV
from lattice.services.logs import SqlPluginLogs
from lattice.store.db import Database
from lattice.store.migrate import upgrade
from tests.plugins.bundles import make_bundle, write_trust


class BlockingStopRunner:
    """Stop blocks until released; start completes at once."""

    name = "blocking"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.stopping = threading.Event()
        self.started: list[str] = []

    def start(self, ctx: RunContext, plugin: LoadedPlugin, broker: Broker) -> None:
        self.started.append(plugin.id)

    def stop(self, ctx: RunContext, plugin_id: str, reason: str) -> None:
        self.stopping.set()
        self.release.wait(10)


class HangingRunner:
    name = "hanging"

    def start(self, ctx: RunContext, plugin: LoadedPlugin, broker: Broker) -> None:
        time.sleep(3)

    def stop(self, ctx: RunContext, plugin_id: str, reason: str) -> None:
        raise RuntimeError("stop broke")


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[LoadedPlugin, AuditLog, HostServices]]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(db)
    trust = write_trust(tmp_path / "trust.json", allow_unsigned=True)
    bundle = make_bundle(tmp_path / "plugins", id="demo.rt", signed=False)
    plugin = load_bundle(bundle, Verifier(TrustPolicy.from_file(trust)))
    audit = AuditLog(db)
    host = HostServices(kv=SqlKV(db, max_value_bytes=100), logs=SqlPluginLogs(db))
    yield plugin, audit, host
    db.dispose()


def manager(
    audit: AuditLog, host: HostServices, runner: object, timeout: float = 5.0
) -> RuntimeManager:
    return RuntimeManager(
        audit=audit,
        broker_factory=lambda p: Broker(p, host, audit=audit, limits=HostRateLimits()),
        runners={"noop": NoopRunner(), "wasm": runner},  # type: ignore[dict-item]
        timeout=timeout,
    )


def test_noop_runner_arms_with_a_broker_and_reports_health(parts: tuple) -> None:  # type: ignore[type-arg]
    plugin, audit, host = parts
    noop = NoopRunner()
    rm = RuntimeManager(
        audit=audit,
        broker_factory=lambda p: Broker(p, host, audit=audit, limits=HostRateLimits()),
        runners={"noop": noop},
    )
    state = rm.arm(plugin)
    assert state.state == "armed" and state.runner == "noop"
    assert noop.healthy("demo.rt")
    rm.stop("demo.rt", "test")
    assert not noop.healthy("demo.rt")
    assert rm.state("demo.rt").state == "stopped"  # type: ignore[union-attr]


def test_stale_stop_cannot_overwrite_a_newer_start(parts: tuple) -> None:  # type: ignore[type-arg]
    plugin, audit, host = parts
    runner = BlockingStopRunner()
    rm = manager(audit, host, runner)
    rm.arm(plugin)
    stopper = threading.Thread(target=rm.stop, args=("demo.rt", "disable"))
    stopper.start()
    assert runner.stopping.wait(5)
    rm.arm(plugin)  # a newer start completes while the old stop still blocks
    assert rm.state("demo.rt").state == "armed"  # type: ignore[union-attr]
    runner.release.set()
    stopper.join(10)
    state = rm.state("demo.rt")
    assert state is not None and state.state == "armed"
    assert rm.broker("demo.rt") is not None and rm.broker("demo.rt").armed  # type: ignore[union-attr]


def test_hanging_start_times_out_and_is_marked_failed(parts: tuple) -> None:  # type: ignore[type-arg]
    plugin, audit, host = parts
    rm = manager(audit, host, HangingRunner(), timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(RunnerError, match="timed out"):
        rm.arm(plugin)
    assert time.monotonic() - t0 < 10.0  # the runner hangs until released: never
    state = rm.state("demo.rt")
    assert state is not None and state.state == "failed" and "timed out" in state.message
    assert rm.broker("demo.rt") is None
    denied = audit.query(AuditQuery(action_prefix="plugin.runtime", decision="deny"))[0]
    assert denied


def test_failing_stop_still_detaches_the_broker(parts: tuple) -> None:  # type: ignore[type-arg]
    plugin, audit, host = parts

    class BadStop(NoopRunner):
        name = "badstop"

        def stop(self, ctx: RunContext, plugin_id: str, reason: str) -> None:
            raise RuntimeError("cannot stop")

    rm = manager(audit, host, BadStop())
    rm.arm(plugin)
    broker = rm.broker("demo.rt")
    assert broker is not None
    state = rm.stop("demo.rt", "disable")
    assert state is not None and state.state == "failed" and "failed" in state.message
    assert not broker.armed and rm.broker("demo.rt") is None


def test_a_broker_the_factory_refuses_fails_the_arm(parts: tuple) -> None:  # type: ignore[type-arg]
    from lattice.errors import VerificationError

    plugin, audit, _host = parts

    def refuse(_plugin: LoadedPlugin) -> Broker:
        raise VerificationError("capability set differs from the verified manifest")

    noop = NoopRunner()
    rm = RuntimeManager(audit=audit, broker_factory=refuse, runners={"noop": noop})
    with pytest.raises(RunnerError, match="capability set differs"):
        rm.arm(plugin)
    state = rm.state("demo.rt")
    assert state is not None and state.state == "failed" and "broker refused" in state.message
    assert rm.broker("demo.rt") is None and not noop.healthy("demo.rt")
    denied = audit.query(AuditQuery(action_prefix="plugin.runtime", decision="deny"))[0]
    assert denied and denied[0].detail["state"] == "failed"
