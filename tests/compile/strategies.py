"""Hypothesis strategies for small worlds: a few hosts, guests with labels from a small vocabulary and
addresses from a small pool (so that conflicts happen), and random policies over the same vocabulary."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from hypothesis import strategies as st

from guestward.model import QUARANTINE_LABEL, Expression, Guest, Host, Interface, Labels, Operator, Selector
from guestward.policy import TIERS, Action, AnyPeer, CidrPeer, GuestsPeer, Peer, Policy, Rule, parse_port

HOSTS = (Host("h1", "test:///h1", ("up1",)), Host("h2", "test:///h2", ("up2",)), Host("h3", "test:///h3"))
HOST_NAMES = ("h1", "h2", "h3")
KEYS = ("zone", "env", QUARANTINE_LABEL[0])
VALUES = ("web", "db", "prod", "true")
POOL = tuple(ip_address(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6",
                                     "fd00::1", "fd00::2", "fd00::3"))
OUTSIDE = tuple(ip_address(a) for a in ("10.0.0.9", "192.0.2.1", "fd00::9", "2001:db8::1"))
NETWORKS = tuple(ip_network(n) for n in ("10.0.0.0/30", "10.0.0.4/31", "10.0.0.8/29", "192.0.2.0/24", "0.0.0.0/0",
                                          "fd00::/126", "2001:db8::/32", "::/0"))
PORTS = tuple(parse_port(p) for p in ("tcp/80", "tcp/1-100", "tcp/443", "udp/53", "icmp", "icmpv6", "any"))

# Allow-heavy, so that flows are allowed often enough for "allowed" to be checked as much as "blocked".
ACTIONS = st.sampled_from([Action.ALLOW, Action.ALLOW, Action.ALLOW, Action.DENY, Action.PASS])
labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3).map(Labels)


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    match_labels = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2))
    exprs = []
    for _ in range(draw(st.integers(0, 1))):
        op = draw(st.sampled_from(list(Operator)))
        values: tuple[str, ...] = ()
        if op in (Operator.IN, Operator.NOT_IN):
            values = tuple(draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2)))
        exprs.append(Expression(draw(st.sampled_from(KEYS)), op, values))
    return Selector.of(match_labels, exprs)


peers: st.SearchStrategy[Peer] = st.one_of(
    st.just(AnyPeer()),
    st.sampled_from(KEYS[:2]).flatmap(lambda k: st.sampled_from(VALUES).map(lambda v: GuestsPeer(Selector.of({k: v})))),
    selectors().map(GuestsPeer),
    st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=2, unique=True).map(lambda ns: CidrPeer(tuple(ns))),
)


@st.composite
def policy_sets(draw: st.DrawFn, max_policies: int = 4) -> list[Policy]:
    names = draw(st.lists(st.sampled_from("abcdef"), unique=True, max_size=max_policies))
    out = []
    for name in names:
        rules = tuple(
            Rule(f"r{i}", draw(ACTIONS), draw(peers), draw(peers),
                 tuple(sorted(set(draw(st.lists(st.sampled_from(PORTS), max_size=2))))))
            for i in range(draw(st.integers(0, 4)))
        )
        out.append(Policy(name, draw(st.sampled_from(TIERS)), draw(st.sampled_from((0, 10, 1000))), rules))
    return out


@st.composite
def guest_versions(draw: st.DrawFn, index: int) -> Guest:
    """A guest with uuid `u<index>`: every call may give another version of it (labels, host, vNICs)."""
    name = f"g{index}"
    nics = []
    for n in range(draw(st.integers(0, 2))):
        addrs = draw(st.lists(st.sampled_from(POOL), min_size=draw(st.sampled_from((0, 1, 1, 1))), max_size=2))
        port = None if draw(st.integers(0, 9)) == 0 else f"t{index}n{n}"
        nics.append(Interface.of(f"52:54:00:00:{index:02x}:{n:02x}", port, [str(a) for a in addrs]))
    host = draw(st.sampled_from((*HOST_NAMES, *HOST_NAMES, "elsewhere")))
    active = draw(st.integers(0, 5)) > 0
    return Guest(name, f"u{index}", host, draw(labels_st), tuple(nics), active)


@st.composite
def inventories(draw: st.DrawFn, max_guests: int = 6, min_guests: int = 0) -> list[Guest]:
    count = draw(st.integers(min_guests, max_guests))
    return [draw(guest_versions(i)) for i in range(count)]
