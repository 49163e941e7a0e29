"""EgressGuard against real HTTP(S) servers on 127.0.0.0/8 (and ::1).

Network rule: every socket these tests open goes to loopback.  The autouse
``dials`` fixture wraps httpcore's real dialer, records every address the guard
dials and refuses (without touching the network) anything that is not loopback.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lattice.errors import EgressBlocked
from lattice.services import egress
from lattice.services.egress import EgressGuard, EgressPolicy, SystemResolver

# ------------------------------------------------------------------ servers


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Route = Callable[["_Handler"], None]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, _Handler)
        self.hits: list[Hit] = []
        self.routes: dict[str, Route] = {}
        self.accepted = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        self.accepted += 1
        return super().get_request()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-trickle are expected


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.hits.append(Hit(self.command, self.path, headers, body))
        self.server.routes.get(urlsplit(self.path).path, ok)(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


def reply(
    handler: _Handler, status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def ok(handler: _Handler) -> None:
    reply(handler, 200, b"hello", {"Content-Type": "text/plain"})


class LocalServer:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.httpd = _Server((host, port), family)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.host = host
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def hits(self) -> list[Hit]:
        return self.httpd.hits

    @property
    def accepted(self) -> int:
        return self.httpd.accepted

    def url(self, path: str = "/", scheme: str = "http", host: str | None = None) -> str:
        name = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{scheme}://{name}:{self.port}{path}"

    def route(self, path: str, fn: Route) -> None:
        self.httpd.routes[path] = fn

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.route(path, lambda h: reply(h, status, b"moved", {"Location": location}))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def server2() -> Iterator[LocalServer]:
    srv = LocalServer()
    yield srv
    srv.close()


@pytest.fixture
def dials(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the guard dials; non-loopback dials are refused offline."""
    record: list[str] = []
    real = httpcore.SyncBackend.connect_tcp

    def guarded(self: httpcore.SyncBackend, host: str, port: int, **kw: Any) -> Any:
        record.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            raise httpcore.ConnectError(f"test refused to dial {host}")
        return real(self, host, port, **kw)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", guarded)
    return record


@pytest.fixture(autouse=True)
def _loopback_only(dials: list[str]) -> None:
    pass


