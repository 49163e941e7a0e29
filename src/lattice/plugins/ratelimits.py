"""Per-plugin, per-method-group rate limits for host calls (token buckets).

Defaults (operator-changeable with ``LATTICE_PLUGIN_RATE_LIMITS``, e.g.
``"http=120/min,kv=500/s"``):

========  ============
group     limit
========  ============
http      60/min
notify    10/min
log       100/s
kv        1000/s
static    200/s
audit     10/s
other     10/s
========  ============

The group is the part of the method name before the dot (``kv.get`` → ``kv``).
Burst equals one period's worth (at least 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from lattice.core.ratelimit import TokenBuckets
from lattice.errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "HostRateLimits", "parse_limits"]

DEFAULT_LIMITS: Mapping[str, tuple[float, float]] = {
    # group: (tokens per second, burst)
    "http": (1.0, 60.0),
    "notify": (10 / 60, 10.0),
    "log": (100.0, 100.0),
    "kv": (1000.0, 1000.0),
    "static": (200.0, 200.0),
    "audit": (10.0, 10.0),
    "other": (10.0, 10.0),
}
_PERIODS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}
_ITEM = re.compile(r"^\s*([a-z]+)\s*=\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


def parse_limits(text: str) -> dict[str, tuple[float, float]]:
    """Parse ``group=N/period,...`` on top of the defaults."""
    limits = dict(DEFAULT_LIMITS)
    for item in filter(None, (p.strip() for p in text.split(","))):
        match = _ITEM.match(item)
        if not match or match.group(1) not in DEFAULT_LIMITS or match.group(3) not in _PERIODS:
            raise ConfigError(
                f"LATTICE_PLUGIN_RATE_LIMITS: cannot parse {item!r}; use e.g. 'http=60/min' "
                f"with a group from {', '.join(DEFAULT_LIMITS)} and a period of s, min or h"
            )
        count, period = float(match.group(2)), _PERIODS[match.group(3)]
        if count <= 0:
            raise ConfigError(f"LATTICE_PLUGIN_RATE_LIMITS: {item!r} must be above zero")
        limits[match.group(1)] = (count / period, max(1.0, count))
    return limits


class HostRateLimits:
    def __init__(self, limits: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.limits = dict(limits or DEFAULT_LIMITS)
        self._buckets = {
            group: TokenBuckets(rate, burst) for group, (rate, burst) in self.limits.items()
        }

    def allow(self, plugin_id: str, method: str) -> bool:
        group = method.split(".", 1)[0]
        buckets = self._buckets.get(group) or self._buckets["other"]
        return buckets.allow(plugin_id)
