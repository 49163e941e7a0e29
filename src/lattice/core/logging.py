"""Logging with the request id on every line, and no secrets in any line.

``configure_logging`` (what ``lattice serve`` calls) installs one stream
handler on the ``lattice`` logger.  Access-log lines (one per HTTP request)
skip the ``logging`` machinery - a record, a caller lookup, a filter, a
formatter and a flushed write cost ~30 µs, a sixth of a whole request - and
go to the same handler as preformatted lines in the same format:
:func:`access` buffers them and the handler writes the buffer in one
``write`` at most :data:`ACCESS_FLUSH_SECONDS` later, before any other
record it emits (so lines stay in order), or when the buffer is full.
Without ``configure_logging`` (tests, embedding) :func:`access` is an
ordinary ``logger.info``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
from typing import TextIO

__all__ = ["ACCESS_FLUSH_SECONDS", "access", "configure_logging", "flush_access", "request_id_var"]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
#: how long an access line may wait in the buffer
ACCESS_FLUSH_SECONDS = 0.25
_ACCESS_BATCH = 256

_root = logging.getLogger("lattice")
_access_log = logging.getLogger("lattice.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _Clock:
    """``asctime`` as the default formatter writes it, the seconds part cached."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def asctime(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return f"{self._prefix},{int((now - second) * 1000):03d}"


class LatticeHandler(logging.StreamHandler[TextIO]):
    """The server's handler: ordinary records, plus buffered access lines."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._clock = _Clock()
        self._timer: asyncio.TimerHandle | None = None
        self._guard = threading.Lock()

    def access_line(self, rid: str, message: str) -> None:
        line = f"{self._clock.asctime(time.time())} INFO lattice.access [{rid}] {message}\n"
        with self._guard:
            self._pending.append(line)
            full = len(self._pending) >= _ACCESS_BATCH
        if full:
            self.flush_pending()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_pending()
                return
            self._timer = loop.call_later(ACCESS_FLUSH_SECONDS, self.flush_pending)

    def flush_pending(self) -> None:
        with self._guard:
            lines, self._pending = self._pending, []
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if not lines:
            return
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stream loses lines, not requests
                pass

    def emit(self, record: logging.LogRecord) -> None:
        self.flush_pending()
        super().emit(record)

    def flush(self) -> None:
        self.flush_pending()
        super().flush()


_handler: LatticeHandler | None = None


def configure_logging(level: str = "info") -> None:
    global _handler
    handler = LatticeHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    _root.handlers[:] = [handler]
    _root.setLevel(level.upper())
    _root.propagate = False
    _handler = handler


def access(rid: str, message: str) -> None:
    """One access-log line (level INFO, logger ``lattice.access``)."""
    if not _access_log.isEnabledFor(logging.INFO):
        return
    handler = _handler
    if handler is not None and _root.handlers == [handler] and not _access_log.handlers:
        handler.access_line(rid, message)
    else:
        _access_log.info("%s", message)


def flush_access() -> None:
    """Write buffered access lines now (at shutdown)."""
    if _handler is not None:
        _handler.flush_pending()
