"""Pure egress policy: the address deny table, CIDR/port parsing, allowlists, URLs."""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.errors import ConfigError, EgressBlocked, ValidationFailed
from lattice.services.egress_policy import (
    DENIED_V4,
    Category,
    EgressPolicy,
    check_address,
    check_headers,
    check_host_allowed,
    check_method,
    embedded_ipv4,
    parse_cidrs,
    parse_ports,
    parse_target,
    redact_url,
    validate_allow_hosts,
)

ip = ipaddress.ip_address

# (denied network, representative inside, edge inside, first/last address just outside)
V4_TABLE = [
    ("0.0.0.0/8", "0.0.0.0", "0.255.255.255", "1.0.0.0"),
    ("10.0.0.0/8", "10.1.2.3", "10.255.255.255", "11.0.0.0"),
    ("100.64.0.0/10", "100.64.0.1", "100.127.255.255", "100.128.0.0"),
    ("100.64.0.0/10", "100.100.100.100", "100.64.0.0", "100.63.255.255"),
    ("127.0.0.0/8", "127.0.0.1", "127.255.255.255", "128.0.0.0"),
    ("127.0.0.0/8", "127.0.0.2", "127.0.0.0", "126.255.255.255"),
    ("169.254.0.0/16", "169.254.169.254", "169.254.255.255", "169.255.0.0"),
    ("172.16.0.0/12", "172.16.0.1", "172.31.255.255", "172.32.0.0"),
    ("172.16.0.0/12", "172.20.1.1", "172.16.0.0", "172.15.255.255"),
    ("192.0.0.0/24", "192.0.0.8", "192.0.0.255", "192.0.1.0"),
    ("192.0.2.0/24", "192.0.2.1", "192.0.2.255", "192.0.3.0"),
    ("192.88.99.0/24", "192.88.99.1", "192.88.99.255", "192.88.100.0"),
    ("192.168.0.0/16", "192.168.1.1", "192.168.255.255", "192.169.0.0"),
    ("198.18.0.0/15", "198.18.0.1", "198.19.255.255", "198.20.0.0"),
    ("198.51.100.0/24", "198.51.100.7", "198.51.100.255", "198.51.101.0"),
    ("203.0.113.0/24", "203.0.113.9", "203.0.113.255", "203.0.114.0"),
    ("224.0.0.0/4", "224.0.0.1", "239.255.255.255", "223.255.255.255"),
    ("240.0.0.0/4", "240.0.0.1", "254.255.255.255", "223.255.255.254"),
    ("255.255.255.255/32", "255.255.255.255", "255.255.255.255", "8.8.8.8"),
]

# outside 2000::/3 every unnamed address is refused too, so "outside" there is
# a public address; within 2000::/3 it is the neighbour of the range
V6_TABLE = [
    ("::/128", "::", "::", "2606:4700::1"),
    ("::1/128", "::1", "::1", "2606:4700::1111"),
    ("100::/64", "100::1", "100::ffff:ffff:ffff:ffff", "2606:4700::1"),
    ("2001:db8::/32", "2001:db8::1", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"),
    ("3fff::/20", "3fff::1", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::"),
    ("fc00::/7", "fd00::1", "fc00::", "2606:4700::1"),
    ("fe80::/10", "fe80::1", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2606:4700::1"),
    ("fec0::/10", "fec0::1", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2606:4700::1"),
    ("ff00::/8", "ff02::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2a00::1"),
    ("::/96", "::7f00:1", "::ffff:ffff", "2606:4700::1"),  # IPv4-compatible (deprecated)
]


@pytest.mark.parametrize(("net", "inside", "edge", "outside"), V4_TABLE + V6_TABLE)
def test_deny_table_blocks_inside_and_allows_just_outside(
    net: str, inside: str, edge: str, outside: str
) -> None:
    assert ip(inside) in ipaddress.ip_network(net)
    assert ip(edge) in ipaddress.ip_network(net)
    for address in (inside, edge):
        with pytest.raises(EgressBlocked, match=r"blocked address") as info:
            check_address(ip(address))
        assert info.value.category == "address"
        assert info.value.reason.startswith(f"blocked address {ip(address)}")
    assert ip(outside) not in ipaddress.ip_network(net)
    check_address(ip(outside))  # no raise


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b:1::c0a8:101", "192.168.1.1"),  # NAT64 local-use prefix
        ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
        ("2002:a00:1:5::9", "10.0.0.1"),
        # Teredo: client 127.0.0.1 stored inverted as 80ff:fffe
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1"),
    ],
)
def test_embedded_private_ipv4_is_blocked(address: str, inner: str) -> None:
    v6 = ipaddress.IPv6Address(address)
    assert embedded_ipv4(v6) == ipaddress.IPv4Address(inner)
    with pytest.raises(EgressBlocked, match=rf"blocked address .*embeds {inner}"):
        check_address(v6)


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "64:ff9b:1::808:808",
        "2002:808:808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo client 8.8.8.8
    ],
)
def test_embedded_public_ipv4_is_allowed(address: str) -> None:
    v6 = ipaddress.IPv6Address(address)
    assert embedded_ipv4(v6) == ipaddress.IPv4Address("8.8.8.8")
    check_address(v6)


