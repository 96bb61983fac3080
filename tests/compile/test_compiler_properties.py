"""Properties of the compiler over small generated worlds (see strategies.py).

(a) the result does not depend on the order of policies, guests or hosts;
(b) incremental updates, in any order, end where a from-scratch compile ends, and each returned delta
    replayed on the previous plan gives the next plan;
(c) an address claimed by two active guests is in no set, binding or dispatch entry, and is reported;
(d) the data plane's verdict, interpreted from the compiled plans only, is `evaluate.decide`'s verdict.
"""

from __future__ import annotations

import random
from collections import defaultdict
from ipaddress import IPv4Address

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from guestward.compile import CompiledState, Compiler, HostPlan, compile_state, decide
from guestward.compile.plan import IPAddress
from guestward.model import Guest, Inventory
from guestward.policy import Policy
from tests.compile import plan_interpreter
from tests.compile.strategies import (
    HOSTS,
    contested_ports,
    endpoints,
    flows,
    guest_versions,
    inventories,
    policy_sets,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def copy_plan(p: HostPlan) -> HostPlan:
    return HostPlan(p.host, p.uplinks, dict(p.vnics), dict(p.dispatch), dict(p.chains), dict(p.sets))


def compiled(guests: list[Guest], policies: list[Policy], hosts: tuple = HOSTS) -> CompiledState:
    return compile_state(Inventory(tuple(hosts), tuple(guests)), policies)


# -- (a) order independence --------------------------------------------------------------------------------

@SETTINGS
@given(inventories(), policy_sets(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_input_order(guests: list[Guest], policies: list[Policy],
                                               rnd: random.Random) -> None:
    reference = compiled(guests, policies)
    for _ in range(3):
        g, p, h = guests[:], policies[:], list(HOSTS)
        rnd.shuffle(g)
        rnd.shuffle(p)
        rnd.shuffle(h)
        assert compiled(g, p, tuple(h)) == reference


# -- (b) incremental == from scratch, and deltas replay ---------------------------------------------------

@st.composite
def change_sequences(draw: st.DrawFn) -> tuple[list[Policy], list[tuple[str, object]]]:
    policies = draw(policy_sets())
    ops: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["upsert", "upsert", "upsert", "remove", "policies", "batch"]))
        index = draw(st.integers(0, 4))
        if kind == "upsert":
            ops.append(("upsert", draw(guest_versions(index))))
        elif kind == "batch":
            ops.append(("batch", [draw(guest_versions(i)) for i in draw(st.lists(st.integers(0, 4), max_size=4))]))
        elif kind == "remove":
            ops.append(("remove", f"u{index}"))
        else:
            ops.append(("policies", draw(policy_sets())))
    return policies, ops


def replay(compiler: Compiler, before: CompiledState, deltas: dict) -> None:  # type: ignore[type-arg]
    after = compiler.state()
    assert set(deltas) <= set(after.hosts)
    for name, plan in before.hosts.items():
        replayed = copy_plan(plan)
        if name in deltas:
            assert deltas[name], "an empty delta is returned only when nothing changed"
            deltas[name].apply_to(replayed)
        assert replayed == after.hosts[name], f"delta for {name} does not replay to the new plan"


@SETTINGS
@given(change_sequences(), st.randoms(use_true_random=False))
def test_incremental_updates_equal_from_scratch_and_deltas_replay(
        case: tuple[list[Policy], list[tuple[str, object]]], rnd: random.Random) -> None:
    policies, ops = case
    compiler = Compiler(HOSTS, policies)
    current: dict[str, Guest] = {}
    for kind, arg in ops:
        before = compiler.state()
        if kind == "upsert":
            assert isinstance(arg, Guest)
            deltas = compiler.upsert_guest(arg)
            current[arg.uuid] = arg
        elif kind == "batch":
            assert isinstance(arg, list)
            deltas = compiler.upsert_guests(arg)
            current.update({g.uuid: g for g in arg})  # the last version of a uuid wins
        elif kind == "remove":
            assert isinstance(arg, str)
            deltas = compiler.remove_guest(arg)
            current.pop(arg, None)
        else:
            assert isinstance(arg, list)
            deltas = {h: d for h, d in compiler.set_policies(arg).items() if d}
            policies = arg
        replay(compiler, before, deltas)
        assert compiler.state() == compiled(list(current.values()), policies)
    # the same final inputs, given in another order, to a fresh compiler
    final = list(current.values())
    rnd.shuffle(final)
    fresh = Compiler(HOSTS, [])
    for g in final:
        fresh.upsert_guest(g)
    fresh.set_policies(policies)
    assert fresh.state() == compiler.state()
    assert fresh.guests == sorted(current.values(), key=lambda g: g.uuid)


# -- (c) conflicts fail closed and are reported -----------------------------------------------------------

@SETTINGS
@given(inventories(), policy_sets())
def test_conflicting_addresses_belong_to_nobody(guests: list[Guest], policies: list[Policy]) -> None:
    state = compiled(guests, policies)
    claims: dict[IPAddress, set[str]] = defaultdict(set)
    for g in guests:
        if g.active:
            for a in g.addresses:
                claims[a].add(g.name)
    conflicted = {a for a, names in claims.items() if len(names) > 1}
    owned = {a for a, names in claims.items() if len(names) == 1}
    assert {c.address: set(c.guests) for c in state.conflicts} == {a: claims[a] for a in conflicted}
    assert all(list(c.guests) == sorted(c.guests) for c in state.conflicts)
    for plan in state.hosts.values():
        in_sets = set().union(*plan.sets.values()) if plan.sets else set()
        bound = {a for b in plan.vnics.values() for a in b.addresses}
        assert not (in_sets | bound | set(plan.dispatch)) & conflicted
        assert in_sets | bound | set(plan.dispatch) <= owned  # and inactive guests' addresses are nowhere
    # an owned address of an active guest on a known host, on a vNIC with a port of its own, is bound
    # there; a port that two guests name is bound to neither
    contested = contested_ports(guests)
    for host, port in contested:
        if host in state.hosts:
            assert port not in state.hosts[host].vnics
    for g in guests:
        if g.active and g.host in state.hosts:
            for nic in g.interfaces:
                if nic.port is not None and (g.host, nic.port) not in contested:
                    binding = state.hosts[g.host].vnics[nic.port]
                    assert (binding.guest, binding.mac) == (g.name, nic.mac)
                    assert set(binding.addresses) == set(nic.addresses) & owned
                    assert all(state.hosts[g.host].dispatch[a] == binding.identity for a in binding.addresses)


def test_a_conflict_resolves_when_one_claimant_goes() -> None:
    from tests.compile.builders import guest

    a = guest("a", "h1", {"zone": "web"}, "10.0.0.1")
    b = guest("b", "h2", {"zone": "web"}, "10.0.0.1")
    c = Compiler(HOSTS, [])
    c.upsert_guest(a)
    assert c.state().hosts["h1"].vnics["tap-a"].addresses == (IPv4Address("10.0.0.1"),)
    deltas = c.upsert_guest(b)
    s = c.state()
    assert [(x.address, x.guests) for x in s.conflicts] == [(IPv4Address("10.0.0.1"), ("a", "b"))]
    assert "claimed by a, b" in str(s.conflicts[0])
    assert s.hosts["h1"].vnics["tap-a"].addresses == () and s.hosts["h2"].vnics["tap-b"].addresses == ()
    assert deltas["h1"].dispatch == {IPv4Address("10.0.0.1"): None}  # the first owner loses it
    c.remove_guest(b.uuid)
    s = c.state()
    assert s.conflicts == () and s.hosts["h1"].vnics["tap-a"].addresses == (IPv4Address("10.0.0.1"),)
    # a stopped claimant claims nothing
    c.upsert_guest(Guest(b.name, b.uuid, b.host, b.labels, b.interfaces, active=False))
    assert c.state().conflicts == ()


# -- (d) the data plane agrees with the reference verdict -------------------------------------------------

def check_flows(guests: list[Guest], policies: list[Policy], state: CompiledState) -> int:
    checked = 0
    for src, dst, proto, port in flows(endpoints(guests, state)):
        want = decide(policies, src.endpoint, dst.endpoint, proto, port)
        got = plan_interpreter.flow(state, src.endpoint.address, src.host, dst.endpoint.address, dst.host, proto, port)
        event(f"flow {'allowed' if want.allowed else 'blocked'} at {got.where or 'nowhere'}")
        assert got.allowed == want.allowed, (
            f"{src.endpoint} ({src.endpoint.labels}) -> {dst.endpoint} ({dst.endpoint.labels}) {proto}/{port}: "
            f"decide says {want.allowed} ({want.explain()}), the data plane {got}")
        checked += 1
    return checked


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(max_guests=8, min_guests=3), policy_sets(max_policies=5))
def test_data_plane_verdict_equals_reference_verdict(guests: list[Guest], policies: list[Policy]) -> None:
    check_flows(guests, policies, compiled(guests, policies))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(change_sequences())
def test_data_plane_verdict_after_incremental_changes(case: tuple[list[Policy], list[tuple[str, object]]]) -> None:
    policies, ops = case
    compiler = Compiler(HOSTS, policies)
    current: dict[str, Guest] = {}
    for kind, arg in ops:
        if kind == "upsert":
            assert isinstance(arg, Guest)
            compiler.upsert_guest(arg)
            current[arg.uuid] = arg
        elif kind == "batch":
            assert isinstance(arg, list)
            compiler.upsert_guests(arg)
            current.update({g.uuid: g for g in arg})
        elif kind == "remove":
            assert isinstance(arg, str)
            compiler.remove_guest(arg)
            current.pop(arg, None)
        else:
            assert isinstance(arg, list)
            compiler.set_policies(arg)
            policies = arg
    check_flows(list(current.values()), policies, compiler.state())
