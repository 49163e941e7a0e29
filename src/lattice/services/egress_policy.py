"""Pure egress policy: which addresses, URLs, hosts, methods and headers may leave.

Nothing here touches the network.  ``services.egress`` applies these checks to
every hop of every outbound request; each refusal raises ``EgressBlocked`` with a
stable ``category`` (see ``Category``) and a reason text that starts with it.

Address rule (``check_address``), in order:

1. an address inside an operator-opened ``allow_cidrs`` network is allowed;
2. the most specific IANA special-purpose (or multicast) entry containing the
   address decides (``SPECIAL_V4`` / ``SPECIAL_V6``): entries that are not
   globally reachable are refused; an IPv6 address outside 2000::/3 that no
   entry names is refused too;
3. an IPv6 translation address (IPv4-mapped, IPv4-translated, NAT64 well-known
   and local-use, 6to4, Teredo) is refused when any IPv4 address it may carry
   is refused by rule 2 (``embedded_ipv4s``);
4. everything else is allowed.

``tests/services/special_purpose_addresses.csv`` lists the registries' entries;
a test checks every one of them against this rule.
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
    "METHODS",
    "SPECIAL_V4",
    "SPECIAL_V6",
    "Category",
    "EgressPolicy",
    "IPAddress",
    "IPNetwork",
    "Rule",
    "Target",
    "blocked",
    "check_address",
    "check_headers",
    "check_host_allowed",
    "check_method",
    "embedded_ipv4",
    "embedded_ipv4s",
    "parse_cidrs",
    "parse_ports",
    "parse_target",
    "redact_url",
    "special_rule",
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


class Rule(StrEnum):
    """What a special-purpose network means for a destination inside it."""

    DENY = "deny"
    ALLOW = "allow"  # a globally reachable entry carved out of a denied one
    EMBEDS = "embeds"  # a translation prefix: judged by the IPv4 address inside


def _table(*rows: tuple[str, Rule, str]) -> tuple[tuple[IPNetwork, Rule, str], ...]:
    return tuple((ipaddress.ip_network(net), rule, name) for net, rule, name in rows)


#: IPv4 special-purpose and multicast networks (IANA registries).  The most
#: specific network containing an address decides; no match means allowed.
SPECIAL_V4 = _table(
    ("0.0.0.0/8", Rule.DENY, "this network"),
    ("10.0.0.0/8", Rule.DENY, "private-use"),
    ("100.64.0.0/10", Rule.DENY, "shared address space (CGN)"),
    ("127.0.0.0/8", Rule.DENY, "loopback"),
    ("169.254.0.0/16", Rule.DENY, "link-local, cloud metadata"),
    ("172.16.0.0/12", Rule.DENY, "private-use"),
    # every entry in 192.0.0.0/24, the anycast ones (PCP 192.0.0.9, TURN
    # 192.0.0.10) too: their nearest instance is the operator's own network
    ("192.0.0.0/24", Rule.DENY, "IETF protocol assignments"),
    ("192.0.2.0/24", Rule.DENY, "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", Rule.DENY, "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", Rule.DENY, "private-use"),
    ("198.18.0.0/15", Rule.DENY, "benchmarking"),
    ("198.51.100.0/24", Rule.DENY, "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", Rule.DENY, "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", Rule.DENY, "multicast"),
    ("240.0.0.0/4", Rule.DENY, "reserved"),
    ("255.255.255.255/32", Rule.DENY, "limited broadcast"),
)

#: IPv6 special-purpose and multicast networks.  Outside 2000::/3 (the only
#: global unicast space IANA allocates from) an address no entry names is refused.
SPECIAL_V6 = _table(
    ("::/96", Rule.DENY, "IPv4-compatible (deprecated), unspecified, loopback"),
    ("::ffff:0:0/96", Rule.EMBEDS, "IPv4-mapped"),
    ("::ffff:0:0:0/96", Rule.EMBEDS, "IPv4-translated (SIIT)"),
    ("64:ff9b::/96", Rule.EMBEDS, "NAT64 well-known prefix"),
    ("64:ff9b:1::/48", Rule.EMBEDS, "NAT64 local-use prefix"),
    ("100::/64", Rule.DENY, "discard-only"),
    ("100:0:0:1::/64", Rule.DENY, "dummy prefix"),
    ("2001::/23", Rule.DENY, "IETF protocol assignments"),
    ("2001::/32", Rule.EMBEDS, "Teredo"),
    ("2001:3::/32", Rule.ALLOW, "AMT"),
    ("2001:4:112::/48", Rule.ALLOW, "AS112-v6"),
    ("2001:20::/28", Rule.ALLOW, "ORCHIDv2"),
    ("2001:30::/28", Rule.ALLOW, "drone remote ID entity tags"),
    ("2001:db8::/32", Rule.DENY, "documentation"),
    ("2002::/16", Rule.EMBEDS, "6to4"),
    ("3fff::/20", Rule.DENY, "documentation"),
    ("5f00::/16", Rule.DENY, "SRv6 SIDs"),
    ("fc00::/7", Rule.DENY, "unique local"),
    ("fe80::/10", Rule.DENY, "link-local"),
    ("fec0::/10", Rule.DENY, "site-local (deprecated)"),
    ("ff00::/8", Rule.DENY, "multicast"),
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")

DENIED_V4: tuple[ipaddress.IPv4Network, ...] = tuple(
    net
    for net, rule, _ in SPECIAL_V4
    if isinstance(net, ipaddress.IPv4Network) and rule is Rule.DENY
)


def special_rule(ip: IPAddress) -> tuple[IPNetwork, Rule, str] | None:
    """The most specific special-purpose entry containing ``ip``, if any."""
    table = SPECIAL_V4 if ip.version == 4 else SPECIAL_V6
    found = [row for row in table if ip in row[0]]
    return max(found, key=lambda row: row[0].prefixlen) if found else None


def _rfc6052(value: int, prefix_len: int) -> tuple[int, bool]:
    """The IPv4 address an RFC 6052 layout of ``prefix_len`` puts in ``value``.

    Returns the address and whether the layout is consistent (the "u" octet,
    bits 64-71, and the suffix after the address are zero; always for /96).
    """
    out, pos, taken = 0, prefix_len, 0
    while taken < 32:
        if 64 <= pos < 72:
            pos += 1
            continue
        out = (out << 1) | ((value >> (127 - pos)) & 1)
        pos, taken = pos + 1, taken + 1
    suffix = value & ((1 << (128 - pos)) - 1) if pos < 128 else 0
    consistent = prefix_len == 96 or ((value >> 56) & 0xFF == 0 and suffix == 0)
    return out, consistent


def embedded_ipv4s(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """Every IPv4 address an IPv6 translation address may stand for (none: ``()``).

    Mapped, translated and NAT64 well-known forms carry it in the low 32 bits;
    the NAT64 local-use /48 may use any RFC 6052 layout an operator's /48-/96
    prefix allows, so each consistent reading counts; 6to4 carries it in bits
    16-47; Teredo carries the server (bits 32-63) and the client, bit-inverted,
    in the low 32 bits.
    """
    value = int(ip)
    low = value & 0xFFFFFFFF
    rule = special_rule(ip)
    net = None if rule is None or rule[1] is not Rule.EMBEDS else rule[0]
    readings: list[int] = []
    if net in (_MAPPED, _TRANSLATED, _NAT64):
        readings = [low]
    elif net == _NAT64_LOCAL:
        readings = [low] + [v4 for v4, ok in (_rfc6052(value, n) for n in (48, 56, 64)) if ok]
    elif net == _SIX_TO_FOUR:
        readings = [(value >> 80) & 0xFFFFFFFF]
    elif net == _TEREDO:
        readings = [low ^ 0xFFFFFFFF, (value >> 64) & 0xFFFFFFFF]
    return tuple(dict.fromkeys(ipaddress.IPv4Address(v) for v in readings))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The primary IPv4 address an IPv6 translation address carries, or None."""
    found = embedded_ipv4s(ip)
    return found[0] if found else None


def _denied(ip: IPAddress) -> bool:
    rule = special_rule(ip)
    if rule is not None:
        return rule[1] is Rule.DENY
    return isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6


def check_address(
    ip: IPAddress, allow_cidrs: Iterable[IPNetwork] = (), *, url: str | None = None
) -> None:
    """Raise ``EgressBlocked`` unless ``ip`` may be dialled (see module docstring)."""
    # 1. operator-opened networks win
    if any(ip.version == net.version and ip in net for net in allow_cidrs):
        return
    # 2. the special-purpose table (and, for IPv6, anything outside 2000::/3)
    if _denied(ip):
        raise blocked(Category.ADDRESS, f"blocked address {ip}", url)
    # 3. a translation address is judged by every IPv4 address it may stand for
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in embedded_ipv4s(ip):
            if _denied(inner):
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
    if "%" in host:  # an IPv6 zone id or a percent-encoded name: never a destination
        raise blocked(Category.URL, "url invalid: zone id or '%' in host", parsed)
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
