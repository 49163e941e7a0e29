"""Every IANA special-purpose and multicast entry against the egress address rule.

``special_purpose_addresses.csv`` (beside this file) holds the registries'
entries.  The expected decision for an address is derived here from that data
alone, not from the guard's own table:

* the most specific entry containing the address decides;
* a translation prefix (mapped, translated, NAT64, 6to4, Teredo) is judged by
  the IPv4 address(es) it carries, each judged the same way;
* a multicast entry is refused; an entry that is not globally reachable
  (``false`` or ``n/a``) is refused; ``STRICTER`` lists the few reachable
  entries Lattice refuses anyway, with the reason;
* an IPv6 address outside 2000::/3 that no entry names is refused.

Each entry is sampled at its first, middle and last address, so a gap in the
guard's table (a missing entry, a wrong prefix length) fails here.
"""

from __future__ import annotations

import csv
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.errors import EgressBlocked
from lattice.services.egress_policy import check_address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DATA = Path(__file__).with_name("special_purpose_addresses.csv")


@dataclass(frozen=True)
class Entry:
    registry: str
    network: IPNetwork
    name: str
    reachable: str

    @property
    def prefix(self) -> str:
        return str(self.network)


def load() -> list[Entry]:
    lines = [line for line in DATA.read_text().splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    return [
        Entry(r["registry"], ipaddress.ip_network(r["prefix"]), r["name"], r["globally_reachable"])
        for r in rows
    ]


ENTRIES = load()

TRANSLATION = {
    "::ffff:0:0/96",
    "::ffff:0:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2002::/16",
    "2001::/32",
}

#: globally reachable per the registry, refused by Lattice anyway
STRICTER = {
    "192.0.0.9/32": "PCP anycast: the nearest PCP server is the operator's own NAT",
    "192.0.0.10/32": "TURN anycast: served from inside the operator's network",
    "2001:1::1/128": "PCP anycast",
    "2001:1::2/128": "TURN anycast",
    "2001:1::3/128": "DNS-SD SRP anycast: a local service registrar",
}

GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def most_specific(address: IPAddress) -> Entry | None:
    found = [e for e in ENTRIES if e.network.version == address.version and address in e.network]
    return max(found, key=lambda e: e.network.prefixlen) if found else None


def carried_ipv4(address: ipaddress.IPv6Address, prefix: str) -> list[ipaddress.IPv4Address]:
    value = int(address)
    low = value & 0xFFFFFFFF
    if prefix == "2002::/16":
        readings = [(value >> 80) & 0xFFFFFFFF]
    elif prefix == "2001::/32":  # Teredo: server in bits 32-63, client inverted at the end
        readings = [(value >> 64) & 0xFFFFFFFF, low ^ 0xFFFFFFFF]
    else:
        readings = [low]
    return [ipaddress.IPv4Address(r) for r in readings]


def expected_denied(address: IPAddress) -> bool:
    entry = most_specific(address)
    if entry is None:
        return isinstance(address, ipaddress.IPv6Address) and address not in GLOBAL_UNICAST_V6
    if entry.prefix in TRANSLATION:
        assert isinstance(address, ipaddress.IPv6Address)
        return any(expected_denied(v4) for v4 in carried_ipv4(address, entry.prefix))
    if entry.prefix in STRICTER or entry.registry.endswith("multicast"):
        return True
    return entry.reachable != "true"


def samples(network: IPNetwork) -> list[IPAddress]:
    first = network.network_address
    middle = first + network.num_addresses // 2
    last = network.broadcast_address
    return list(dict.fromkeys([first, middle, last]))


def denied(address: IPAddress) -> bool:
    try:
        check_address(address)
    except EgressBlocked as exc:
        assert exc.category == "address"
        assert exc.reason.startswith(f"blocked address {address}")
        return True
    return False


def test_the_data_file_holds_the_registries() -> None:
    prefixes = {e.prefix for e in ENTRIES}
    # recent additions and entries the issue names must not be trimmed away
    for needed in (
        "3fff::/20",
        "5f00::/16",
        "100:0:0:1::/64",
        "2001:2::/48",
        "2001:10::/28",
        "192.0.0.0/24",
        "192.0.0.8/32",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.175.48.0/24",
        "2001:4:112::/48",
        "2620:4f:8000::/48",
        "64:ff9b:1::/48",
        "::ffff:0:0:0/96",
        "224.0.0.0/4",
        "ff00::/8",
    ):
        assert needed in prefixes, needed
    assert len(ENTRIES) >= 60
    assert {e.reachable for e in ENTRIES} <= {"true", "false", "n/a"}
    assert set(STRICTER) <= prefixes
    assert TRANSLATION.issubset(prefixes)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e.prefix} {e.name}")
