"""Which open connections an apply cuts (dataplane/denied.py): exactly those whose original tuple the
new policies deny, which are exactly those the rendered tables drop as a new connection."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import HealthCheck, given, settings

from guestward.compile import Endpoint, compile_state
from guestward.dataplane import render_plan
from guestward.dataplane.conntrack import Entry, Tuple
from guestward.dataplane.denied import denied, owners
from guestward.model import Guest, Inventory, Labels
from guestward.policy import Policy
from tests.compile.strategies import End, endpoints, flows, inventories, policy_sets
from tests.dataplane.test_nft_eval import HOSTS, nft_allows


def entry(src: End, dst: End, proto: str, port: int) -> Entry:
    a, b = str(src.endpoint.address), str(dst.endpoint.address)
    family = "ipv4" if src.endpoint.address.version == 4 else "ipv6"
    keys = (("sport", "40000"), ("dport", str(port))) if proto in ("tcp", "udp") else (("type", "8"), ("id", "7"))
    rkeys = (("sport", str(port)), ("dport", "40000")) if proto in ("tcp", "udp") else (("type", "0"), ("id", "7"))
    return Entry(family, proto, 30, Tuple(a, b, keys), Tuple(b, a, rkeys))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(max_guests=6, min_guests=2), policy_sets(max_policies=4))
def test_cut_exactly_what_the_tables_would_drop(guests: list[Guest], policies: list[Policy]) -> None:
    state = compile_state(Inventory(HOSTS, tuple(guests)), policies)
    tables = {h: render_plan(p) for h, p in state.hosts.items()}
    ends = owners(guests, state)
    for src, dst, proto, port in flows(endpoints(guests, state)):
        e = entry(src, dst, proto, port)
        managed = str(src.endpoint.address) in ends or str(dst.endpoint.address) in ends
        cut = denied([e], ends, policies) == [e]
        if not managed:
            assert not cut, "an entry with no managed guest at either end is not ours"
        else:
            assert cut == (not nft_allows(tables, state, src, dst, proto, port)), (src.endpoint, dst.endpoint, proto)


def test_entries_we_cannot_judge_are_kept() -> None:
    ends = {"10.0.0.2": Endpoint(ip_address("10.0.0.2"), Labels({"zone": "db"}))}
    odd = [Entry("ipv4", "gre", 30, Tuple("10.0.0.1", "10.0.0.2"), Tuple("10.0.0.2", "10.0.0.1")),
           Entry("ipv4", "tcp", 30, Tuple("not-an-address", "10.0.0.2", (("dport", "80"),)), Tuple("a", "b")),
           Entry("ipv4", "tcp", 30, Tuple("10.0.0.1", "10.0.0.2", (("dport", "x"),)), Tuple("a", "b"))]
    assert denied(odd, ends, []) == []
    plain = Entry("ipv4", "tcp", 30, Tuple("10.0.0.1", "10.0.0.2", (("dport", "80"),)), Tuple("10.0.0.2", "10.0.0.1"))
    assert denied([plain], ends, []) == [plain]  # no policy: default deny
