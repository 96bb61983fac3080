"""Hypothesis strategies for small worlds: a few hosts, guests with labels from a small vocabulary and
addresses from a small pool (so that conflicts happen), and random policies over the same vocabulary."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

from hypothesis import strategies as st

from guestward.compile import CompiledState, Endpoint
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
PORTS = tuple(parse_port(p) for p in ("tcp/80", "tcp/1-100", "tcp/443", "udp/53", "udp/50-53", "icmp", "icmpv6",
                                      "any"))

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
        # libvirt reuses tap names (vnetN), so two guests' views of one host may name the same one
        port = draw(st.sampled_from((None, "vnet0", "vnet0", "vnet1", *[f"t{index}n{n}"] * 4)))
        nics.append(Interface.of(f"52:54:00:00:{index:02x}:{n:02x}", port, [str(a) for a in addrs]))
    host = draw(st.sampled_from((*HOST_NAMES, *HOST_NAMES, "elsewhere")))
    active = draw(st.integers(0, 5)) > 0
    # mid-migration: a live copy on a second host as well
    also_on = tuple(draw(st.lists(st.sampled_from(HOST_NAMES), max_size=1))) if draw(st.integers(0, 4)) == 0 else ()
    # the other end may name a vNIC its own way (libvirt's vnetN)
    elsewhere = tuple((h, nic.mac, draw(st.sampled_from(("vnet0", "vnet1", f"m{index}")))) for h in also_on
                      for nic in nics[:1] if draw(st.booleans()))
    return Guest(name, f"u{index}", host, draw(labels_st), tuple(nics), active, also_on, ports_elsewhere=elsewhere)


@st.composite
def inventories(draw: st.DrawFn, max_guests: int = 6, min_guests: int = 0) -> list[Guest]:
    count = draw(st.integers(min_guests, max_guests))
    return [draw(guest_versions(i)) for i in range(count)]


@dataclass(frozen=True)
class End:
    """One end of a probe flow: the address, the labels its owner has (None: outside the managed guests),
    the host and vNIC it is on when guestward enforces there (None: nothing of ours on its side)."""

    endpoint: Endpoint
    host: str | None
    owner: str
    port: str | None = None
    mac: str = "02:00:00:00:00:01"


# At the edges of the ranges in PORTS, so that an off-by-one shows.
PROBES = {4: (("tcp", 1), ("tcp", 80), ("tcp", 100), ("tcp", 101), ("tcp", 443), ("udp", 49), ("udp", 53), ("icmp", 0)),
          6: (("tcp", 80), ("tcp", 101), ("udp", 50), ("udp", 54), ("icmpv6", 0))}


def endpoints(guests: list[Guest], state: CompiledState) -> list[End]:
    """Every address a probe can come from or go to in this world."""
    conflicted = {c.address for c in state.conflicts}
    claimed = {a for g in guests if g.active for a in g.addresses}
    contested = contested_ports(guests)
    out: list[End] = []
    for g in guests:
        if not g.active:
            continue
        # A guest on a host that guestward does not manage is a managed identity (its addresses are in
        # the sets) whose own side nobody enforces: only the other end's vNIC decides.
        host = g.host if g.host in state.hosts else None
        for nic in g.interfaces:
            if host is not None and (nic.port is None or (host, nic.port) in contested):
                continue  # a vNIC without a port of its own gets no traffic at all (fail closed)
            for a in nic.addresses:
                if a not in conflicted:
                    out.append(End(Endpoint(a, g.labels, g.name), host, g.uuid, nic.port, nic.mac))
    for a in (*POOL, *OUTSIDE):
        if a not in claimed:
            out.append(End(Endpoint(a), None, f"outside {a}"))
    return out


def contested_ports(guests: list[Guest]) -> set[tuple[str, str]]:
    """(host, port) pairs that more than one vNIC of the active guests names (a guest live on two
    hosts, mid-migration, names its ports on both)."""
    seen: dict[tuple[str, str], int] = {}
    for g in guests:
        if g.active:
            for host in g.hosts:
                for nic in g.interfaces_on(host):
                    if nic.port is not None:
                        seen[(host, nic.port)] = seen.get((host, nic.port), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def flows(ends: list[End]) -> Iterator[tuple[End, End, str, int]]:
    """Every probe between two different owners of one address family with something of ours on the path."""
    for src in ends:
        for dst in ends:
            if src.owner == dst.owner or src.endpoint.address.version != dst.endpoint.address.version:
                continue
            if src.host is None and dst.host is None:
                continue
            for proto, port in PROBES[src.endpoint.address.version]:
                yield src, dst, proto, port
