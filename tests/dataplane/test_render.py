"""HostPlan -> nftables objects and commands: what is rendered, that diffs converge, that deltas stay small."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, ip_address
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.compile import Compiler, HostPlan, compile_state
from guestward.dataplane import NftObjects, diff_objects, render_delta, render_plan
from guestward.dataplane.render import link_local, nd_chain_name, set_name
from guestward.model import Guest, Host, Interface, Inventory, Labels
from guestward.policy import Policy
from tests.compile.builders import guest, lab_example, policy, rule
from tests.compile.strategies import HOSTS, guest_versions, policy_sets
from tests.dataplane import nft_sim
from tests.dataplane.nft_sim import NftError

BR, INET = "bridge", "inet"


def example_plans() -> dict[str, HostPlan]:
    hosts, guests, policies, _ = lab_example()
    return compile_state(Inventory(hosts, guests), policies).hosts


def references(o: NftObjects) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    sets: set[tuple[str, str]] = set()
    chains: set[tuple[str, str]] = set()
    for (family, _), c in o.chains.items():
        s, ch = nft_sim._refs([list(r.expr) for r in c.rules])
        sets |= {(family, x) for x in s}
        chains |= {(family, x) for x in ch}
    for (family, _), e in o.elements.items():
        if isinstance(e, dict):
            chains |= {(family, v[5:]) for v in e.values() if v.startswith("goto:")}
    return sets, chains


@pytest.mark.parametrize("host", ["hv1", "hv2"])
def test_render_plan_of_the_lab_example(host: str) -> None:
    plan = example_plans()[host]
    o = render_plan(plan)
    assert plan.vnics and plan.dispatch and plan.sets and plan.chains
    ports_in, ports_out = o.elements[(BR, "ports-in")], o.elements[(BR, "ports-out")]
    assert isinstance(ports_in, dict) and isinstance(ports_out, dict)
    # one binding per vNIC port, the uplinks to their guard (no local guest's address from there)
    assert ports_in == {**{p: "goto:src-guard" for p in plan.vnics},
                        **{u: "goto:uplink-guard" for u in plan.uplinks}}
    # every local guest's address (and its vNIC's link-local one) is refused as a source on the uplinks
    assert o.elements[(BR, "own4")] == {str(a) for b in plan.vnics.values() for a in b.addresses}
    assert o.elements[(BR, "own6")] == {str(link_local(b.mac)) for b in plan.vnics.values()}
    assert o.elements[(BR, "nd-ports")] == {b.port: f"goto:{nd_chain_name(b.port)}" for b in plan.vnics.values()}
    assert ports_out == {**{p: "goto:dst-guard" for p in plan.vnics}, **{u: "accept" for u in plan.uplinks}}
    assert o.elements[(BR, "macs")] == {(b.port, b.mac) for b in plan.vnics.values()}
    assert o.elements[(BR, "bind4")] == {(b.port, b.mac, str(a)) for b in plan.vnics.values() for a in b.addresses}
    assert o.elements[(BR, "dst4")] == {(b.port, str(a)) for b in plan.vnics.values() for a in b.addresses}
    assert o.elements[(BR, "bind6")] == set() and o.elements[(BR, "dst6")] == set()
    # dispatch: every local address to its identity's chains
    assert o.elements[(INET, "eg4")] == {str(a): f"goto:eg-{i}" for a, i in plan.dispatch.items()}
    assert o.elements[(INET, "in4")] == {str(a): f"goto:in-{i}" for a, i in plan.dispatch.items()}
    # one set per selector and address family, with the selected addresses
    selector_sets = {name for (f, name) in o.sets if name.startswith("s-")}
    assert selector_sets == {set_name(d, v) for d in plan.sets for v in (4, 6)}
    for d, members in plan.sets.items():
        assert o.elements[(INET, set_name(d, 4))] == {str(a) for a in members if isinstance(a, IPv4Address)}
    # one nft chain per planned chain, and every reference resolves
    assert {name for (f, name) in o.chains if f == INET} >= set(plan.chains)
    sets, chains = references(o)
    assert sets <= set(o.sets) and chains <= set(o.chains), (sets - set(o.sets), chains - set(o.chains))


def test_rendered_rule_comments_are_unique_within_a_chain() -> None:
    for plan in example_plans().values():
        for c in render_plan(plan).chains.values():
            comments = [r.comment for r in c.rules]
            # the comment is how diffs tell rules apart: two different rules must not share one
            by_comment: dict[str, Any] = {}
            for r in c.rules:
                assert by_comment.setdefault(r.comment, r.expr) == r.expr, (c.name, r.comment)
            assert comments


def test_a_rule_with_ports_of_several_protocols_becomes_one_rule_per_protocol_and_family() -> None:
    ps = [policy("p", "application", rule("mixed", "allow", {"zone": "web"}, None, ("tcp/80", "udp/53", "icmp",
                                                                                     "icmpv6")))]
    g = guest("web", "h1", {"zone": "web"}, "10.0.0.1", "fd00::1")
    plan = compile_state(Inventory((Host("h1", "x"),), (g,)), ps).hosts["h1"]
    o = render_plan(plan)
    eg = next(c for (f, n), c in o.chains.items() if n.startswith("eg-") and not n.endswith("-q"))
    mixed = [r for r in eg.rules if "/p/mixed" in r.comment]
    # v4: tcp, udp, icmp; v6: tcp, udp, icmpv6
    assert len(mixed) == 6
    assert eg.rules[-1].comment.startswith("default deny")


def test_diff_of_identical_objects_is_empty() -> None:
    for plan in example_plans().values():
        assert diff_objects(render_plan(plan), render_plan(plan)) == []
    assert diff_objects(NftObjects(), NftObjects()) == []


def test_diff_from_nothing_creates_exactly_the_desired_state() -> None:
    for plan in example_plans().values():
        desired = render_plan(plan)
        commands = diff_objects(NftObjects(), desired, create_tables=True)
        assert {"add": {"table": {"family": "bridge", "name": "guestward"}}} in commands
        assert nft_sim.apply(NftObjects(), commands) == desired


def test_diff_between_two_states_converges_in_both_directions() -> None:
    hosts, guests, policies, _ = lab_example()
    before = compile_state(Inventory(hosts, guests), policies).hosts
    changed = [dataclasses.replace(g, labels=g.labels.with_label("zone", "db")) if g.name == "web1" else g
               for g in guests if g.name != "mon1"]
    after = compile_state(Inventory(hosts, tuple(changed)), policies[1:]).hosts
    for h in before:
        a, b = render_plan(before[h]), render_plan(after[h])
        assert diff_objects(a, b), "the change must show"
        assert nft_sim.apply(a, diff_objects(a, b)) == b
        assert nft_sim.apply(b, diff_objects(b, a)) == a
        assert nft_sim.apply(NftObjects(), diff_objects(NftObjects(), a)) == a


def test_the_simulator_is_strict() -> None:
    o = render_plan(example_plans()["hv1"])
    with pytest.raises(NftError, match="missing element"):
        nft_sim.apply(o, [{"delete": {"element": {"family": "inet", "table": "guestward", "name": "eg4",
                                                  "elem": [["192.0.2.99", {"accept": None}]]}}}])
    chain = next(n for (f, n) in o.chains if n.startswith("eg-") and n.endswith("-q"))
    with pytest.raises(NftError, match=r"non-empty|in use"):
        nft_sim.apply(o, [{"delete": {"chain": {"family": "inet", "table": "guestward", "name": chain}}}])


# -- render_delta -------------------------------------------------------------------------------------------

def replay_render(old: HostPlan, delta: Any, new: HostPlan) -> list[dict[str, Any]]:
    """render_delta's commands, checked to take the rendered old plan to the rendered new plan."""
    commands = render_delta(old, delta)
    assert nft_sim.apply(render_plan(old), commands) == render_plan(new)
    return commands