def test_plain_ipv6_has_no_embedded_ipv4() -> None:
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1111")) is None


@given(st.ip_addresses(v=4))
def test_mapped_form_judged_like_its_ipv4(v4: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    denied = any(v4 in net for net in DENIED_V4)
    for address in (v4, mapped):
        if denied:
            with pytest.raises(EgressBlocked, match="blocked address"):
                check_address(address)
        else:
            check_address(address)


@given(st.ip_addresses(v=4))
def test_teredo_client_extraction_round_trips(v4: ipaddress.IPv4Address) -> None:
    teredo = ipaddress.IPv6Address((0x20010000 << 96) | (int(v4) ^ 0xFFFFFFFF))
    assert embedded_ipv4(teredo) == v4


def test_allow_cidrs_open_exactly_their_networks() -> None:
    opened = parse_cidrs("127.0.0.1/32,fd00::/64")
    check_address(ip("127.0.0.1"), opened)
    check_address(ip("fd00::5"), opened)
    with pytest.raises(EgressBlocked, match=r"blocked address 127\.0\.0\.2"):
        check_address(ip("127.0.0.2"), opened)
    with pytest.raises(EgressBlocked, match=r"blocked address fd00:0:0:1::5"):
        check_address(ip("fd00:0:0:1::5"), opened)
    # an opened IPv4 network does not open the IPv4-mapped IPv6 form
    with pytest.raises(EgressBlocked, match=r"embeds 127\.0\.0\.1"):
        check_address(ip("::ffff:127.0.0.1"), opened)


def test_parse_cidrs_accepts_lists_and_blank() -> None:
    assert parse_cidrs("") == ()
    assert parse_cidrs("  ") == ()
    assert parse_cidrs(" 10.0.0.0/8 , ::1/128") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert parse_cidrs(["192.168.0.0/16"]) == (ipaddress.ip_network("192.168.0.0/16"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("10.0.0.0", "explicit /prefix"),
        ("nonsense/8", "invalid"),
        ("10.0.0.0/33", "invalid"),
        ("10.0.0.0/8,,127.0.0.1/32", "explicit /prefix"),
        ("fe80::/10%eth0", "invalid"),
    ],
)
def test_parse_cidrs_is_strict(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cidrs(text)


def test_parse_ports() -> None:
    assert parse_ports("80, 443,8080") == frozenset({80, 443, 8080})
    assert parse_ports([8443]) == frozenset({8443})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("80,http", "not a number"),
        ("0", "out of range"),
        ([70000], "out of range"),
        ([True], "not a number"),
        ([], "at least one"),
        ("-1", "not a number"),
    ],
)
def test_parse_ports_is_strict(value: str | list[int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_ports(value)


def test_policy_from_settings() -> None:
    policy = EgressPolicy.from_settings(allow_cidrs="127.0.0.1/32", allow_ports="8080")
    assert policy.allow_cidrs == (ipaddress.ip_network("127.0.0.1/32"),)
    assert policy.allow_ports == frozenset({8080})
    assert EgressPolicy().allow_ports == frozenset({80, 443})
    assert EgressPolicy().max_redirects == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_request_bytes": -1}, "max_request_bytes"),
        ({"max_response_bytes": -1}, "max_response_bytes"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"total_timeout": -1.0}, "total_timeout"),
        ({"max_redirects": -1}, "max_redirects"),
        ({"allow_ports": frozenset({0})}, "out of range"),
        ({"allow_cidrs": ("10.0.0.0/8",)}, "not a network"),
    ],
)
def test_policy_validates_itself(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EgressPolicy(**kwargs)  # type: ignore[arg-type]


def test_validate_allow_hosts_normalises() -> None:
    assert validate_allow_hosts(
        ["API.Example.org.", "*.example.org", "api.example.org", "10.0.0.1", "::1"]
    ) == ["api.example.org", "*.example.org", "10.0.0.1", "::1"]
    assert validate_allow_hosts([]) == []
    assert validate_allow_hosts(["xn--bcher-kva.example"]) == ["xn--bcher-kva.example"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "not a hostname"),
        ("*", "not a hostname"),
        ("*.org", "too broad"),
        ("*.*.example.org", "not a hostname"),
        ("api*.example.org", "not a hostname"),
        ("a..example.org", "not a hostname"),
        ("-a.example.org", "not a hostname"),
        ("a_b.example.org", "not a hostname"),
        ("http://example.org", "not a hostname"),
        ("example.org:443", "not a hostname"),
        ("example.org/path", "not a hostname"),
        ("exa mple.org", "not a hostname"),
        ("bücher.example", "not a hostname"),
        ("*.1.2.3", "not a hostname"),
        ("a" * 64 + ".example.org", "not a hostname"),
        (".".join(["a" * 60] * 5), "not a hostname"),
    ],
)
def test_validate_allow_hosts_rejects_bad_entries(entry: str, message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        validate_allow_hosts([entry])


def test_validate_allow_hosts_rejects_non_strings() -> None:
    with pytest.raises(ValidationFailed, match="not a string"):
        validate_allow_hosts([5])  # type: ignore[list-item]


POLICY = EgressPolicy()


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.org/x", True),
        ("https://API.EXAMPLE.ORG./x", True),
        ("https://a.svc.example.org/", True),
        ("https://b.a.svc.example.org/", True),
        ("https://svc.example.org/", False),  # wildcard does not cover the apex
        ("https://example.org/", False),
        ("https://evil-example.org/", False),
        ("https://api.example.org.evil.test/", False),
        ("https://xsvc.example.org/", False),
        ("https://10.0.0.1/", True),
        ("https://[::1]/", True),
    ],
)
def test_allowlist_matching(url: str, allowed: bool) -> None:
    hosts = validate_allow_hosts(["api.example.org", "*.svc.example.org", "10.0.0.1", "::1"])
    target = parse_target(url, POLICY)
    if allowed:
        check_host_allowed(target, hosts)
    else:
        with pytest.raises(EgressBlocked, match="host not allowed") as info:
            check_host_allowed(target, hosts)
        assert info.value.category == "host"


