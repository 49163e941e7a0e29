"""Pure egress policy: which addresses, URLs, hosts, methods and headers may leave.

Nothing here touches the network.  ``services.egress`` applies these checks to
every hop of every outbound request; each refusal raises ``EgressBlocked`` with a
stable ``category`` (see ``Category``) and a reason text that starts with it.

Address rule (``check_address``), in order:

1. an address inside an operator-opened ``allow_cidrs`` network is allowed;
2. an address inside a deny-table network is refused;
3. an IPv6 address that embeds an IPv4 address (mapped, NAT64, 6to4, Teredo) is
   refused when the embedded IPv4 address is in the IPv4 deny table;
4. everything else is allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import httpx

from lattice.core.redact import redact_url as _redact_url
from lattice.errors import ConfigError, EgressBlocked, ValidationFailed

__all__ = [
    "DENIED_V4",
    "DENIED_V6",
    "METHODS",
    "Category",
    "EgressPolicy",
    "IPAddress",
    "IPNetwork",
    "Target",
    "blocked",
    "check_address",
    "check_headers",
    "check_host_allowed",
    "check_method",
    "embedded_ipv4",
    "parse_cidrs",
    "parse_ports",
    "parse_target",
    "redact_url",
    "validate_allow_hosts",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Category(StrEnum):
    """Why a request was refused; stable strings the broker writes to the audit."""

    SCHEME = "scheme"
    PORT = "port"
    USERINFO = "userinfo"
    URL = "url"
    METHOD = "method"
    HEADER = "header"
    ADDRESS = "address"  # reason text: "blocked address <ip>"
    HOST = "host"  # reason text: "host not allowed: <host>"
    REDIRECT = "redirect"
    SIZE = "size"
    TIMEOUT = "timeout"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"


def redact_url(url: str | httpx.URL) -> str:
    """The URL with userinfo and query values masked, no fragment (``core.redact``)."""
    return _redact_url(url)


def blocked(category: Category, reason: str, url: str | httpx.URL | None) -> EgressBlocked:
    """Build the one exception type every refusal raises."""
    redacted = None if url is None else redact_url(url)
    return EgressBlocked(reason, url=redacted, category=category.value)


# ---------------------------------------------------------------- addresses

DENIED_V4: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this" network
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",  # broadcast
    )
)

DENIED_V6: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated; never a real destination)
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local
        "fec0::/10",  # site-local (deprecated)
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition address carries, or None."""
    value = int(ip)
    if ip in _MAPPED or any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF)
    if ip in _TEREDO:
        # Teredo stores the client address obfuscated (bit-inverted) in the low 32 bits.
        return ipaddress.IPv4Address((value & 0xFFFFFFFF) ^ 0xFFFFFFFF)
    return None


def check_address(
    ip: IPAddress, allow_cidrs: Iterable[IPNetwork] = (), *, url: str | None = None
) -> None:
    """Raise ``EgressBlocked`` unless ``ip`` may be dialled (see module docstring)."""
    # 1. operator-opened networks win
    if any(ip.version == net.version and ip in net for net in allow_cidrs):
        return
    # 2. the deny table for the address family
    deny: Sequence[IPNetwork] = DENIED_V4 if ip.version == 4 else DENIED_V6
    if any(ip in net for net in deny):
        raise blocked(Category.ADDRESS, f"blocked address {ip}", url)
    # 3. an IPv6 transition address is judged by the IPv4 address inside it
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None and any(inner in net for net in DENIED_V4):
            raise blocked(Category.ADDRESS, f"blocked address {ip} (embeds {inner})", url)
    # 4. allowed


# ------------------------------------------------------------------ policy


