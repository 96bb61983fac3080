"""The enforcer on real nftables, in a private network namespace.

Contracts (src/guestward/enforce/enforcer.py): one atomic transaction per change; only guestward's
own tables are touched; a read-back is diffed and only the difference applied; idempotent.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from guestward.compile import Compiler, HostPlan, compile_state
from guestward.enforce import EnforceError, Enforcer, NftRunner
from guestward.model import Guest, Host, Interface, Inventory, Labels
from guestward.policy import parse_policies

pytestmark = pytest.mark.nft

POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  tier: application
  rules:
    - {name: web-to-db, action: allow, from: {guests: {zone: web}}, to: {guests: {zone: db}}, ports: [tcp/5432]}
    - {name: admins, action: allow, from: {cidr: [192.0.2.0/24]}, to: {guests: {}}, ports: [tcp/22, icmp]}
"""
HOST = Host("hv1", "test:///default", ("uplink0",))


def guest(i: int, zone: str, host: str = "hv1") -> Guest:
    mac = f"52:54:00:00:00:{i:02x}"
    return Guest(f"g{i}", f"uuid-{i}", host, Labels({"zone": zone}),
                 (Interface.of(mac, f"gwt-g{i}", [f"10.0.0.{i}", f"fd00::{i:x}"]),))


def plan_of(guests: list[Guest]) -> HostPlan:
    state = compile_state(Inventory((HOST,), tuple(guests)), parse_policies([("p.yaml", POLICY)]))
    return state.hosts["hv1"]


def nft(netns: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *args], input=stdin, capture_output=True,
                          text=True, check=True).stdout


def test_sync_installs_the_plan_and_is_idempotent(netns: str) -> None:
    enforcer = Enforcer(NftRunner(netns))
    plan = plan_of([guest(1, "web"), guest(2, "db"), guest(3, "web")])
    first = enforcer.sync(plan)
    assert first.commands > 0
    text = enforcer.runner.text()
    for port in ("gwt-g1", "gwt-g2", "gwt-g3"):
        assert f'"{port}"' in text
    assert "10.0.0.2" in text and "fd00::2" in text
    assert enforcer.sync(plan).commands == 0
    assert enforcer.runner.text() == text


def test_other_tables_are_never_touched(netns: str) -> None:
    nft(netns, "-f", "-", stdin="table inet other {\n chain c {\n  type filter hook forward priority 0; policy drop;\n"
                                "  ip saddr 10.0.0.1 counter accept\n }\n}\n")
    other = nft(netns, "list", "table", "inet", "other")
    enforcer = Enforcer(NftRunner(netns))
    enforcer.sync(plan_of([guest(1, "web"), guest(2, "db")]))
    enforcer.sync(plan_of([guest(1, "db")]))
    enforcer.remove()
    assert nft(netns, "list", "table", "inet", "other") == other
    assert "guestward" not in nft(netns, "list", "tables")


def test_delta_equals_full_sync(netns: str) -> None:
    enforcer = Enforcer(NftRunner(netns))
    policies = parse_policies([("p.yaml", POLICY)])
    compiler = Compiler([HOST], policies)
    for g in (guest(1, "web"), guest(2, "db"), guest(3, "web")):
        compiler.upsert_guest(g)
    old = compiler.state().hosts["hv1"]
    enforcer.sync(old)
    for change in (lambda: compiler.upsert_guest(guest(4, "db")),
                   lambda: compiler.upsert_guest(replace(guest(1, "web"), labels=Labels({"zone": "db"}))),
                   lambda: compiler.remove_guest("uuid-2"),
                   lambda: compiler.upsert_guest(guest(5, "web", host="elsewhere"))):
        deltas = change()
        new = compiler.state().hosts["hv1"]
        if "hv1" in deltas:
            result = enforcer.apply_delta(old, deltas["hv1"])
            assert result.commands > 0
        # The kernel now holds exactly the new plan: a full diff against the read-back finds nothing.
        assert enforcer.sync(new).commands == 0
        old = new