def test_no_allowlist_means_any_host() -> None:
    check_host_allowed(parse_target("https://anything.test/", POLICY), None)
    with pytest.raises(EgressBlocked, match="host not allowed"):
        check_host_allowed(parse_target("https://anything.test/", POLICY), [])


@pytest.mark.parametrize(
    ("url", "category", "message"),
    [
        ("file:///etc/passwd", Category.SCHEME, "scheme 'file'"),
        ("ftp://example.org/", Category.SCHEME, "scheme 'ftp'"),
        ("gopher://example.org:70/_x", Category.SCHEME, "scheme 'gopher'"),
        ("javascript:alert(1)", Category.SCHEME, "scheme 'javascript'"),
        ("https://user:pw@example.org/", Category.USERINFO, "userinfo"),
        ("https://user@example.org/", Category.USERINFO, "userinfo"),
        ("http:///path", Category.URL, "no host"),
        ("http://0177.0.0.1/", Category.URL, "url invalid"),
        ("https://example.org:8443/", Category.PORT, "port 8443"),
        ("http://example.org:0/", Category.PORT, "port 0"),
        ("http://example.org:99999/", Category.PORT, "port 99999"),
    ],
)
def test_parse_target_refusals(url: str, category: Category, message: str) -> None:
    with pytest.raises(EgressBlocked, match=message) as info:
        parse_target(url, POLICY)
    assert info.value.category == category.value
    assert info.value.reason.startswith(category.value)


