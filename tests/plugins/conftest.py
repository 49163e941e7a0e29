"""Fixtures for plugin platform tests: a plugin dir, a trusted publisher, a server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, start_server
from tests.plugins.bundles import Publisher, make_bundle, make_publisher, write_trust


@dataclass
class PluginEnv:
    plugin_dir: Path
    trust: Path
    publisher: Publisher
    settings_factory: Any

    def bundle(self, **kwargs: Any) -> Path:
        kwargs.setdefault("key", self.publisher.key)
        kwargs.setdefault("publisher", self.publisher.id)
        return make_bundle(self.plugin_dir, **kwargs)

    def settings(self, **overrides: Any) -> Any:
        return self.settings_factory(
            plugin_dir=self.plugin_dir, plugin_trust=self.trust, **overrides
        )

    def start(self, **overrides: Any) -> LiveServer:
        return start_server(self.settings(**overrides))


@pytest.fixture
def penv(tmp_path: Path, settings_factory: Any) -> PluginEnv:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    publisher = make_publisher("acme.dev")
    trust = write_trust(tmp_path / "trust.json", [publisher])
    return PluginEnv(plugin_dir, trust, publisher, settings_factory)


@pytest.fixture
def plive(penv: PluginEnv) -> Iterator[LiveServer]:
    penv.bundle(id="demo.kv", capabilities=("kv:read", "kv:write", "log:write"))
    srv = penv.start()
    try:
        yield srv
    finally:
        srv.stop()
