"""Guest addresses are not self-asserted (compile/address_trust.py): one test per hostile class, many
generated variants each. Every test asserts the precise outcome: the hostile address refused with its
reason, the guest's other addresses still bound, and the compiled plans of every host exactly those of
the same inventory without the hostile address (nothing else changed)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.compile import compile_state
from guestward.compile.address_trust import AddressTrust, IPAddress, Network, cidr_peer_claims, special_range, vet
from guestward.model import Guest, Host, Interface, Inventory, Labels
from tests.compile.builders import policy, rule

HOSTS = (Host("hv1", "x", ("up0",)), Host("hv2", "y", ("up0",)))
LAB = Network("lab", (IPv4Network("10.77.0.0/24"), IPv6Network("fd77::/64")),
              gateways=(IPv4Address("10.77.0.1"), IPv6Address("fd77::1")),
              reserved=(IPv4Address("10.77.0.250"), IPv6Address("fd77::53")))
TRUST = AddressTrust((LAB,), (("hv1", IPv4Address("10.77.0.254")), ("hv2", IPv6Address("fd77::fe"))))
OPEN = AddressTrust((Network("all", (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))),))  # allows every range
GOOD = (ip_address("10.77.0.11"), ip_address("fd77::11"))
POLICIES = [policy("p", "application", rule("web-to-db", "allow", {"zone": "web"}, {"zone": "db"}, ("tcp/5432",)),
                   rule("admins", "allow", ["192.0.2.0/24", "2001:db8:a::/48"], {}, ("tcp/22",)))]


def guest(extra: list[IPAddress], name: str = "web1", host: str = "hv1") -> Guest:
    nic = Interface.of("52:54:00:00:00:11", f"tap-{name}", [str(a) for a in (*GOOD, *extra)])
    return Guest(name, f"uuid-{name}", host, Labels({"zone": "web"}), (nic,), claimed=())


DB = Guest("db1", "uuid-db1", "hv2", Labels({"zone": "db"}), (Interface.of("52:54:00:00:00:21", "tap-db1",
                                                                          ["10.77.0.13"]),))


def assert_refused(trust: AddressTrust, hostile: IPAddress, reason: str) -> None:
    g = vet(guest([hostile]), trust)
    (nic,) = g.interfaces
    assert nic.refused == ((hostile, reason),)
    assert nic.addresses == GOOD  # the valid ones still bound
    # nothing else changed: the plans are those of the guest that never declared the hostile address
    with_hostile = compile_state(Inventory(HOSTS, (g, DB)), POLICIES)
    without = compile_state(Inventory(HOSTS, (vet(guest([]), trust), DB)), POLICIES)
    assert with_hostile == without
    assert vet(g, trust) == g  # idempotent: judging again gives the same


# -- strategies: addresses of every kind --------------------------------------------------------

def in_net(net: str) -> st.SearchStrategy[IPAddress]:
    n = ip_network(net)
    return st.integers(int(n.network_address), int(n.broadcast_address)).map(
        lambda i: IPv4Address(i) if n.version == 4 else IPv6Address(i))


SPECIAL = {
    "loopback": st.one_of(in_net("127.0.0.0/8"), st.just(IPv6Address("::1"))),
    "multicast": st.one_of(in_net("224.0.0.0/4"), in_net("ff00::/8")),
    "link-local": st.one_of(in_net("169.254.0.0/16"), in_net("fe80::/10"), st.just(IPv4Address("169.254.169.254"))),
    "broadcast": st.just(IPv4Address("255.255.255.255")),
    "unspecified": st.sampled_from([IPv4Address("0.0.0.0"), IPv6Address("::")]),
    "reserved": st.one_of(in_net("240.0.0.0/5"), in_net("4000::/3"), in_net("fec0::/10")),
    "reserved (this network, 0.0.0.0/8)": in_net("0.0.0.0/8").filter(lambda a: int(a) != 0),
    "IPv4-mapped IPv6": in_net("::ffff:0:0/96").filter(lambda a: not a.is_loopback and not a.is_unspecified),
}
CLASSES = st.sampled_from(sorted(SPECIAL))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([TRUST, OPEN, AddressTrust()]))
def test_special_addresses_are_refused_whatever_the_networks(data: st.DataObject, trust: AddressTrust) -> None:
    kind = data.draw(CLASSES)
    addr = data.draw(SPECIAL[kind])
    assert special_range(addr) == kind  # the most specific class names it (::1: loopback, not reserved)
    assert_refused(trust, addr, kind)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(IPv4Address("10.77.0.1"), "the gateway of network lab"),
                        (IPv6Address("fd77::1"), "the gateway of network lab"),
                        (IPv4Address("10.77.0.250"), "reserved in network lab"),
                        (IPv6Address("fd77::53"), "reserved in network lab"),
                        (IPv4Address("10.77.0.254"), "an address of host hv1"),
                        (IPv6Address("fd77::fe"), "an address of host hv2")]),
       st.booleans())
def test_gateway_reserved_and_host_addresses_are_refused(case: tuple[IPAddress, str], open_ranges: bool) -> None:
    addr, reason = case
    # even where the networks would allow everything, a gateway's / host's address stays refused
    trust = replace(TRUST, networks=(*TRUST.networks, *OPEN.networks)) if open_ranges else TRUST
    assert_refused(trust, addr, reason)


ORDINARY = st.one_of(in_net("0.0.0.0/0"), in_net("2000::/3"), in_net("fc00::/7")).filter(
    lambda a: special_range(a) is None)


@settings(max_examples=300, deadline=None)
@given(ORDINARY.filter(lambda a: not any(a in c for c in LAB.cidrs)))
def test_an_address_outside_every_network_is_refused(addr: IPAddress) -> None:
    assert_refused(TRUST, addr, "outside every configured network")


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["10.77.0.0", "10.77.0.255"]))
def test_the_network_and_broadcast_address_of_a_configured_range_are_refused(text: str) -> None:
    addr = ip_address(text)
    what = "network" if text.endswith(".0") else "broadcast"
    assert_refused(TRUST, addr, f"the {what} address of 10.77.0.0/24 (lab)")


@settings(max_examples=200, deadline=None)
@given(st.one_of(in_net("10.77.0.0/24"), in_net("fd77::/64")).filter(
    lambda a: TRUST.refusal(a) is None and a not in GOOD))
def test_an_ordinary_address_inside_a_network_is_bound(addr: IPAddress) -> None:
    (nic,) = vet(guest([addr]), TRUST).interfaces
    assert nic.refused == () and set(nic.addresses) == {*GOOD, addr}


@settings(max_examples=200, deadline=None)
@given(ORDINARY)
def test_without_networks_ordinary_addresses_are_bound_special_ones_not(addr: IPAddress) -> None:
    """The compatible default (no `networks` in the configuration): only the fixed rules apply."""
    (nic,) = vet(guest([addr]), AddressTrust()).interfaces
    assert nic.refused == () and addr in nic.addresses


@settings(max_examples=200, deadline=None)
@given(st.one_of(in_net("192.0.2.0/24"), in_net("2001:db8:a::/48")))
def test_a_claim_inside_a_cidr_peer_is_reported(addr: IPAddress) -> None:
    """An address inside the `admins` cidr peer would be let in as an admin: reported, with the policy."""
    g = vet(guest([addr]), OPEN)
    assert addr in g.addresses
    net = "192.0.2.0/24" if addr.version == 4 else "2001:db8:a::/48"
    assert cidr_peer_claims([g, DB], POLICIES) == [("web1", addr, "p", ip_network(net))]
    # with the lab's networks it is not a lab address at all: refused
    assert_refused(TRUST, addr, "outside every configured network")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(*SPECIAL.values()), min_size=1, max_size=8, unique=True))
def test_several_hostile_addresses_on_two_vnics_are_each_refused(hostile: list[IPAddress]) -> None:
    second = Interface.of("52:54:00:00:00:12", "tap-web1b", [str(a) for a in hostile] + ["10.77.0.12"])
    g = replace(guest(hostile), interfaces=(*guest(hostile).interfaces, second))
    vetted = vet(g, TRUST)
    for nic in vetted.interfaces:
        assert {a for a, _ in nic.refused} == set(hostile)
    assert vetted.interfaces[0].addresses == GOOD and vetted.interfaces[1].addresses == (ip_address("10.77.0.12"),)
