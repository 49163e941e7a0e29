"""Notification HTTP through the egress guard: Apprise's ``requests`` calls, rerouted.

Apprise's HTTP plugins call ``requests`` (``requests.post(...)``, a fresh
``Session`` per call, or a session of their own); every such call ends in
``Session.send``, which asks ``Session.get_adapter`` for the transport.  While a
delivery attempt runs (:meth:`GuardedHTTP.attempt`), a context variable names
that attempt, and both methods - patched once, process-wide - see it:

* ``get_adapter`` returns a :class:`GuardedAdapter`, which sends the prepared
  request through ``EgressGuard.request``: one resolution, every address
  checked, the pinned address dialled, each redirect hop checked again and only
  safe headers sent across origins.  Its answer comes back as a
  ``requests.Response``;
* ``send`` tells the adapter whether the caller wanted redirects followed
  (``allow_redirects``, Apprise's ``redirect=`` URL option), so the guard
  follows them or hands the 3xx back.

Outside an attempt the variable is unset and both methods behave exactly as
requests' own: other users of requests in the process are unaffected.  Apprise
runs a service on its own worker threads with a copy of the caller's context,
so a service it abandons on timeout stays guarded too.

A policy refusal is raised into the plugin as :class:`EgressRefused` (a
requests ``ConnectionError``, which plugins catch and report as a failed send)
and kept on the attempt (a timeout or a failed connect to an allowed place is
raised as requests' own error and left to Apprise to report and retry);
:meth:`Attempt.check` raises the first refusal as ``EgressBlocked`` after
Apprise returns, so a refused hop fails the delivery whatever the plugin made
of it.  Non-HTTP services (SMTP, syslog, ...) do not pass through here;
they keep the destination pre-check only (``notify_worker.check_destinations``).
"""

from __future__ import annotations

import contextvars
import functools
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from lattice.errors import EgressBlocked
from lattice.services.egress import EgressGuard, EgressResponse
from lattice.services.egress_policy import Category, blocked

__all__ = ["Attempt", "EgressRefused", "GuardedAdapter", "GuardedHTTP", "install"]

#: failures to reach an allowed place, reported to the plugin as requests' own
#: errors (Apprise words and retries them as before); every other category is
#: a policy refusal and fails the attempt as ``egress blocked``
_TRANSPORT = frozenset({Category.TIMEOUT, Category.CONNECT, Category.TLS, Category.DNS})
#: set by requests itself; the guard frames the request and asks for identity
_GUARD_OWNED = frozenset({"content-length", "accept-encoding", "connection", "transfer-encoding"})


class EgressRefused(requests.exceptions.ConnectionError):
    """What a plugin sees when the guard refuses a hop (the text is the reason)."""


class Attempt:
    """One delivery attempt: its deadline and the first refusal, if any."""

    def __init__(self, http: GuardedHTTP, timeout: float) -> None:
        self.http = http
        self.deadline = time.monotonic() + timeout
        self._lock = threading.Lock()
        self._refused: EgressBlocked | None = None
        self.requests = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, exc: EgressBlocked) -> None:
        with self._lock:
            if self._refused is None:
                self._refused = exc

    def counted(self) -> None:
        with self._lock:
            self.requests += 1

    def check(self) -> None:
        """Raise the first refusal of this attempt (an ``EgressBlocked``), if any."""
        with self._lock:
            refused = self._refused
        if refused is not None:
            raise refused


_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "lattice_notify_attempt", default=None
)
_FOLLOW: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lattice_notify_follow", default=True
)


def _body(request: requests.PreparedRequest, limit: int) -> bytes | None:
    """The prepared body as bytes, read at most ``limit + 1`` bytes far."""
    body: Any = request.body
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if hasattr(body, "read"):
        data = body.read(limit + 1)
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    chunks: list[bytes] = []
    size = 0
    for chunk in body:  # a generator body
        part = chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
        chunks.append(part)
        size += len(part)
        if size > limit:
            break
    return b"".join(chunks)