def test_parse_target_defaults_and_idn() -> None:
    target = parse_target("HTTPS://Bücher.Example/a?b=1", POLICY)
    assert (target.host, target.port) == ("xn--bcher-kva.example", 443)
    assert target.origin == ("https", "xn--bcher-kva.example", 443)
    assert parse_target("http://[::1]/", POLICY).host == "::1"


def test_redact_url_masks_userinfo_and_query_values() -> None:
    assert redact_url("https://u:secret@h.test:8443/p?token=abc#f") == (
        "https://***@h.test:8443/p?token=***"
    )
    assert redact_url("http://[::1/") == "<invalid url>"
    assert redact_url(httpx.URL("https://h.test/x?y")) == "https://h.test/x?***"


def test_userinfo_refusal_does_not_carry_the_password() -> None:
    with pytest.raises(EgressBlocked, match="userinfo") as info:
        parse_target("https://user:hunter2@example.org/", POLICY)
    assert info.value.url is not None
    assert "hunter2" not in info.value.url


@pytest.mark.parametrize("method", ["get", "HEAD", "Post", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods_allowed(method: str) -> None:
    assert check_method(method, "https://h.test/") == method.upper()


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "GET /x", ""])
def test_methods_refused(method: str) -> None:
    with pytest.raises(EgressBlocked, match="method") as info:
        check_method(method, "https://h.test/")
    assert info.value.category == "method"


def test_headers_pass_through() -> None:
    assert check_headers({"X-A": "b\tc", "Authorization": "Bearer t"}, "u") == [
        ("X-A", "b\tc"),
        ("Authorization", "Bearer t"),
    ]
    assert check_headers(None, "u") == []


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-A": "a\r\nInjected: 1"}, "value invalid"),
        ({"X-A": "a\nb"}, "value invalid"),
        ({"X-A": "a\x00b"}, "value invalid"),
        ({"X-A": "caf\u00e9"}, "value invalid"),
        ({"X-A": "a" * 8193}, "value invalid"),
        ({"X A": "b"}, "name 'X A' invalid"),
        ({"X-A\r\n": "b"}, "invalid"),
        ({"": "b"}, "invalid"),
        ({"Host": "internal.test"}, "set by the guard"),
        ({"host": "internal.test"}, "set by the guard"),
        ({"Transfer-Encoding": "chunked"}, "set by the guard"),
        ({"Content-Length": "5"}, "set by the guard"),
        ({"Connection": "close"}, "set by the guard"),
        ({"Upgrade": "websocket"}, "set by the guard"),
        ({"Proxy-Connection": "x"}, "set by the guard"),
        ({"TE": "trailers"}, "set by the guard"),
        ({"Accept-Encoding": "gzip"}, "set by the guard"),
        ({f"X-{i}": "v" for i in range(65)}, "header count"),
    ],
)
def test_headers_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(EgressBlocked, match=message) as info:
        check_headers(headers, "https://h.test/")
    assert info.value.category == "header"
