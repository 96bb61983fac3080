"""Reading our tables back from `nft -j list table` output gives the objects that were rendered."""

from __future__ import annotations

from guestward.compile import compile_state
from guestward.dataplane import NftObjects, diff_objects, render_plan
from guestward.dataplane.readback import parse_tables
from guestward.model import Guest, Host, Interface, Inventory, Labels
from tests.compile.builders import lab_example, policy, rule
from tests.dataplane.nft_sim import list_table


def round_trip(o: NftObjects) -> NftObjects:
    return parse_tables([list_table(o, "bridge"), list_table(o, "inet")])


def test_round_trip_of_the_lab_example() -> None:
    hosts, guests, policies, _ = lab_example()
    for plan in compile_state(Inventory(hosts, guests), policies).hosts.values():
        desired = render_plan(plan)
        back = round_trip(desired)
        assert back.sets == desired.sets
        assert back.elements == desired.elements
        assert back.chains == desired.chains
        # per chain (nft lists chains in its own order; rules within one keep theirs)
        assert {k: [r.expr for r in c.rules] for k, c in back.chains.items()} == {
            k: [r.expr for r in c.rules] for k, c in desired.chains.items()}
        assert diff_objects(back, desired) == []


def test_round_trip_with_ipv6_concatenations_and_port_names_as_libvirt_allows() -> None:
    ps = [policy("p", "application", rule("r", "allow", {"zone": "web"}, {"zone": "db"}, ("tcp/80", "icmpv6")))]
    guests = (
        Guest("web", "u1", "h1", Labels({"zone": "web"}),
              (Interface.of("52:54:00:AB:CD:EF", "Web-Tap0", ["10.0.0.1", "FD00::0001"]),)),
        Guest("db", "u2", "h1", Labels({"zone": "db"}), (Interface.of("52:54:00:00:00:02", "vnet1", ["fd00::2"]),)),
    )
    plan = compile_state(Inventory((Host("h1", "x", ("eth-Up",)),), guests), ps).hosts["h1"]
    desired = render_plan(plan)
    back = round_trip(desired)
    assert back.elements == desired.elements
    assert diff_objects(back, desired) == [], "a read-back of what was applied must need no change"


def test_other_tables_and_unknown_items_are_ignored_and_element_forms_are_read() -> None:
    doc = {"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "inet", "name": "guestward", "handle": 1}},
        {"set": {"family": "inet", "name": "other", "table": "firewalld", "type": "ipv4_addr", "elem": ["1.2.3.4"]}},
        {"set": {"family": "inet", "name": "s-x-4", "table": "guestward", "type": "ipv4_addr", "handle": 2,
                 "elem": ["10.0.0.1", {"elem": {"val": "10.0.0.2", "counter": {"packets": 0, "bytes": 0}}}]}},
        {"map": {"family": "inet", "name": "eg4", "table": "guestward", "type": "ipv4_addr", "map": "verdict",
                 "handle": 3, "elem": [["10.0.0.1", {"goto": {"target": "eg-abc"}}], ["10.0.0.2", {"drop": None}]]}},
        {"chain": {"family": "inet", "table": "guestward", "name": "forward", "handle": 4, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "guestward", "chain": "forward", "handle": 5, "comment": "c #1",
                  "expr": [{"accept": None}]}},
    ]}
    o = parse_tables([doc])
    assert set(o.sets) == {("inet", "s-x-4"), ("inet", "eg4")}
    assert o.elements[("inet", "s-x-4")] == {"10.0.0.1", "10.0.0.2"}
    assert o.elements[("inet", "eg4")] == {"10.0.0.1": "goto:eg-abc", "10.0.0.2": "drop"}
    chain = o.chains[("inet", "forward")]
    assert (chain.hook, chain.priority, [r.comment for r in chain.rules]) == ("forward", 0, ["c #1"])