def world(n: int) -> tuple[Compiler, list[Guest]]:
    ps = [policy("app", "application", rule("web-db", "allow", {"zone": "web"}, {"zone": "db"}, ("tcp/5432",)),
                 rule("lb-web", "allow", {"zone": "lb"}, {"zone": "web"}, ("tcp/80",))),
          policy("base", "baseline", rule("ping", "allow", None, None, ("icmp",)))]
    hosts = (Host("h1", "x", ("up",)), Host("h2", "y", ("up",)))
    zones = ("web", "db", "lb")
    guests = [Guest(f"g{i}", f"u{i:05}", hosts[i % 2].name, Labels({"zone": zones[i % 3]}),
                    (Interface.of(f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}", f"vnet{i}",
                                  [str(ip_address("10.1.0.0") + i + 1)]),))
              for i in range(n)]
    c = Compiler(hosts, ps)
    for g in guests:
        c.upsert_guest(g)
    return c, guests


def one_change_commands(n: int) -> list[int]:
    """Commands and elements that a few single-guest changes cost, in a world of n guests."""
    c, guests = world(n)
    counts = []
    g = guests[0]
    steps = [
        dataclasses.replace(g, labels=Labels({"zone": "db"})),  # relabel to an identity that exists
        dataclasses.replace(g, labels=Labels({"zone": "db", "new": "x"})),  # to a new identity
        dataclasses.replace(g, host="h2"),  # migrate
        None,  # remove
    ]
    for step in steps:
        before = c.state()
        deltas = c.upsert_guest(step) if step is not None else c.remove_guest(g.uuid)
        after = c.state()
        for h, d in deltas.items():
            commands = replay_render(before.hosts[h], d, after.hosts[h])
            counts.append(len(commands))
            counts.append(sum(len(x[next(iter(x))].get("element", {}).get("elem", [])) for x in commands))
    return counts


def test_render_delta_of_one_guest_does_not_grow_with_the_number_of_guests() -> None:
    small, large = one_change_commands(10), one_change_commands(1000)
    assert small == large
    assert sum(small) > 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_sets(), st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.data()), min_size=1, max_size=10))
