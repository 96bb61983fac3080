"""The rendered nftables tables, evaluated packet by packet (nft_eval.py), give `evaluate.decide`'s verdict.

This closes the loop from policy to kernel objects: compile -> render_plan -> the bridge guards, the
dispatch maps and the identity chains, for the first packet of every probe flow in generated worlds.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from guestward.compile import CompiledState, compile_state, decide
from guestward.dataplane import NftObjects, render_plan
from guestward.model import Guest, Host, Inventory
from guestward.policy import Policy
from tests.compile import plan_interpreter
from tests.compile.builders import lab_example
from tests.compile.strategies import End, endpoints, flows, inventories, policy_sets
from tests.dataplane.nft_eval import POLICY_REACHED, Packet, cross_host

HOSTS = tuple(Host(h, f"test:///{h}", (f"up-{h}",)) for h in ("h1", "h2", "h3"))
L4 = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp"}


def nft_allows(tables: dict[str, NftObjects], state: CompiledState, src: End, dst: End, proto: str,
               port: int) -> bool:
    """Whether the first packet of the flow crosses every host of ours on its way."""
    def packet(iif: str, oif: str) -> Packet:
        return Packet(iif, oif, src.mac, src.endpoint.address, dst.endpoint.address, L4[proto], port)

    def uplink(host: str) -> str:
        return sorted(state.hosts[host].uplinks)[0]

    assert src.port is not None or src.host is None
    if src.host is not None and src.host == dst.host:
        assert dst.port is not None and src.port is not None
        return cross_host(tables[src.host], packet(src.port, dst.port))
    if src.host is not None:
        assert src.port is not None
        if not cross_host(tables[src.host], packet(src.port, uplink(src.host))):
            return False
    if dst.host is not None:
        assert dst.port is not None
        return cross_host(tables[dst.host], packet(uplink(dst.host), dst.port))
    return True


def check(guests: list[Guest] | tuple[Guest, ...], policies: list[Policy], hosts: tuple[Host, ...] = HOSTS) -> int:
    state = compile_state(Inventory(hosts, tuple(guests)), policies)
    tables = {h: render_plan(plan) for h, plan in state.hosts.items()}
    POLICY_REACHED.clear()
    checked = 0
    for src, dst, proto, port in flows(endpoints(list(guests), state)):
        want = decide(policies, src.endpoint, dst.endpoint, proto, port)
        got = nft_allows(tables, state, src, dst, proto, port)
        if got != want.allowed:
            plans = plan_interpreter.flow(state, src.endpoint.address, src.host, dst.endpoint.address, dst.host,
                                          proto, port)
            raise AssertionError(
                f"{src.endpoint} ({src.endpoint.labels} on {src.host}) -> {dst.endpoint} ({dst.endpoint.labels} on "
                f"{dst.host}) {proto}/{port}: decide says {want.allowed} ({want.explain()}), the nft tables {got}; "
                f"the plans say {plans}")
        checked += 1
    # the base chains' `policy drop` (a flushed table fails closed) never decides a packet otherwise
    assert not POLICY_REACHED, f"packets fell through to a base chain's policy: {dict(POLICY_REACHED)}"
    return checked


def test_lab_example_tables_give_the_reference_verdicts() -> None:
    hosts, guests, policies, _ = lab_example()
    assert check(guests, policies, hosts) > 100


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(max_guests=7, min_guests=2), policy_sets(max_policies=5))
def test_rendered_tables_give_the_reference_verdicts(guests: list[Guest], policies: list[Policy]) -> None:
    check(guests, policies)