def test_every_entry_is_judged_by_the_rule(entry: Entry) -> None:
    for address in samples(entry.network):
        want = expected_denied(address)
        assert denied(address) == want, f"{address} in {entry.prefix} ({entry.name})"
    if entry.reachable != "true" and entry.prefix not in TRANSLATION:
        # the registry says it is not globally reachable: every sample is refused
        assert all(denied(a) for a in samples(entry.network))


@pytest.mark.parametrize("prefix", sorted(TRANSLATION))
@pytest.mark.parametrize(
    ("inner", "refused"),
    [("127.0.0.1", True), ("10.1.2.3", True), ("169.254.169.254", True), ("8.8.8.8", False)],
)
def test_translation_prefixes_are_judged_by_the_ipv4_inside(
    prefix: str, inner: str, refused: bool
) -> None:
    net = ipaddress.IPv6Network(prefix)
    v4 = int(ipaddress.IPv4Address(inner))
    if prefix == "2002::/16":
        value = int(net.network_address) | (v4 << 80)
    elif prefix == "2001::/32":  # Teredo, public server 65.54.227.120, client inverted
        value = int(net.network_address) | (0x4136E378 << 64) | (v4 ^ 0xFFFFFFFF)
    else:
        value = int(net.network_address) | v4
    address = ipaddress.IPv6Address(value)
    assert denied(address) is refused, address
    assert expected_denied(address) is refused


@pytest.mark.parametrize(
    "address",
    ["::ffff:0:7f00:1", "::ffff:0:a00:1", "::ffff:0:a9fe:a9fe", "::ffff:0:0:0"],
)
def test_the_ipv4_translated_form_is_refused_for_internal_targets(address: str) -> None:
    assert denied(ipaddress.IPv6Address(address))


@pytest.mark.parametrize(
    "address",
    ["4000::1", "6000::1", "e000::1", "200::1", "1000::1", "fe00::1", "::1:0:0:1"],
)
def test_ipv6_outside_global_unicast_is_refused(address: str) -> None:
    assert denied(ipaddress.IPv6Address(address))
    assert expected_denied(ipaddress.IPv6Address(address))


def test_nat64_local_use_layouts_are_all_read() -> None:
    # 127.0.0.1 in the RFC 6052 /64 layout under 64:ff9b:1:: (bits 72-103)
    v4 = int(ipaddress.IPv4Address("127.0.0.1"))
    address = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b:1::")) | (v4 << 24))
    assert denied(address)
    # a /96 sub-prefix carrying a public address stays open
    assert not denied(ipaddress.IPv6Address("64:ff9b:1:abcd:1::808:808"))


@given(st.ip_addresses(v=4), st.sampled_from(["::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96"]))
def test_low_32_bit_forms_are_judged_like_the_ipv4_address(
    v4: ipaddress.IPv4Address, prefix: str
) -> None:
    address = ipaddress.IPv6Address(int(ipaddress.IPv6Network(prefix).network_address) | int(v4))
    assert denied(address) == denied(v4) == expected_denied(v4)


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=2**80 - 1))
def test_6to4_is_judged_like_the_ipv4_address_whatever_follows(
    v4: ipaddress.IPv4Address, rest: int
) -> None:
    address = ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80) | rest)
    assert denied(address) == denied(v4)
