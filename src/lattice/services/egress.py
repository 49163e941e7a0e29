"""The server-owned egress guard: every outbound HTTP call the server makes for a
plugin or a notification goes through ``EgressGuard.request``.

How a hop is made safe (``EgressGuard._hop``):

1. the URL is checked (scheme, userinfo, port) and the host against the caller's
   allowlist (``egress_policy``);
2. the host is resolved ONCE, and every returned address must pass
   ``check_address``;
3. the checked addresses are *pinned* for this thread in a context variable and
   the request is sent through a pooled ``httpx.Client`` whose httpcore network
   backend (``_PinnedBackend``) ignores DNS and dials only a pinned address for
   exactly that host and port.  The URL keeps its hostname, so the ``Host``
   header, TLS SNI and certificate verification are all bound to the hostname
   while the socket goes to the checked IP: DNS rebinding has nothing to rebind;
4. every socket read/write/handshake is bounded by the request's overall
   deadline (``_DeadlineStream``), so a trickling server cannot outlast
   ``total_timeout``; the response body is streamed and cut at the size cap.

Redirects are followed here (never by httpx), each hop going through 1-4 again;
on a hop to another origin only ``CROSS_ORIGIN_HEADERS`` are sent along.
httpx/httpcore exceptions are translated to ``EgressBlocked`` at this edge.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import httpcore
import httpx

from lattice.errors import EgressBlocked
from lattice.services.egress_policy import (
    Category,
    EgressPolicy,
    Target,
    blocked,
    check_address,
    check_headers,
    check_host_allowed,
    check_method,
    parse_target,
    validate_allow_hosts,
)

__all__ = [
    "CROSS_ORIGIN_HEADERS",
    "EgressGuard",
    "EgressPolicy",
    "EgressResponse",
    "Resolver",
    "SystemResolver",
    "validate_allow_hosts",
]

log = logging.getLogger(__name__)

#: sent unless the caller sets the same header; Accept-Encoding is not overridable
_DEFAULT_HEADERS = (("User-Agent", "lattice-egress/1"), ("Accept", "*/*"))
#: the only request headers that follow a redirect to another origin: they say
#: how to answer, never who is asking.  Authorization, Cookie, API-key and any
#: custom header stay with the origin they were meant for.  The Content-*
#: ones go only while the body goes too (307/308); a rewrite to GET drops them.
CROSS_ORIGIN_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "cache-control",
        "pragma",
        "user-agent",
        "content-type",
        "content-language",
        "content-encoding",
    }
)
_BODY_HEADERS = frozenset({"content-type", "content-encoding", "content-language"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Resolver(Protocol):
    """Turns a hostname into IP address strings; raises OSError when it cannot."""

    def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """``socket.getaddrinfo`` (TCP); understands the numeric forms libc does.

    getaddrinfo cannot be cancelled, so it runs on a small worker pool and a lookup
    slower than ``timeout`` raises ``TimeoutError`` (the worker finishes on its own).
    """

    def __init__(self, *, timeout: float = 5.0, max_workers: int = 4) -> None:
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="lattice-egress-dns")

    def resolve(self, host: str, port: int) -> list[str]:
        future = self._pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=self._timeout)
        except FutureTimeout as exc:
            future.cancel()
            raise TimeoutError(f"dns lookup exceeded {self._timeout}s") from exc
        return [str(info[4][0]) for info in infos]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class EgressResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes  # as sent on the wire (the guard asks for identity encoding)
    url: str  # final URL after redirects


# ------------------------------------------------------------ pinned transport


@dataclass(frozen=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[str, ...]
    deadline: float

    def bounded(self, timeout: float | None) -> float:
        remaining = self.deadline - time.monotonic()
        return remaining if timeout is None else min(timeout, remaining)


_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar(
    "lattice_egress_pin", default=None
)


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    pin = _PIN.get()
    if pin is None:
        return timeout
    bounded = pin.bounded(timeout)
    if bounded <= 0:
        raise error("egress deadline exceeded")
    return bounded


class _DeadlineStream(httpcore.NetworkStream):
    """Caps every socket operation at the current request's overall deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Dials only the addresses the guard checked for this host and port."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        pin = _PIN.get()
        if pin is None or pin.host != host or pin.port != port:
            raise httpcore.ConnectError(f"no checked address pinned for {host}:{port}")
        options = list(socket_options or ())
        failure: Exception = httpcore.ConnectError("no address to dial")
        for address in pin.addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    timeout=_bounded(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream)
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not an egress destination")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # httpx has no public hook for the network backend; swap in our pool.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(),
        )