def _headers(request: requests.PreparedRequest) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower() in _GUARD_OWNED:
            continue
        headers[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return headers


def _response(
    request: requests.PreparedRequest, answer: EgressResponse, adapter: GuardedAdapter
) -> requests.Response:
    response = requests.Response()
    response.status_code = answer.status
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    for name, value in answer.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    response.headers = headers
    response.encoding = get_encoding_from_headers(headers)
    try:
        response.reason = HTTPStatus(answer.status).phrase
    except ValueError:
        response.reason = ""
    response.url = answer.url
    response.request = request
    response.connection = adapter  # type: ignore[assignment]  # digest auth re-sends through it
    # the whole (capped) body is already here; requests serves .content/.text from it
    response._content = answer.body
    response._content_consumed = True
    response.raw = io.BytesIO(answer.body)
    return response


class GuardedAdapter(requests.adapters.BaseAdapter):
    """A requests transport adapter that sends through the egress guard."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__()
        self._attempt = attempt

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        attempt = self._attempt
        attempt.counted()
        url = request.url or ""
        try:
            if cert is not None:
                raise blocked(Category.TLS, "tls: client certificates are not supported", url)
            guard = attempt.http.guard(verify=verify is not False)
            answer = guard.request(
                request.method or "GET",
                url,
                headers=_headers(request),
                body=_body(request, attempt.http.max_request_bytes),
                timeout=attempt.remaining(),
                follow_redirects=_FOLLOW.get(),
            )
        except EgressBlocked as exc:
            if exc.category == Category.TIMEOUT:
                raise requests.exceptions.Timeout(exc.reason, request=request) from None
            if exc.category in _TRANSPORT:
                raise requests.exceptions.ConnectionError(exc.reason, request=request) from None
            attempt.record(exc)
            raise EgressRefused(exc.message, request=request) from None
        return _response(request, answer, self)

    def close(self) -> None:
        pass  # the guards' pools belong to GuardedHTTP


# ----------------------------------------------------- the scoped requests hook

_install_lock = threading.Lock()
_installed = False


def install() -> None:
    """Patch ``requests.Session.get_adapter`` and ``send`` once (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        original_adapter: Callable[..., Any] = requests.Session.get_adapter
        original_send: Callable[..., Any] = requests.Session.send

        @functools.wraps(original_adapter)
        def get_adapter(self: requests.Session, url: str) -> Any:
            attempt = _ATTEMPT.get()
            if attempt is None:
                return original_adapter(self, url)
            return GuardedAdapter(attempt)

        @functools.wraps(original_send)
        def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
            if _ATTEMPT.get() is None:
                return original_send(self, request, **kwargs)
            token = _FOLLOW.set(bool(kwargs.get("allow_redirects", True)))
            try:
                return original_send(self, request, **kwargs)
            finally:
                _FOLLOW.reset(token)

        requests.Session.get_adapter = get_adapter  # type: ignore[method-assign]
        requests.Session.send = send  # type: ignore[method-assign]
        _installed = True


class GuardedHTTP:
    """The guards notification HTTP goes through, and the scope that selects them.

    ``guard`` verifies TLS as the server's guard does.  A channel whose URL turns
    verification off (Apprise's ``verify=no``) gets a second guard with the same
    policy that does not verify, made on first use.
    """

    def __init__(self, guard: EgressGuard, *, insecure: Callable[[], EgressGuard]) -> None:
        self._guard = guard
        self._make_insecure = insecure
        self._insecure: EgressGuard | None = None
        self._lock = threading.Lock()
        self.max_request_bytes = guard.policy.max_request_bytes

    def guard(self, *, verify: bool) -> EgressGuard:
        if verify:
            return self._guard
        with self._lock:
            if self._insecure is None:
                self._insecure = self._make_insecure()
            return self._insecure

    @contextmanager
    def attempt(self, timeout: float) -> Iterator[Attempt]:
        """Route this context's requests calls through the guard until exit."""
        install()
        attempt = Attempt(self, timeout)
        token = _ATTEMPT.set(attempt)
        try:
            yield attempt
        finally:
            _ATTEMPT.reset(token)

    def close(self) -> None:
        with self._lock:
            insecure, self._insecure = self._insecure, None
        if insecure is not None:
            insecure.close()