def parse_cidrs(value: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """Parse ``"10.0.0.0/8,127.0.0.1/32"``; each entry needs an explicit prefix."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if isinstance(value, str) and not value.strip():
        return ()
    networks: list[IPNetwork] = []
    for raw in items:
        text = raw.strip()
        if "/" not in text:
            raise ConfigError(f"egress allow CIDR {text!r} needs an explicit /prefix")
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ConfigError(f"egress allow CIDR {text!r} is invalid: {exc}") from exc
    return tuple(networks)


def parse_ports(value: str | Iterable[int]) -> frozenset[int]:
    """Parse ``"80,443,8080"`` (or an iterable of ints) into a port set."""
    items: list[object] = (
        [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    )
    ports: set[int] = set()
    for item in items:
        if isinstance(item, str) and item.isascii() and item.isdigit():
            port = int(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            port = item
        else:
            raise ConfigError(f"egress port {item!r} is not a number")
        if not 1 <= port <= 65535:
            raise ConfigError(f"egress port {port} is out of range")
        ports.add(port)
    if not ports:
        raise ConfigError("egress needs at least one allowed port")
    return frozenset(ports)


@dataclass(frozen=True)
class EgressPolicy:
    """Server-wide limits for outbound HTTP; validated when built."""

    allow_cidrs: tuple[IPNetwork, ...] = ()
    allow_ports: frozenset[int] = field(default_factory=lambda: frozenset({80, 443}))
    max_request_bytes: int = 256 * 1024
    max_response_bytes: int = 256 * 1024
    connect_timeout: float = 5.0
    total_timeout: float = 15.0
    max_redirects: int = 5

    def __post_init__(self) -> None:
        for net in self.allow_cidrs:
            if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise ConfigError(f"egress allow_cidrs entry {net!r} is not a network")
        parse_ports(self.allow_ports)
        for name in ("max_request_bytes", "max_response_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"egress {name} must not be negative")
        for name in ("connect_timeout", "total_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"egress {name} must be positive")
        if self.max_redirects < 0:
            raise ConfigError("egress max_redirects must not be negative")

    @classmethod
    def from_settings(
        cls,
        *,
        allow_cidrs: str | Iterable[str] = "",
        allow_ports: str | Iterable[int] = (80, 443),
        max_request_bytes: int = 256 * 1024,
        max_response_bytes: int = 256 * 1024,
        connect_timeout: float = 5.0,
        total_timeout: float = 15.0,
        max_redirects: int = 5,
    ) -> EgressPolicy:
        """Build from operator strings (``LATTICE_EGRESS_*``); bad values → ConfigError."""
        return cls(
            allow_cidrs=parse_cidrs(allow_cidrs),
            allow_ports=parse_ports(allow_ports),
            max_request_bytes=max_request_bytes,
            max_response_bytes=max_response_bytes,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            max_redirects=max_redirects,
        )


# ----------------------------------------------------------- URL and hosts


@dataclass(frozen=True)
class Target:
    """One checked hop: the URL plus the ASCII host and effective port to dial."""

    url: httpx.URL
    host: str  # IDNA/ASCII form exactly as httpcore will hand it to the backend
    port: int

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.url.scheme, self.host.lower(), self.port)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_target(url: str | httpx.URL, policy: EgressPolicy) -> Target:
    """Check scheme, userinfo, host and port of one hop (no resolution)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise blocked(Category.URL, f"url invalid: {exc}", None) from exc
    # 1. scheme
    if parsed.scheme not in _DEFAULT_PORTS:
        raise blocked(Category.SCHEME, f"scheme {parsed.scheme!r} not allowed", parsed)
    # 2. userinfo
    if parsed.userinfo:
        raise blocked(Category.USERINFO, "userinfo in url not allowed", parsed)
    # 3. host present
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise blocked(Category.URL, "url invalid: no host", parsed)
    # 4. port
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[parsed.scheme]
    if port not in policy.allow_ports:
        raise blocked(Category.PORT, f"port {port} not allowed", parsed)
    return Target(url=parsed, host=host, port=port)


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _valid_hostname(name: str) -> bool:
    labels = name.split(".")
    return (
        len(name) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    )


def validate_allow_hosts(entries: Iterable[str]) -> list[str]:
    """Normalise a per-plugin allowlist; bad entries raise ``ValidationFailed``.

    An entry is an exact ASCII hostname (``api.example.org``; IDN hosts in their
    ``xn--`` form), an IP literal, or ``*.example.org`` meaning any subdomain of
    ``example.org`` but not ``example.org`` itself.  The wildcard needs at least
    two labels after it (``*.org`` is refused).
    """
    result: list[str] = []
    for raw in entries:
        if not isinstance(raw, str):
            raise ValidationFailed(f"allow_hosts entry {raw!r} is not a string")
        entry = raw.strip().lower().removesuffix(".")
        try:
            entry = str(ipaddress.ip_address(entry))
        except ValueError:
            wildcard = entry.startswith("*.")
            name = entry[2:] if wildcard else entry
            if not name.isascii() or not _valid_hostname(name):
                raise ValidationFailed(f"allow_hosts entry {raw!r} is not a hostname") from None
            if wildcard and name.count(".") < 1:
                raise ValidationFailed(f"allow_hosts wildcard {raw!r} is too broad") from None
        if entry not in result:
            result.append(entry)
    return result


def check_host_allowed(target: Target, allow_hosts: Sequence[str] | None) -> None:
    """Raise unless ``target.host`` matches the (validated) allowlist, if one is given."""
    if allow_hosts is None:
        return
    host = target.host.lower().removesuffix(".")
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    for entry in allow_hosts:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return
        elif host == entry:
            return
    raise blocked(Category.HOST, f"host not allowed: {host}", target.url)


# ------------------------------------------------------- method and headers

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Headers the guard owns.  A caller setting one is refused (category ``header``):
#: hop-by-hop headers and framing are the transport's business, ``Host`` must match
#: the URL (it is what SNI and certificate checks are bound to), and responses are
#: always requested with ``Accept-Encoding: identity`` so the size cap is exact.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
    }
)
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8192
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE = re.compile(r"^[\t\x20-\x7e]*$")


def check_method(method: str, url: str) -> str:
    upper = method.upper()
    if upper not in METHODS:
        raise blocked(Category.METHOD, f"method {method!r} not allowed", url)
    return upper


def check_headers(headers: Mapping[str, str] | None, url: str) -> list[tuple[str, str]]:
    """Validate caller headers; returns them as a list of pairs."""
    if not headers:
        return []
    if len(headers) > MAX_HEADERS:
        raise blocked(Category.HEADER, f"header count exceeds {MAX_HEADERS}", url)
    checked: list[tuple[str, str]] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise blocked(Category.HEADER, f"header name {name!r} invalid", url)
        if name.lower() in FORBIDDEN_HEADERS:
            raise blocked(Category.HEADER, f"header {name!r} is set by the guard", url)
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE or not _VALUE.match(value):
            raise blocked(Category.HEADER, f"header {name!r} value invalid", url)
        checked.append((name, value))
    return checked