class StaticResolver:
    """Answers from a table; a list of lists is consumed one answer per call."""

    def __init__(self, table: dict[str, list[str] | list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answer = self.table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "unknown host")
        if answer and isinstance(answer[0], list):
            index = min(self.calls.count(host), len(answer)) - 1
            return list(answer[index])
        return [str(a) for a in answer]


GuardFactory = Callable[..., EgressGuard]


@pytest.fixture
def make_guard() -> Iterator[GuardFactory]:
    guards: list[EgressGuard] = []

    def build(
        *ports: int,
        cidrs: str = "127.0.0.1/32",
        resolver: Any = None,
        verify: ssl.SSLContext | str | bool = True,
        **limits: Any,
    ) -> EgressGuard:
        policy = EgressPolicy.from_settings(
            allow_cidrs=cidrs, allow_ports=ports or (80, 443), **limits
        )
        guard = EgressGuard(policy, resolver=resolver, verify=verify)
        guards.append(guard)
        return guard

    yield build
    for guard in guards:
        guard.close()


# ------------------------------------------------------------ basic reach


def test_reaches_local_server_when_cidr_opened(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    guard = make_guard(server.port)
    response = guard.request("GET", server.url("/x?q=1"), headers={"X-Trace": "abc"})
    assert response.status == 200
    assert response.body == b"hello"
    assert ("content-type", "text/plain") in response.headers
    assert response.url == server.url("/x?q=1")
    assert dials == ["127.0.0.1"]
    (hit,) = server.hits
    assert (hit.method, hit.path, hit.headers["x-trace"]) == ("GET", "/x?q=1", "abc")
    assert hit.headers["host"] == f"127.0.0.1:{server.port}"
    assert hit.headers["accept-encoding"] == "identity"


def test_same_server_blocked_without_cidr(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    guard = make_guard(server.port, cidrs="")
    with pytest.raises(EgressBlocked, match=r"blocked address 127\.0\.0\.1") as info:
        guard.request("GET", server.url())
    assert info.value.category == "address"
    assert info.value.detail == {"reason": info.value.reason, "category": "address"}
    assert server.hits == []
    assert dials == []


def test_pooled_connection_is_reused(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    guard = make_guard(server.port)
    for _ in range(3):
        assert guard.request("GET", server.url()).status == 200
    assert dials == ["127.0.0.1"]
    assert len(server.hits) == 3


def test_post_body_and_response(server: LocalServer, make_guard: GuardFactory) -> None:
    server.route("/echo", lambda h: reply(h, 201, h.server.hits[-1].body))
    guard = make_guard(server.port)
    response = guard.request(
        "post", server.url("/echo"), body=b"payload", headers={"Content-Type": "application/json"}
    )
    assert (response.status, response.body) == (201, b"payload")
    assert server.hits[0].method == "POST"
    assert server.hits[0].headers["content-type"] == "application/json"


def test_head_with_large_declared_length_is_fine(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.route("/", lambda h: reply(h, 200, b"x" * 5000))
    guard = make_guard(server.port, max_response_bytes=100)
    response = guard.request("HEAD", server.url())
    assert (response.status, response.body) == (200, b"")


def test_cookies_never_persist_between_requests(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.route("/set", lambda h: reply(h, 200, b"", {"Set-Cookie": "sid=secret; Path=/"}))
    guard = make_guard(server.port)
    guard.request("GET", server.url("/set"))
    guard.request("GET", server.url("/next"))
    assert "cookie" not in server.hits[1].headers


def test_guard_is_a_context_manager(server: LocalServer) -> None:
    policy = EgressPolicy.from_settings(allow_cidrs="127.0.0.1/32", allow_ports=[server.port])
    with EgressGuard(policy) as guard:
        assert guard.request("GET", server.url()).status == 200


# ------------------------------------------------ names and numeric forms


# (host as written in the URL, categories a refusal may carry): every spelling
# an attacker uses for loopback; "dns" where the local resolver may refuse the
# name before an address is known
LOOPBACK_SPELLINGS = [
    ("localhost", {"address"}),
    ("LOCALHOST", {"address"}),
    ("localhost.", {"address", "dns"}),  # trailing dot
    ("127.0.0.1.", {"address", "dns"}),
    ("2130706433", {"address"}),  # decimal
    ("017700000001", {"address"}),  # octal, one number
    ("0177.0.0.1", {"url"}),  # httpx refuses dotted octal while parsing
    ("127.000.000.001", {"url"}),
    ("0x7f000001", {"address"}),  # hex
    ("0x7f.0.0.1", {"address"}),
    ("0x7F.0x00.0x00.0x01", {"address"}),
    ("127.1", {"address"}),  # short forms
    ("127.0.1", {"address"}),
    ("0", {"address"}),
    ("0.0.0.0", {"address"}),
    ("%31%32%37.0.0.1", {"url"}),  # percent-encoded host
    ("[::1]", {"address"}),
    ("[::]", {"address"}),
    ("[::1%25lo]", {"url"}),  # IPv6 zone ids are never a destination
    ("[fe80::1%25eth0]", {"url"}),
    ("[::ffff:127.0.0.1%25lo]", {"url"}),
    ("[::ffff:127.0.0.1]", {"address"}),  # IPv4-mapped, bracketed
    ("[::ffff:7f00:1]", {"address"}),
    ("[0:0:0:0:0:ffff:127.0.0.1]", {"address"}),
    ("[::ffff:0:7f00:1]", {"address"}),  # IPv4-translated (SIIT)
    ("[::ffff:0:127.0.0.1]", {"address"}),
    ("[::127.0.0.1]", {"address"}),  # IPv4-compatible
    ("[64:ff9b::127.0.0.1]", {"address"}),  # NAT64
    ("[64:ff9b:1::7f00:1]", {"address"}),
    ("[2002:7f00:1::1]", {"address"}),  # 6to4
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", {"address"}),  # Teredo client 127.0.0.1
]


@pytest.mark.parametrize(("host", "categories"), LOOPBACK_SPELLINGS)
def test_loopback_spellings_blocked_before_any_dial(
    host: str,
    categories: set[str],
    server: LocalServer,
    make_guard: GuardFactory,
    dials: list[str],
) -> None:
    guard = make_guard(server.port, 80, cidrs="", resolver=SystemResolver())
    for url in (f"http://{host}:{server.port}/", f"http://{host}/"):
        with pytest.raises(EgressBlocked) as info:
            guard.request("GET", url)
        assert info.value.category in categories, (url, info.value.reason)
    assert dials == []
    assert server.hits == []
    assert server.accepted == 0  # not even a TCP connection reached the listener


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1"])
def test_numeric_spellings_really_mean_loopback(
    host: str, server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    # proves the blocked test above is not vacuous: opened, the same URL lands here
    guard = make_guard(server.port, resolver=SystemResolver())
    assert guard.request("GET", f"http://{host}:{server.port}/").status == 200
    assert dials == ["127.0.0.1"]


def test_ipv6_loopback_reachable_only_when_opened(make_guard: GuardFactory) -> None:
    try:
        srv = LocalServer("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with pytest.raises(EgressBlocked, match=r"blocked address ::1"):
            make_guard(srv.port, cidrs="").request("GET", srv.url())
        assert srv.hits == []
        assert make_guard(srv.port, cidrs="::1/128").request("GET", srv.url()).status == 200
    finally:
        srv.close()


@pytest.mark.parametrize(
    "answer",
    [
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
        "64:ff9b:1::7f00:1",
        "2002:7f00:1::1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "fe80::1%eth0",
        "fd12:3456::1",
        "169.254.169.254",
    ],
)
def test_resolved_internal_addresses_refused(
    answer: str, server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    resolver = StaticResolver({"svc.lattice.test": [answer]})
    guard = make_guard(server.port, resolver=resolver)
    with pytest.raises(EgressBlocked, match="blocked address"):
        guard.request("GET", f"http://svc.lattice.test:{server.port}/")
    assert dials == []


def test_one_blocked_address_among_many_refuses(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    resolver = StaticResolver({"svc.lattice.test": ["127.0.0.1", "10.0.0.5"]})
    guard = make_guard(server.port, resolver=resolver)
    with pytest.raises(EgressBlocked, match=r"blocked address 10\.0\.0\.5"):
        guard.request("GET", f"http://svc.lattice.test:{server.port}/")
    assert dials == []
    assert server.hits == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [(None, "dns: resolution failed"), ([], "dns: no address"), (["not-an-ip"], "non-address")],
)
def test_dns_failures(answer: list[str] | None, message: str, make_guard: GuardFactory) -> None:
    table: dict[str, Any] = {} if answer is None else {"svc.lattice.test": answer}
    guard = make_guard(resolver=StaticResolver(table))
    with pytest.raises(EgressBlocked, match=message) as info:
        guard.request("GET", "http://svc.lattice.test/")
    assert info.value.category == "dns"


def test_hanging_system_lookup_is_bounded_by_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, make_guard: GuardFactory
) -> None:
    release = threading.Event()

    def hanging_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        release.wait(5)
        raise socket.gaierror(socket.EAI_AGAIN, "gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    guard = make_guard(cidrs="", connect_timeout=0.3)  # default SystemResolver
    started = time.monotonic()
    with pytest.raises(EgressBlocked, match="timeout: dns") as info:
        guard.request("GET", "http://svc.lattice.test/")
    release.set()
    assert info.value.category == "timeout"
    assert time.monotonic() - started < 4.0  # the lookup itself hangs for 5 s


def test_slow_resolver_past_the_deadline_is_a_timeout(make_guard: GuardFactory) -> None:
    class Slow:
        def resolve(self, host: str, port: int) -> list[str]:
            time.sleep(0.4)
            return ["127.0.0.1"]

    guard = make_guard(resolver=Slow(), total_timeout=0.2)
    with pytest.raises(EgressBlocked, match="timeout: dns"):
        guard.request("GET", "http://svc.lattice.test/")


# ----------------------------------------------------------- DNS rebinding


def test_rebinding_resolver_cannot_move_the_connection(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    try:
        secret = LocalServer("127.0.0.2", server.port)
    except OSError:
        pytest.skip("cannot bind 127.0.0.2 on the same port")
    try:
        resolver = StaticResolver({"svc.lattice.test": [["127.0.0.1"], ["127.0.0.2"]]})
        guard = make_guard(server.port, resolver=resolver)
        url = f"http://svc.lattice.test:{server.port}/"
        assert guard.request("GET", url).status == 200
        assert resolver.calls == ["svc.lattice.test"]  # resolved exactly once
        assert dials == ["127.0.0.1"]
        assert server.hits[0].headers["host"] == f"svc.lattice.test:{server.port}"
        # the next lookup rebinds to 127.0.0.2: checked, refused, never dialled
        with pytest.raises(EgressBlocked, match=r"blocked address 127\.0\.0\.2"):
            guard.request("GET", url)
        assert secret.hits == []
        assert dials == ["127.0.0.1"]
    finally:
        secret.close()


def test_public_then_loopback_answer_never_reaches_loopback(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    # First answer public (the dial is intercepted offline by the `dials` fixture),
    # any later answer loopback.  The guard must dial only what it checked.
    resolver = StaticResolver({"svc.lattice.test": [["93.184.216.34"], ["127.0.0.1"]]})
    guard = make_guard(server.port, resolver=resolver)
    with pytest.raises(EgressBlocked, match="connect") as info:
        guard.request("GET", f"http://svc.lattice.test:{server.port}/")
    assert info.value.category == "connect"
    assert resolver.calls == ["svc.lattice.test"]
    assert dials == ["93.184.216.34"]
    assert server.hits == []


def test_pinned_backend_refuses_to_dial_without_a_pin(
    server: LocalServer, dials: list[str]
) -> None:
    backend = egress._PinnedBackend()
    with pytest.raises(httpcore.ConnectError, match="no checked address pinned"):
        backend.connect_tcp("127.0.0.1", server.port)
    token = egress._PIN.set(egress._Pin("a.test", server.port, ("127.0.0.1",), 1e18))
    try:
        with pytest.raises(httpcore.ConnectError, match="no checked address pinned"):
            backend.connect_tcp("b.test", server.port)
        with pytest.raises(httpcore.ConnectError, match="no checked address pinned"):
            backend.connect_tcp("a.test", server.port + 1)
        with pytest.raises(httpcore.ConnectError, match="unix sockets"):
            backend.connect_unix_socket("/run/docker.sock")
    finally:
        egress._PIN.reset(token)
    assert dials == []


def test_falls_back_to_next_checked_address(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    resolver = StaticResolver({"svc.lattice.test": ["127.0.0.3", "127.0.0.1"]})
    guard = make_guard(server.port, cidrs="127.0.0.1/32,127.0.0.3/32", resolver=resolver)
    assert guard.request("GET", f"http://svc.lattice.test:{server.port}/").status == 200
    assert dials == ["127.0.0.3", "127.0.0.1"]


def test_connection_refused(make_guard: GuardFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    guard = make_guard(port)
    with pytest.raises(EgressBlocked, match=r"^egress blocked: connect") as info:
        guard.request("GET", f"http://127.0.0.1:{port}/")
    assert info.value.category == "connect"
    assert isinstance(info.value.__cause__, Exception)


def test_connect_timeout_on_a_full_listen_backlog(make_guard: GuardFactory) -> None:
    # A loopback listener that never accepts: once its backlog is full the kernel
    # drops further SYNs, so the guard's connect must give up at connect_timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        guard = make_guard(port, connect_timeout=0.4, total_timeout=5.0)
        started = time.monotonic()
        try:
            with pytest.raises(EgressBlocked, match="timeout: ConnectTimeout") as info:
                guard.request("GET", f"http://127.0.0.1:{port}/")
        finally:
            for filler in fillers:
                filler.close()
    assert info.value.category == "timeout"
    assert time.monotonic() - started < 1.5


def test_garbage_response_is_a_connect_failure(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    def garbage(handler: _Handler) -> None:
        handler.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        handler.close_connection = True

    server.route("/", garbage)
    with pytest.raises(EgressBlocked, match="connect: RemoteProtocolError") as info:
        make_guard(server.port).request("GET", server.url())
    assert info.value.category == "connect"
    assert not isinstance(info.value.__cause__, EgressBlocked)


# --------------------------------------------------- URL-level refusals


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://127.0.0.1/", "scheme"),
        ("gopher://127.0.0.1:70/_GET%20/", "scheme"),
        ("http://user:pw@127.0.0.1:{port}/", "userinfo"),
        ("http://127.0.0.1:{port}/", "port"),
    ],
)
def test_url_refusals_make_no_connection(
    url: str, category: str, server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    guard = make_guard(80, 443)  # the server's port is not opened
    with pytest.raises(EgressBlocked, match=f"^egress blocked: {category}") as info:
        guard.request("GET", url.format(port=server.port))
    assert info.value.category == category
    assert "pw" not in (info.value.url or "")
    assert dials == []
    assert server.hits == []


@pytest.mark.parametrize(
    ("kwargs", "category"),
    [
        ({"method": "TRACE"}, "method"),
        ({"headers": {"X-A": "1\r\nX-Injected: 1"}}, "header"),
        ({"headers": {"Host": "internal.test"}}, "header"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "header"),
    ],
)
def test_request_shape_refusals(
    kwargs: dict[str, Any], category: str, server: LocalServer, make_guard: GuardFactory
) -> None:
    guard = make_guard(server.port)
    call = {"method": "GET", **kwargs}
    with pytest.raises(EgressBlocked, match=f"^egress blocked: {category}"):
        guard.request(call.pop("method"), server.url(), **call)
    assert server.hits == []


# ---------------------------------------------------------------- caps


def test_oversized_request_body_refused_before_dialling(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    resolver = StaticResolver({"svc.lattice.test": ["127.0.0.1"]})
    guard = make_guard(server.port, resolver=resolver, max_request_bytes=1024)
    with pytest.raises(EgressBlocked, match="size: request body 1025 bytes") as info:
        guard.request("POST", f"http://svc.lattice.test:{server.port}/", body=b"x" * 1025)
    assert info.value.category == "size"
    assert (server.hits, dials, resolver.calls) == ([], [], [])
    guard.request("POST", f"http://svc.lattice.test:{server.port}/", body=b"x" * 1024)
    assert len(server.hits[0].body) == 1024


def test_response_at_cap_passes_and_one_byte_over_is_cut(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.route("/at", lambda h: reply(h, 200, b"a" * 1000))
    server.route("/over", lambda h: reply(h, 200, b"a" * 1001))
    guard = make_guard(server.port, max_response_bytes=1000)
    assert len(guard.request("GET", server.url("/at")).body) == 1000
    with pytest.raises(EgressBlocked, match="size: response body exceeds 1000") as info:
        guard.request("GET", server.url("/over"))
    assert info.value.category == "size"


def _stream_forever(handler: _Handler) -> None:
    """Chunked body with no declared length, far larger than any cap."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"z" * 65536
    try:
        for _ in range(1600):  # 100 MiB if nobody hangs up
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        return


def test_streamed_response_cut_without_buffering_it_all(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.route("/stream", _stream_forever)
    guard = make_guard(server.port, max_response_bytes=100_000)
    started = time.monotonic()
    with pytest.raises(EgressBlocked, match="size: response body exceeds 100000"):
        guard.request("GET", server.url("/stream"))
    assert time.monotonic() - started < 2.0
    # the connection was dropped, not returned to the pool mid-body
    server.route("/stream", ok)
    assert guard.request("GET", server.url("/stream")).body == b"hello"


def _trickle_body(handler: _Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for _ in range(100):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        return


def _trickle_headers(handler: _Handler) -> None:
    try:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 200:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:
        return


@pytest.mark.parametrize("route", [_trickle_body, _trickle_headers])
def test_trickling_server_cannot_exceed_total_timeout(
    route: Route, server: LocalServer, make_guard: GuardFactory
) -> None:
    server.route("/slow", route)
    guard = make_guard(server.port, total_timeout=0.8)
    started = time.monotonic()
    with pytest.raises(EgressBlocked, match=r"^egress blocked: timeout") as info:
        guard.request("GET", server.url("/slow"))
    elapsed = time.monotonic() - started
    assert info.value.category == "timeout"
    assert 0.7 < elapsed < 1.5


def test_total_timeout_spans_redirects(server: LocalServer, make_guard: GuardFactory) -> None:
    def slow_redirect(handler: _Handler) -> None:
        time.sleep(0.3)
        reply(handler, 302, b"", {"Location": "/hop"})

    server.route("/hop", slow_redirect)
    guard = make_guard(server.port, total_timeout=1.0, max_redirects=50)
    started = time.monotonic()
    with pytest.raises(EgressBlocked, match="timeout"):
        guard.request("GET", server.url("/hop"))
    assert time.monotonic() - started < 1.6
    assert 3 <= len(server.hits) <= 5


# ------------------------------------------------------------- redirects


def test_redirect_to_denied_address_is_refused(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    server.redirect("/go", f"http://127.0.0.2:{server.port}/")
    guard = make_guard(server.port)
    with pytest.raises(EgressBlocked, match=r"blocked address 127\.0\.0\.2") as info:
        guard.request("GET", server.url("/go"))
    assert info.value.url == f"http://127.0.0.2:{server.port}/"
    assert dials == ["127.0.0.1"]


def test_redirect_to_name_resolving_internal_is_refused(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    resolver = StaticResolver(
        {"public.lattice.test": ["127.0.0.1"], "metadata.lattice.test": ["169.254.169.254"]}
    )
    server.redirect("/go", f"http://metadata.lattice.test:{server.port}/latest")
    guard = make_guard(server.port, resolver=resolver)
    with pytest.raises(EgressBlocked, match=r"blocked address 169\.254\.169\.254"):
        guard.request("GET", f"http://public.lattice.test:{server.port}/go")
    assert resolver.calls == ["public.lattice.test", "metadata.lattice.test"]
    assert dials == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("location", "category"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://127.0.0.1:70/_x", "scheme"),
        ("http://127.0.0.1:1/", "port"),
        ("http://u:p@127.0.0.1:{port}/", "userinfo"),
        ("http://[::1", "redirect"),
        ("http://0177.0.0.1:{port}/", "redirect"),
    ],
)
def test_every_redirect_hop_is_rechecked(
    location: str, category: str, server: LocalServer, make_guard: GuardFactory
) -> None:
    server.redirect("/go", location.format(port=server.port))
    guard = make_guard(server.port)
    with pytest.raises(EgressBlocked, match=f"^egress blocked: {category}") as info:
        guard.request("GET", server.url("/go"))
    assert info.value.category == category
    assert len(server.hits) == 1


def test_redirect_loop_refused_after_max_redirects(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.redirect("/loop", "/loop")
    guard = make_guard(server.port)
    with pytest.raises(EgressBlocked, match="redirect: more than 5 redirects") as info:
        guard.request("GET", server.url("/loop"))
    assert info.value.category == "redirect"
    assert len(server.hits) == 6  # the first request plus five followed redirects


def test_exactly_max_redirects_is_followed(server: LocalServer, make_guard: GuardFactory) -> None:
    for i in range(5):
        server.redirect(f"/r{i}", f"/r{i + 1}")
    guard = make_guard(server.port)
    response = guard.request("GET", server.url("/r0"))
    assert (response.status, response.body, response.url) == (200, b"hello", server.url("/r5"))


def test_zero_max_redirects_refuses_any_redirect(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.redirect("/go", "/")
    with pytest.raises(EgressBlocked, match="more than 0 redirects"):
        make_guard(server.port, max_redirects=0).request("GET", server.url("/go"))


def test_redirect_without_location_is_returned(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.route("/odd", lambda h: reply(h, 302, b"no location"))
    response = make_guard(server.port).request("GET", server.url("/odd"))
    assert (response.status, response.body) == (302, b"no location")


CREDENTIALS = {
    "Authorization": "Bearer secret",
    "Cookie": "sid=secret",
    "Proxy-Authorization": "Basic secret",
    "X-Keep": "yes",
}


def test_credentials_dropped_across_origins(
    server: LocalServer, server2: LocalServer, make_guard: GuardFactory
) -> None:
    server.redirect("/go", server2.url("/land"))
    guard = make_guard(server.port, server2.port)
    assert guard.request("GET", server.url("/go"), headers=CREDENTIALS).status == 200
    assert server.hits[0].headers["authorization"] == "Bearer secret"
    landed = server2.hits[0].headers
    for name in ("authorization", "cookie", "proxy-authorization", "x-keep"):
        assert name not in landed


#: credential-like and custom headers: none may reach another origin
PRIVATE_HEADERS = {
    "Authorization": "Bearer secret",
    "Cookie": "sid=secret",
    "Proxy-Authorization": "Basic secret",
    "X-Api-Key": "key-secret",
    "X-Auth-Token": "token-secret",
    "X-Amz-Security-Token": "aws-secret",
    "Api-Key": "plain-secret",
    "X-Custom-Thing": "anything",
    "Origin": "http://lattice.internal",
    "Referer": "http://lattice.internal/private",
}
#: what may cross: how to answer, not who asks
SAFE_HEADERS = {
    "Accept": "application/json",
    "Accept-Language": "en",
    "User-Agent": "lattice-test",
    "Cache-Control": "no-cache",
}


@pytest.mark.parametrize(("status", "keeps_body"), [(302, False), (307, True), (308, True)])
def test_only_the_safe_allowlist_crosses_origins(
    status: int,
    keeps_body: bool,
    server: LocalServer,
    server2: LocalServer,
    make_guard: GuardFactory,
) -> None:
    server.redirect("/go", server2.url("/land"), status=status)
    guard = make_guard(server.port, server2.port)
    headers = {**PRIVATE_HEADERS, **SAFE_HEADERS, "Content-Type": "application/json"}
    assert guard.request("POST", server.url("/go"), headers=headers, body=b"{}").status == 200
    sent = server.hits[0].headers
    assert all(sent[name.lower()] == value for name, value in headers.items())
    (landed,) = server2.hits
    for name in PRIVATE_HEADERS:
        assert name.lower() not in landed.headers, name
    for name, value in SAFE_HEADERS.items():
        assert landed.headers[name.lower()] == value
    if keeps_body:  # the body and what describes it go together
        assert (landed.method, landed.body) == ("POST", b"{}")
        assert landed.headers["content-type"] == "application/json"
    else:
        assert (landed.method, landed.body) == ("GET", b"")
        assert "content-type" not in landed.headers


def test_same_origin_redirect_keeps_every_header(
    server: LocalServer, make_guard: GuardFactory
) -> None:
    server.redirect("/go", "/land", status=307)
    guard = make_guard(server.port)
    headers = {**PRIVATE_HEADERS, **SAFE_HEADERS}
    guard.request("GET", server.url("/go"), headers=headers)
    landed = server.hits[1].headers
    assert all(landed[name.lower()] == value for name, value in headers.items())


def test_credentials_kept_on_same_origin(server: LocalServer, make_guard: GuardFactory) -> None:
    server.redirect("/go", "/land")
    guard = make_guard(server.port)
    guard.request("GET", server.url("/go"), headers=CREDENTIALS)
    landed = server.hits[1].headers
    assert (landed["authorization"], landed["cookie"]) == ("Bearer secret", "sid=secret")
    assert landed["proxy-authorization"] == "Basic secret"


def test_credentials_stay_dropped_when_redirected_back(
    server: LocalServer, server2: LocalServer, make_guard: GuardFactory
) -> None:
    server.redirect("/go", server2.url("/bounce"))
    server2.redirect("/bounce", server.url("/land"))
    guard = make_guard(server.port, server2.port)
    guard.request("GET", server.url("/go"), headers=CREDENTIALS)
    assert [h.path for h in server.hits] == ["/go", "/land"]
    assert "authorization" not in server.hits[1].headers


def test_same_host_other_scheme_or_port_is_another_origin(
    server: LocalServer, server2: LocalServer, make_guard: GuardFactory
) -> None:
    resolver = StaticResolver({"svc.lattice.test": ["127.0.0.1"]})
    server.redirect("/go", f"http://svc.lattice.test:{server2.port}/land")
    guard = make_guard(server.port, server2.port, resolver=resolver)
    guard.request("GET", f"http://svc.lattice.test:{server.port}/go", headers=CREDENTIALS)
    assert "authorization" not in server2.hits[0].headers


@pytest.mark.parametrize(
    ("status", "method", "after", "keeps_body"),
    [
        (301, "POST", "GET", False),
        (302, "POST", "GET", False),
        (303, "POST", "GET", False),
        (303, "PUT", "GET", False),
        (303, "HEAD", "HEAD", False),
        (301, "PUT", "PUT", True),
        (302, "DELETE", "DELETE", True),
        (307, "POST", "POST", True),
        (308, "PUT", "PUT", True),
    ],
)
def test_redirect_method_rewriting(
    status: int,
    method: str,
    after: str,
    keeps_body: bool,
    server: LocalServer,
    make_guard: GuardFactory,
) -> None:
    server.redirect("/go", "/land", status=status)
    guard = make_guard(server.port)
    guard.request(
        method,
        server.url("/go"),
        body=b"payload" if method != "HEAD" else None,
        headers={"Content-Type": "application/json"},
    )
    landed = server.hits[1]
    assert landed.method == after
    if keeps_body:
        assert landed.body == b"payload"
        assert landed.headers["content-type"] == "application/json"
    else:
        assert landed.body == b""
        if method != "HEAD":  # a rewritten request drops the body's headers too
            assert "content-type" not in landed.headers


# ------------------------------------------------------------- allowlist


def test_allowlist_match_and_mismatch(
    server: LocalServer, make_guard: GuardFactory, dials: list[str]
) -> None:
    resolver = StaticResolver(
        {
            "api.lattice.test": ["127.0.0.1"],
            "x.hooks.lattice.test": ["127.0.0.1"],
            "hooks.lattice.test": ["127.0.0.1"],
            "other.lattice.test": ["127.0.0.1"],
        }
    )
    guard = make_guard(server.port, resolver=resolver)
    allow = ["api.lattice.test", "*.hooks.lattice.test"]
    for host in ("api.lattice.test", "x.hooks.lattice.test"):
        url = f"http://{host}:{server.port}/"
        assert guard.request("GET", url, allow_hosts=allow).status == 200
    for host in ("hooks.lattice.test", "other.lattice.test"):
        with pytest.raises(EgressBlocked, match=f"host not allowed: {host}") as info:
            guard.request("GET", f"http://{host}:{server.port}/", allow_hosts=allow)
        assert info.value.category == "host"
    assert len(server.hits) == 2
    assert "other.lattice.test" not in resolver.calls  # refused before resolution


def test_allowlist_checked_on_redirect(
    server: LocalServer, server2: LocalServer, make_guard: GuardFactory
) -> None:
    resolver = StaticResolver(
        {"api.lattice.test": ["127.0.0.1"], "other.lattice.test": ["127.0.0.1"]}
    )
    server.redirect("/go", f"http://other.lattice.test:{server2.port}/")
    guard = make_guard(server.port, server2.port, resolver=resolver)
    with pytest.raises(EgressBlocked, match=r"host not allowed: other\.lattice\.test"):
        guard.request(
            "GET", f"http://api.lattice.test:{server.port}/go", allow_hosts=["api.lattice.test"]
        )
    assert server2.hits == []


def test_bad_allowlist_entry_is_a_validation_error(make_guard: GuardFactory) -> None:
    from lattice.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="too broad"):
        make_guard().request("GET", "http://api.lattice.test/", allow_hosts=["*.test"])


# ------------------------------------------------------------------ TLS

TLS_NAME = "test.lattice.example"


@dataclass
class Pki:
    ca_file: Path
    chains: dict[str, tuple[Path, Path]] = field(default_factory=dict)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and leaf certificates for two names."""
    out = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Lattice Test CA"))
        .issuer_name(_name("Lattice Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(ca_file=out / "ca.pem")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for dns in (TLS_NAME, "other.lattice.example"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(dns))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = out / f"{dns}.pem", out / f"{dns}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        pki.chains[dns] = (cert_file, key_file)
    return pki


@pytest.fixture
def tls_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[LocalServer, list[str]]]:
    """HTTPS on 127.0.0.1 presenting the leaf for ``request.param``; records SNI."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki.chains[getattr(request, "param", TLS_NAME)])
    names: list[str] = []

    def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name or "")

    context.sni_callback = record_sni
    srv = LocalServer(tls=context)
    yield srv, names
    srv.close()


def test_https_dials_pinned_ip_with_hostname_sni_and_verification(
    tls_server: tuple[LocalServer, list[str]],
    pki: Pki,
    make_guard: GuardFactory,
    dials: list[str],
) -> None:
    srv, sni = tls_server
    resolver = StaticResolver({TLS_NAME: ["127.0.0.1"]})
    guard = make_guard(srv.port, resolver=resolver, verify=str(pki.ca_file))
    url = f"https://{TLS_NAME}:{srv.port}/secure"
    response = guard.request("GET", url)
    assert (response.status, response.body, response.url) == (200, b"hello", url)
    assert dials == ["127.0.0.1"]
    assert sni == [TLS_NAME]
    assert srv.hits[0].headers["host"] == f"{TLS_NAME}:{srv.port}"


def test_https_accepts_an_ssl_context(
    tls_server: tuple[LocalServer, list[str]], pki: Pki, make_guard: GuardFactory
) -> None:
    srv, _ = tls_server
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    guard = make_guard(srv.port, resolver=StaticResolver({TLS_NAME: ["127.0.0.1"]}), verify=context)
    assert guard.request("GET", f"https://{TLS_NAME}:{srv.port}/").status == 200


@pytest.mark.parametrize("tls_server", ["other.lattice.example"], indirect=True)
def test_https_certificate_for_another_name_fails(
    tls_server: tuple[LocalServer, list[str]], pki: Pki, make_guard: GuardFactory
) -> None:
    srv, sni = tls_server
    guard = make_guard(
        srv.port, resolver=StaticResolver({TLS_NAME: ["127.0.0.1"]}), verify=str(pki.ca_file)
    )
    with pytest.raises(EgressBlocked, match=r"^egress blocked: tls: .*(hostname|match)") as info:
        guard.request("GET", f"https://{TLS_NAME}:{srv.port}/")
    assert info.value.category == "tls"
    assert sni == [TLS_NAME]
    assert srv.hits == []


def test_https_untrusted_ca_fails_with_default_trust(
    tls_server: tuple[LocalServer, list[str]], make_guard: GuardFactory
) -> None:
    srv, _ = tls_server
    guard = make_guard(srv.port, resolver=StaticResolver({TLS_NAME: ["127.0.0.1"]}))
    with pytest.raises(EgressBlocked, match=r"^egress blocked: tls: .*certificate verify failed"):
        guard.request("GET", f"https://{TLS_NAME}:{srv.port}/")
    assert srv.hits == []


def test_https_by_ip_literal_is_verified_against_the_ip(
    tls_server: tuple[LocalServer, list[str]], pki: Pki, make_guard: GuardFactory
) -> None:
    srv, _ = tls_server
    guard = make_guard(srv.port, verify=str(pki.ca_file))
    with pytest.raises(EgressBlocked, match=r"^egress blocked: tls"):
        guard.request("GET", f"https://127.0.0.1:{srv.port}/")


def test_a_redirect_can_be_handed_back_instead_of_followed(
    server: LocalServer, server2: LocalServer, make_guard: GuardFactory
) -> None:
    server.redirect("/go", server2.url("/land"), status=307)
    guard = make_guard(server.port, server2.port)
    response = guard.request("GET", server.url("/go"), follow_redirects=False)
    assert response.status == 307 and ("location", server2.url("/land")) in response.headers
    assert server2.accepted == 0


def test_a_shorter_timeout_caps_the_total(server: LocalServer, make_guard: GuardFactory) -> None:
    server.route("/slow", _trickle_body)
    guard = make_guard(server.port, total_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(EgressBlocked, match="timeout"):
        guard.request("GET", server.url("/slow"), timeout=0.5)
    assert time.monotonic() - started < 20.0  # far below the policy's 30 s