def test_drift_is_repaired_with_only_the_difference(netns: str) -> None:
    enforcer = Enforcer(NftRunner(netns))
    plan = plan_of([guest(1, "web"), guest(2, "db")])
    enforcer.sync(plan)
    good = enforcer.runner.text()
    nft(netns, "delete", "element", "bridge", "guestward", "ports-in", '{ "gwt-g2" }')
    nft(netns, "flush", "chain", "bridge", "guestward", "src-guard")
    assert enforcer.runner.text() != good
    repair = enforcer.sync(plan)
    assert 0 < repair.commands <= 20  # the element and the chain, not the whole table
    assert enforcer.runner.text() == good


def test_failed_transaction_changes_nothing(netns: str) -> None:
    enforcer = Enforcer(NftRunner(netns))
    enforcer.sync(plan_of([guest(1, "web"), guest(2, "db")]))
    before = enforcer.runner.text()
    bad = [{"add": {"element": {"family": "bridge", "table": "guestward", "name": "ports-in",
                                "elem": [["gwt-g9", {"accept": None}]]}}},
           {"add": {"element": {"family": "bridge", "table": "guestward", "name": "no-such-set", "elem": ["x"]}}}]
    with pytest.raises(EnforceError):
        enforcer.runner.run_json(bad)
    assert enforcer.runner.text() == before


def test_tables_from_before_policy_drop_get_it_in_place(netns: str) -> None:
    from guestward.dataplane import diff_objects, render_plan
    from guestward.dataplane.objects import NftObjects

    plan = plan_of([guest(1, "web"), guest(2, "db")])
    old = render_plan(plan)
    for key, chain in list(old.chains.items()):
        if chain.hook:
            old.chains[key] = replace(chain, policy="accept")  # as every base chain was rendered before
    runner = NftRunner(netns)
    runner.run_json(diff_objects(NftObjects(), old, create_tables=True))
    assert "policy drop" not in nft(netns, "list", "ruleset")
    assert Enforcer(runner).sync(plan).commands == 3  # one `add chain` per base chain that fails closed now
    text = nft(netns, "list", "ruleset")
    assert text.count("policy drop;") == 3 and text.count("policy accept;") == 2  # inet input, output
    assert Enforcer(runner).sync(plan).commands == 0


def test_drop_logging_switched_on_and_off_in_place_converges(netns: str) -> None:
    from guestward.dataplane import Settings

    plan = plan_of([guest(1, "web"), guest(2, "db")])
    for settings in (Settings(log_group=None), Settings(log_group=7), Settings(log_group=None),
                     Settings(log_group=9, log_rate=1000, log_burst=7)):
        enforcer = Enforcer(NftRunner(netns), settings)
        assert enforcer.sync(plan).commands > 0
        assert enforcer.sync(plan).commands == 0, "the read-back of what was applied needs no change"
        text = "".join(enforcer.runner.run("nft", "list", "table", f, "guestward").stdout for f in ("bridge", "inet"))
        if settings.log_group is None:
            assert " log " not in text and "lim4" not in text
        else:
            assert f"group {settings.log_group}" in text
            assert f"limit rate {settings.log_rate}/second burst {settings.log_burst} packets" in text
            assert "flags dynamic,timeout" in text


def test_the_text_form_leaves_out_what_packets_put_in_the_limiters() -> None:
    from guestward.enforce.enforcer import without_dynamic_elements

    listing = ("table inet guestward {\n\tset lim4-20-20 {\n\t\ttype ipv4_addr\n\t\tsize 65536\n"
               "\t\tflags dynamic,timeout\n\t\ttimeout 1m\n\t\telements = { 10.0.0.1 limit rate 20/second,\n"
               "\t\t\t     10.0.0.2 limit rate 20/second }\n\t}\n\n\tset s-abc-4 {\n\t\ttype ipv4_addr\n"
               "\t\telements = { 10.0.0.1, 10.0.0.2 }\n\t}\n\n\tchain c {\n\t}\n}\n")
    got = without_dynamic_elements(listing)
    assert "limit rate" not in got and "timeout 1m" in got
    assert "\t\telements = { 10.0.0.1, 10.0.0.2 }\n" in got, "our own sets keep their elements"
    assert got == listing.replace("\t\telements = { 10.0.0.1 limit rate 20/second,\n"
                                  "\t\t\t     10.0.0.2 limit rate 20/second }\n", "")
