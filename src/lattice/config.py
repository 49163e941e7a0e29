"""Settings from ``LATTICE_*`` environment variables (and matching CLI flags).

Every field here is documented in the README's configuration table; the CLI
passes flags through :func:`load_settings` as overrides, so a flag always wins
over the environment.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lattice.errors import ConfigError

__all__ = ["LOG_LEVELS", "Settings", "load_settings"]

MiB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATTICE_", extra="forbid", frozen=True)

    listen: str = "127.0.0.1:8088"
    data_dir: Path = Path("./lattice-data")
    database_url: str | None = None
    admin_password: SecretStr | None = None
    secret_key_file: Path | None = None
    log_level: str = "info"

    max_body_bytes: int = Field(default=1 * MiB, ge=1024)
    kv_max_value_bytes: int = Field(default=1 * MiB, ge=1)
    static_max_bytes: int = Field(default=8 * MiB, ge=1)
    session_ttl_hours: int = Field(default=12, ge=1, le=24 * 30)
    login_max_attempts: int = Field(default=5, ge=1)
    login_window_seconds: int = Field(default=300, ge=1)

    plugin_dir: Path | None = None
    plugin_trust: Path | None = None
    plugin_watch: bool = False
    plugin_max_manifest_bytes: int = Field(default=64 * 1024, ge=1024)
    plugin_max_artifact_bytes: int = Field(default=64 * MiB, ge=1)

    plugin_rate_limits: str = ""

    worker_cpu_ms: int = Field(default=50, ge=1, le=60_000)
    worker_memory_mb: int = Field(default=64, ge=8, le=4096)
    worker_pool_size: int = Field(default=2, ge=1, le=64)
    worker_queue_wait_ms: int = Field(default=5000, ge=1, le=60_000)
    worker_max_response: int = Field(default=1 * MiB, ge=1024, le=64 * MiB)
    worker_max_concurrency: int = Field(default=8, ge=1, le=256)

    egress_allow_cidrs: str = ""
    egress_allow_ports: str = "80,443"

    notify_retry_base_seconds: float = Field(default=2.0, gt=0, le=3600)
    notify_max_attempts: int = Field(default=8, ge=1, le=100)
    notify_timeout_seconds: float = Field(default=15.0, gt=0, le=300)

    trusted_proxies: str = ""

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8088")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:// and postgresql+psycopg:// URLs are supported")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        for item in _items(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or CIDR; use e.g. 10.0.0.5,192.168.1.0/24"
                ) from None
        return value

    @property
    def trusted_proxy_list(self) -> list[str]:
        """Peers whose X-Forwarded-For / -Proto headers count (empty: none)."""
        return [str(ipaddress.ip_network(i, strict=False)) for i in _items(self.trusted_proxies)]

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lattice.db').resolve()}"

    @property
    def effective_secret_key_file(self) -> Path:
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def effective_plugin_dir(self) -> Path:
        return self.plugin_dir or self.data_dir / "plugins"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags).

    Overrides that are ``None`` are ignored so an unset flag never masks the
    environment.  Invalid values raise :class:`ConfigError` naming the variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "LATTICE_" + "_".join(str(p) for p in err["loc"]).upper()
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from exc