def test_render_delta_replays_every_incremental_change(policies: list[Policy], ops: list[Any]) -> None:
    c = Compiler(HOSTS, policies)
    for upsert, index, data in ops:
        before = c.state()
        deltas = c.upsert_guest(data.draw(guest_versions(index))) if upsert else c.remove_guest(f"u{index}")
        after = c.state()
        for h in before.hosts:
            if h in deltas:
                replay_render(before.hosts[h], deltas[h], after.hosts[h])
            else:
                assert render_plan(before.hosts[h]) == render_plan(after.hosts[h])


# -- counters and the drop log ------------------------------------------------------------------------------

def _statements(expr: tuple[Any, ...]) -> list[str]:
    return [next(iter(e)) for e in expr if "match" not in e]


def test_every_rule_is_counted_and_every_drop_is_logged_first_with_the_same_matches() -> None:
    from guestward.dataplane.counters import drop_reason
    from guestward.dataplane.render import PREFIX_MAX, parse_prefix

    drops = 0
    for plan in example_plans().values():
        o = render_plan(plan)
        for (family, name), c in o.chains.items():
            for i, r in enumerate(c.rules):
                assert "counter" in _statements(r.expr), (name, r.comment)
                if _statements(r.expr)[-1:] != ["drop"]:
                    continue
                drops += 1
                matches = [e for e in r.expr if "match" in e]
                logs = []
                j = i - 1
                while j >= 0 and "log" in _statements(c.rules[j].expr):
                    logs.append(c.rules[j])
                    j -= 1
                assert logs, f"drop {r.comment} in {name} is not logged"
                for lr in logs:
                    assert [e for e in lr.expr if "match" in e][:len(matches)] == matches
                    assert _statements(lr.expr) == ["set", "counter", "log"]  # the limit, then count, then log
                    prefix = next(e["log"] for e in lr.expr if "log" in e)["prefix"]
                    assert len(prefix.encode()) <= PREFIX_MAX
                    parsed = parse_prefix(prefix)
                    assert parsed is not None and parsed[1] == name
                    assert parsed[0] == drop_reason(family, name, r.comment.rsplit(" #", 1)[0])
    assert drops >= 8


def test_without_a_log_group_drops_are_counted_but_not_logged() -> None:
    from guestward.dataplane import Settings

    o = render_plan(example_plans()["hv1"], Settings(log_group=None))
    assert not any("log" in _statements(r.expr) for c in o.chains.values() for r in c.rules)
    assert not any(s.dynamic for s in o.sets.values()), "limiter sets come and go with the log rules"
    assert all("counter" in _statements(r.expr) for c in o.chains.values() for r in c.rules)


def test_log_prefixes_are_bounded_and_printable_whatever_the_names() -> None:
    from guestward.dataplane.render import log_prefix, parse_prefix

    p = log_prefix("deny", "eg-0123456789", "application/" + "p" * 200 + '/"quoted"\n')
    assert len(p.encode()) == 127 and p.isprintable() and '"' not in p
    assert parse_prefix(p) == ("deny", "eg-0123456789", p.split(" ", 3)[3])
    assert parse_prefix("DROP r=6 ") is None and parse_prefix("gw nonsense x y") is None


def test_the_limiter_sets_are_dynamic_and_never_diffed() -> None:
    o = render_plan(example_plans()["hv1"])
    limiters = [s for s in o.sets.values() if s.dynamic]
    assert {(s.family, s.name) for s in limiters} == {(BR, "limport-20-20"), (INET, "lim4-20-20"), (INET, "lim6-20-20")}
    from guestward.dataplane import Settings
    other = render_plan(example_plans()["hv1"], Settings(log_rate=50))
    assert {s.name for s in other.sets.values() if s.dynamic} == {"limport-50-20", "lim4-50-20", "lim6-50-20"}
    listed = [nft_sim.list_table(o, BR), nft_sim.list_table(o, INET)]
    assert any("elem" in i.get("set", {}) for d in listed for i in d["nftables"] if i.get("set", {}).get("timeout"))
    from guestward.dataplane.readback import parse_tables
    assert diff_objects(parse_tables(listed), o) == [], "kernel-added limiter elements are not drift"


def test_an_own_address_two_vnics_share_stays_when_one_of_them_goes() -> None:
    """`own4`/`own6` are keyed by address: one guest's address on two vNICs, or two vNICs with one MAC
    (one link-local address), must stay refused on the uplinks while either vNIC remains."""
    two = Guest("g", "u", "h1", Labels({}), (Interface.of("52:54:00:00:00:01", "vnet0", ["10.0.0.1", "fd00::1"]),
                                             Interface.of("52:54:00:00:00:01", "vnet1", ["10.0.0.1"])))
    one = dataclasses.replace(two, interfaces=two.interfaces[:1])
    for first, second in ((two, one), (one, two)):
        c = Compiler(HOSTS)
        c.upsert_guest(first)
        before = c.state()
        deltas = c.upsert_guest(second)
        after = c.state()
        replay_render(before.hosts["h1"], deltas["h1"], after.hosts["h1"])
        own = render_plan(after.hosts["h1"])
        assert own.elements[("bridge", "own4")] == {"10.0.0.1"}
        assert own.elements[("bridge", "own6")] == {"fd00::1", str(link_local("52:54:00:00:00:01"))}