def _ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    if verify is False:
        log.warning("egress guard: TLS certificate verification is DISABLED")
    return httpx.create_ssl_context(verify=verify, trust_env=False)


# -------------------------------------------------------------------- guard


def _translate(exc: Exception, url: httpx.URL) -> EgressBlocked:
    """Map an httpx failure to one ``EgressBlocked`` category."""
    if isinstance(exc, httpx.TimeoutException):
        return blocked(Category.TIMEOUT, f"timeout: {type(exc).__name__}", url)
    if isinstance(exc, httpx.LocalProtocolError):
        return blocked(Category.HEADER, f"header: request rejected ({exc})", url)
    # httpcore re-raises with ``from None``, so the ssl error may only be __context__
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError):
            return blocked(Category.TLS, f"tls: {cause}", url)
        cause = cause.__cause__ or cause.__context__
    return blocked(Category.CONNECT, f"connect: {type(exc).__name__}: {exc}", url)


class EgressGuard:
    """Sends outbound HTTP on the server's behalf, refusing anything unsafe.

    Thread-safe; one instance (and one connection pool) per server.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        self._policy = policy
        self._owns_resolver = resolver is None
        self._resolver: Resolver = resolver or SystemResolver(timeout=policy.connect_timeout)
        if policy.allow_cidrs:
            opened = ", ".join(str(n) for n in policy.allow_cidrs)
            log.warning("egress guard: operator opened networks %s", opened)
        # One pooled transport for the guard's lifetime, driven directly rather than
        # through httpx.Client: the Client keeps a cookie jar shared by every caller
        # and parses Location itself even with follow_redirects=False; the guard owns
        # both redirects and headers.  No environment proxies (trust_env=False).
        self._transport = _PinnedTransport(_ssl_context(verify), httpx.Limits())

    @property
    def policy(self) -> EgressPolicy:
        return self._policy

    def __enter__(self) -> EgressGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()
        if isinstance(self._resolver, SystemResolver) and self._owns_resolver:
            self._resolver.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        allow_hosts: Sequence[str] | None = None,
        timeout: float | None = None,
        follow_redirects: bool = True,
    ) -> EgressResponse:
        """Send one request (following redirects); any refusal raises EgressBlocked.

        ``timeout`` may shorten (never lengthen) the policy's ``total_timeout``;
        with ``follow_redirects=False`` a redirect is returned as it came.
        """
        policy = self._policy
        budget = policy.total_timeout if timeout is None else min(timeout, policy.total_timeout)
        deadline = time.monotonic() + max(0.0, budget)
        # 1. everything that needs no network is checked before anything is dialled
        method = check_method(method, url)
        hosts = None if allow_hosts is None else validate_allow_hosts(allow_hosts)
        pairs = check_headers(headers, url)
        if body is not None and len(body) > policy.max_request_bytes:
            raise blocked(
                Category.SIZE,
                f"size: request body {len(body)} bytes exceeds {policy.max_request_bytes}",
                url,
            )
        target = parse_target(url, policy)
        origin = target.origin
        # 2. one hop per iteration; each hop re-runs every check
        for hop in range(policy.max_redirects + 1):
            check_host_allowed(target, hosts)
            response = self._hop(method, target, pairs, body, deadline, follow_redirects)
            if isinstance(response, EgressResponse):
                return response
            if hop == policy.max_redirects:
                break
            status, location = response
            target = self._next_target(target, location)
            if target.origin != origin:
                # only the safe allowlist crosses origins; what is dropped stays
                # dropped, even if a later hop comes back
                pairs = [(k, v) for k, v in pairs if k.lower() in CROSS_ORIGIN_HEADERS]
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method, body = "GET", None
                pairs = [(k, v) for k, v in pairs if k.lower() not in _BODY_HEADERS]
        raise blocked(
            Category.REDIRECT, f"redirect: more than {policy.max_redirects} redirects", url
        )

    def _next_target(self, current: Target, location: str) -> Target:
        try:
            joined = current.url.join(location)
        except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
            raise blocked(Category.REDIRECT, "redirect: location invalid", current.url) from exc
        return parse_target(joined, self._policy)

    def _resolve(self, target: Target, deadline: float) -> tuple[str, ...]:
        """Resolve once and check every address; returns the addresses to dial."""
        try:
            literal = ipaddress.ip_address(target.host)
        except ValueError:
            literal = None
        if literal is not None:
            found: list[str] = [target.host]
        else:
            # Called inline: the resolver bounds its own time (SystemResolver uses
            # connect_timeout); the overall deadline is re-checked right after.
            try:
                found = self._resolver.resolve(target.host, target.port)
            except TimeoutError as exc:
                raise blocked(Category.TIMEOUT, "timeout: dns resolution", target.url) from exc
            except (OSError, UnicodeError, ValueError) as exc:
                raise blocked(Category.DNS, "dns: resolution failed", target.url) from exc
            if time.monotonic() > deadline:
                raise blocked(Category.TIMEOUT, "timeout: dns resolution", target.url)
        addresses: list[str] = []
        for text in found:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError as exc:
                raise blocked(
                    Category.DNS, "dns: resolver returned a non-address", target.url
                ) from exc
            check_address(ip, self._policy.allow_cidrs, url=str(target.url))
            if str(ip) not in addresses:
                addresses.append(str(ip))
        if not addresses:
            raise blocked(Category.DNS, "dns: no address", target.url)
        return tuple(addresses)

    def _hop(
        self,
        method: str,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes | None,
        deadline: float,
        follow: bool = True,
    ) -> EgressResponse | tuple[int, str]:
        """One checked request; a redirect comes back as (status, location)."""
        addresses = self._resolve(target, deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise blocked(Category.TIMEOUT, "timeout: total time exceeded", target.url)
        timeout = httpx.Timeout(remaining, connect=min(self._policy.connect_timeout, remaining))
        token = _PIN.set(_Pin(target.host, target.port, addresses, deadline))
        try:
            request = httpx.Request(
                method,
                target.url,
                headers=_with_defaults(headers),
                content=body,
                extensions={"timeout": timeout.as_dict()},
            )
            response = self._transport.handle_request(request)
            try:
                location = response.headers.get("location")
                if follow and response.status_code in _REDIRECTS and location is not None:
                    return response.status_code, location
                data = self._read_capped(response, method, target, deadline)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise _translate(exc, target.url) from exc
        except httpx.InvalidURL as exc:
            raise blocked(Category.URL, f"url invalid: {exc}", target.url) from exc
        finally:
            _PIN.reset(token)
        return EgressResponse(
            status=response.status_code,
            headers=response.headers.multi_items(),
            body=data,
            url=str(target.url),
        )

    def _read_capped(
        self, response: httpx.Response, method: str, target: Target, deadline: float
    ) -> bytes:
        """Stream the body, cutting it at the size cap and the overall deadline.

        Raw bytes: the guard asked for identity encoding and never decompresses, so
        the cap counts exactly what crosses the wire (no decompression bombs).
        """
        cap = self._policy.max_response_bytes
        declared = response.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() and method != "HEAD" else 0
        chunks: list[bytes] = []
        if size <= cap:
            size = 0
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > cap:
                    break
                if time.monotonic() > deadline:
                    raise blocked(Category.TIMEOUT, "timeout: total time exceeded", target.url)
                chunks.append(chunk)
        if size > cap:
            raise blocked(Category.SIZE, f"size: response body exceeds {cap} bytes", target.url)
        return b"".join(chunks)


def _with_defaults(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    present = {name.lower() for name, _ in headers}
    defaults = [(k, v) for k, v in _DEFAULT_HEADERS if k.lower() not in present]
    return [*headers, *defaults, ("Accept-Encoding", "identity")]
