"""A refused guest (`Guest.refusal`) gets no traffic and changes nothing for the others."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.compile import Compiler, compile_state
from guestward.model import Guest, Inventory, Labels
from guestward.model.inventory import Interface
from guestward.policy import Policy
from tests.compile.strategies import HOSTS, inventories, policy_sets
from tests.compile.test_compiler_properties import replay

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ports(g: Guest) -> set[tuple[str, str]]:
    return {(h, n.port) for h in g.hosts for n in g.interfaces_on(h) if n.port is not None} if g.active else set()


@st.composite
def refused_worlds(draw: st.DrawFn) -> tuple[list[Guest], set[str]]:
    guests = draw(inventories(max_guests=7))
    refused = {g.uuid for g in guests if draw(st.booleans())}
    return [replace(g, refusal="test: refused") if g.uuid in refused else g for g in guests], refused


@SETTINGS
@given(refused_worlds(), policy_sets())
def test_a_refused_guest_binds_nothing_and_others_are_bound_as_if_it_were_absent(
        world: tuple[list[Guest], set[str]], policies: list[Policy]) -> None:
    guests, refused = world
    state = compile_state(Inventory(HOSTS, tuple(guests)), policies)
    names = {g.name for g in guests if g.uuid in refused}
    their_ports = {p for g in guests if g.uuid in refused for p in ports(g)}
    for host, plan in state.hosts.items():
        assert not {b.guest for b in plan.vnics.values()} & names  # no traffic: nothing of theirs bound
        assert not {(host, p) for p in plan.vnics} & their_ports   # not even a tap they name too
    others = [g for g in guests if g.uuid not in refused]
    without = compile_state(Inventory(HOSTS, tuple(others)), policies)
    if not their_ports & {p for g in others for p in ports(g)}:
        # everything else exactly as if the refused guests did not exist (addresses, sets, chains)
        assert state == without
    else:
        # a tap name also claimed by a refused guest is bound to no one (fail closed); the rest holds
        for host, plan in state.hosts.items():
            kept = {p: b for p, b in without.hosts[host].vnics.items() if (host, p) not in their_ports}
            assert plan.vnics == kept


@SETTINGS
@given(inventories(min_guests=1, max_guests=6), policy_sets(), st.lists(st.integers(0, 5), max_size=8))
def test_refusing_and_accepting_again_incrementally_equals_from_scratch(
        guests: list[Guest], policies: list[Policy], flips: list[int]) -> None:
    compiler = Compiler(HOSTS, policies)
    compiler.upsert_guests(guests)
    current = {g.uuid: g for g in guests}
    for i in flips:
        g = guests[i % len(guests)]
        now = current[g.uuid]
        new = replace(now, refusal=None if now.refusal else f"refused {i}")
        before = compiler.state()
        replay(compiler, before, compiler.upsert_guest(new))
        current[g.uuid] = new
        assert compiler.state() == compile_state(Inventory(HOSTS, tuple(current.values())), policies)


def test_a_refused_guest_claims_no_address_so_it_cannot_take_one_from_another() -> None:
    web = Guest("web1", "u-web", "h1", Labels({"zone": "web"}),
                (Interface.of("52:54:00:00:00:01", "vnet1", ["10.0.0.1"]),))
    squatter = Guest("evil", "u-evil", "h1", Labels({"zone": "web"}),
                     (Interface.of("52:54:00:00:00:02", "vnet2", ["10.0.0.1"]),),
                     refusal="malformed guestward metadata: x")
    state = compile_state(Inventory(HOSTS, (web, squatter)), [])
    plan = state.hosts["h1"]
    assert set(plan.vnics) == {"vnet1"} and plan.vnics["vnet1"].addresses == web.addresses
    assert state.conflicts == ()
