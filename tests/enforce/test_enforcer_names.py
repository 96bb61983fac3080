"""Real nft 1.0.6 in a private network namespace: hostile port names never reach it.

Unchecked, `@x` and `a*` make the whole transaction fail (the host is frozen for every guest) and `*`
goes in as a wildcard matching every interface. Through the renderer's check, the transaction
applies, the hostile bindings are absent, and every other vNIC is bound."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.compile import HostPlan, compile_state
from guestward.dataplane import render_plan
from guestward.dataplane.diff import diff_objects
from guestward.dataplane.objects import NftObjects
from guestward.enforce import EnforceError, Enforcer, NftRunner
from guestward.model import Guest, Host, Interface, Inventory, Labels
from guestward.policy import parse_policies
from tests.enforce.conftest import netns  # noqa: F401  (the fixture)
from tests.model.test_ifname import hostile_ifnames

pytestmark = pytest.mark.nft

HOST = Host("hv1", "test:///default", ("uplink0",))
POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: p}
spec:
  tier: application
  rules:
    - {name: web, action: allow, from: {guests: {zone: lb}}, to: {guests: {zone: web}}, ports: [tcp/80]}
"""


def good_plan() -> HostPlan:
    guests = [Guest(f"g{i}", f"u{i}", "hv1", Labels({"zone": z}),
                    (Interface.of(f"52:54:00:00:00:0{i}", f"vnet{i}", [f"10.0.0.{i}"]),))
              for i, z in ((1, "lb"), (2, "web"))]
    return compile_state(Inventory((HOST,), tuple(guests)), parse_policies([("p.yaml", POLICY)])).hosts["hv1"]


def with_hostile(plan: HostPlan, ports: list[str]) -> HostPlan:
    vnics = dict(plan.vnics)
    for i, port in enumerate(ports):
        vnics[port] = replace(plan.vnics["vnet1"], port=port, mac=f"52:54:00:00:01:{i:02x}", guest=f"evil{i}")
    return replace(plan, vnics=vnics)


@pytest.mark.parametrize("port", ["@x", "a*"])
def test_unchecked_such_a_name_breaks_the_whole_transaction(netns: str, port: str) -> None:  # noqa: F811
    # What the renderer's check prevents: the same elements, added by hand.
    cmds = diff_objects(NftObjects(), render_plan(good_plan()))
    cmds = [{"add": {"table": {"family": f, "name": "guestward"}}} for f in ("bridge", "inet")] + cmds
    cmds.append({"add": {"element": {"family": "bridge", "table": "guestward", "name": "macs",
                                     "elem": [{"concat": [port, "52:54:00:00:01:00"]}]}}})
    with pytest.raises(EnforceError):
        NftRunner(netns).run_json(cmds)


def test_unchecked_a_star_is_a_wildcard(netns: str) -> None:  # noqa: F811
    subprocess.run(["ip", "netns", "exec", netns, "nft", "add table bridge t; add set bridge t s { type ifname; }; "
                    "add element bridge t s { * }"], check=True)
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "set", "bridge", "t", "s"],
                         capture_output=True, text=True, check=True).stdout
    assert "elements = { * }" in out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile_ifnames(), min_size=1, max_size=4, unique=True))
def test_hostile_bindings_are_left_out_and_every_other_vnic_is_enforced(netns: str, ports: list[str]) -> None:  # noqa: F811
    enforcer = Enforcer(NftRunner(netns))
    plan = with_hostile(good_plan(), ["@x", "a*", "*", *ports])
    enforcer.sync(plan)  # one transaction, applied: no name nft could misread was in it
    objects, missing = enforcer.read()
    assert missing == [] and objects.bound_ports() == {"vnet1", "vnet2"}
    assert {k for k, v in objects.elements[("bridge", "ports-in")].items()} == {"vnet1", "vnet2", "uplink0"}  # type: ignore[union-attr]
    assert enforcer.sync(plan).commands == 0  # and it stays in sync: nothing to redo every time
    assert enforcer.sync(good_plan()).commands == 0  # the same tables as without the hostile bindings
