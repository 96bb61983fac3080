"""The policy revision in the ct mark (dataplane/revision.py), in the pure model of the kernel (nft_eval).

For generated worlds and two generated policy sets (the old and the new): every flow's first packet
crosses the old tables and leaves its connection's ct mark on every host of ours on its way; then
- an original-direction packet of that connection crosses the new tables iff `decide` allows the
  flow under the new policies (a denied connection stops, an allowed one goes on, whatever rule
  allows it now), and it leaves the new revision in the mark;
- a reply-direction packet always crosses (it is never judged as if it were new);
- with the new tables equal to the old, the established packet takes the fast accept (no policy).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings

from guestward.compile import CompiledState, compile_state, decide
from guestward.dataplane import NftObjects, render_plan
from guestward.dataplane.render import Settings, revision
from guestward.dataplane.revision import DEFAULT_MASK, check_mask, plan_revision
from guestward.model import Guest, Host, Inventory
from guestward.policy import Policy
from tests.compile.builders import lab_example
from tests.compile.strategies import End, endpoints, flows, inventories, policy_sets
from tests.dataplane.nft_eval import Packet, cross_host_marked
from tests.dataplane.test_nft_eval import HOSTS, L4

Marks = dict[str, int]  # host -> the connection's ct mark there


def cross(tables: dict[str, NftObjects], state: CompiledState, src: End, dst: End, proto: str, port: int,
          marks: Marks, ct_state: str, direction: str = "original") -> tuple[bool, Marks]:
    """One packet of the flow src -> dst (a reply goes dst -> src) across every host of ours on its way,
    each with its own conntrack entry (`marks`); returns whether it got through and the marks after."""
    a, b = (src, dst) if direction == "original" else (dst, src)
    marks = dict(marks)

    def packet(iif: str, oif: str, host: str) -> Packet:
        return Packet(iif, oif, a.mac, a.endpoint.address, b.endpoint.address, L4[proto],
                      port if direction == "original" else 40000, ct_state=ct_state, ct_direction=direction,
                      ct_mark=marks.get(host, 0))

    def uplink(host: str) -> str:
        return sorted(state.hosts[host].uplinks)[0]

    hops: list[tuple[str, str, str]] = []
    if a.host is not None and a.host == b.host:
        assert a.port is not None and b.port is not None
        hops = [(a.host, a.port, b.port)]
    else:
        if a.host is not None:
            assert a.port is not None
            hops.append((a.host, a.port, uplink(a.host)))
        if b.host is not None:
            assert b.port is not None
            hops.append((b.host, uplink(b.host), b.port))
    for host, iif, oif in hops:
        ok, marks[host] = cross_host_marked(tables[host], packet(iif, oif, host))
        if not ok:
            return False, marks
    return True, marks


def check(guests: list[Guest], old: list[Policy], new: list[Policy], hosts: tuple[Host, ...] = HOSTS) -> int:
    inv = Inventory(hosts, tuple(guests))
    s1, s2 = compile_state(inv, old), compile_state(inv, new)
    t1 = {h: render_plan(p) for h, p in s1.hosts.items()}
    t2 = {h: render_plan(p) for h, p in s2.hosts.items()}
    rev2 = {h: revision(p, Settings()) for h, p in s2.hosts.items()}
    checked = 0
    for src, dst, proto, port in flows(endpoints(guests, s1)):
        first, marks = cross(t1, s1, src, dst, proto, port, {}, "new")
        assert first == decide(old, src.endpoint, dst.endpoint, proto, port).allowed
        if not first:
            continue
        want = decide(new, src.endpoint, dst.endpoint, proto, port)
        got, after = cross(t2, s2, src, dst, proto, port, marks, "established")
        assert got == want.allowed, (f"{src.endpoint} -> {dst.endpoint} {proto}/{port}: established packet "
                                     f"{'passed' if got else 'dropped'}, new policy: {want.explain()}")
        if got:
            for host, mark in after.items():
                assert mark & DEFAULT_MASK == rev2[host], f"{host}: the connection keeps a stale revision"
        reply, _ = cross(t2, s2, src, dst, proto, port, marks, "established", "reply")
        assert reply, f"{dst.endpoint} -> {src.endpoint}: a reply was dropped"
        checked += 1
    return checked


def test_lab_example_from_nothing_to_the_policy_and_back() -> None:
    hosts, guests, policies, _ = lab_example()
    half = policies[: len(policies) // 2]
    assert check(list(guests), policies, half, hosts) > 0 and check(list(guests), half, policies, hosts) > 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(max_guests=6, min_guests=2), policy_sets(max_policies=4), policy_sets(max_policies=4))
def test_established_connections_follow_the_new_policy(guests: list[Guest], old: list[Policy],
                                                        new: list[Policy]) -> None:
    check(guests, old, new)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(max_guests=6, min_guests=2), policy_sets(max_policies=4))
def test_an_unchanged_policy_keeps_the_revision_and_the_fast_accept(guests: list[Guest],
                                                                    policies: list[Policy]) -> None:
    inv = Inventory(HOSTS, tuple(guests))
    state = compile_state(inv, policies)
    again = compile_state(Inventory(HOSTS, tuple(reversed(guests))), list(reversed(policies)))
    tables = {h: render_plan(p) for h, p in state.hosts.items()}
    for h, plan in state.hosts.items():
        assert revision(plan, Settings()) == revision(again.hosts[h], Settings())
    for src, dst, proto, port in flows(endpoints(guests, state)):
        first, marks = cross(tables, state, src, dst, proto, port, {}, "new")
        if first:
            # with every rule past the fast accept removed, the established packet still passes
            fast = {h: _only_fast_accept(o) for h, o in tables.items()}
            assert cross(fast, state, src, dst, proto, port, marks, "established")[0]


def _only_fast_accept(o: NftObjects) -> NftObjects:
    out = NftObjects(o.table, dict(o.sets), dict(o.elements), dict(o.chains), o.families)
    chain = out.chains[("inet", "forward")]
    out.chains[("inet", "forward")] = replace(chain, rules=chain.rules[:1])
    return out


def test_revision_is_within_the_mask_never_zero_and_follows_every_verdict_input() -> None:
    hosts, guests, policies, _ = lab_example()
    state = compile_state(Inventory(hosts, tuple(guests)), policies)
    plan = next(p for p in state.hosts.values() if p.chains)
    rev = plan_revision(plan)
    assert rev and rev & ~DEFAULT_MASK == 0
    assert plan_revision(plan, 0xFF) & ~0xFF == 0
    changed = [
        replace(plan, chains={k: v for k, v in list(plan.chains.items())[1:]}),
        replace(plan, dispatch={k: v for k, v in list(plan.dispatch.items())[1:]}),
        replace(plan, sets={k: frozenset() for k in plan.sets}),
    ]
    for other in changed:
        assert plan_revision(other) != rev
    # what does not decide a verdict in the inet table (the bridge's vNIC bindings) keeps it
    assert plan_revision(replace(plan, vnics={})) == rev
    rendered = render_plan(plan).chains[("inet", "accepted")].rules[0].comment
    assert rendered.startswith(f"accepted: revision {revision(plan, Settings()):#x} ")


@pytest.mark.parametrize("mask", [0, 2**32, 0x0F0F0000, 0x7F, -1])
def test_a_bad_revision_mask_is_refused(mask: int) -> None:
    with pytest.raises(ValueError, match="revision mask"):
        check_mask(mask)
