"""The lock-free unbind on real nft in a private network namespace: it deletes exactly the bridge
elements of the guest's ports (and of ports carrying its MACs), never an uplink, and it interleaves
with a full diff in both orders without leaving the guest bound or the diff failed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.compile import compile_state
from guestward.dataplane import render_plan
from guestward.enforce import EnforceError, Enforcer, NftRunner
from guestward.enforce.unbind import Footprint, unbind
from guestward.model import Host, Inventory
from guestward.policy import parse_policies
from tests.enforce.hook_world import HOST, Dom, Nic, two_guests

pytestmark = pytest.mark.nft

POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: p}
spec:
  tier: baseline
  rules:
    - name: web-to-db
      action: allow
      from: {guests: {zone: web}}
      to: {guests: {zone: db}}
      ports: [tcp/5432]
"""
UPLINK = "uplink0"


def plan_of(doms: list[Dom]) -> Any:
    inv = Inventory((Host(HOST, "test:///default", (UPLINK,)),), tuple(d.guest() for d in doms))
    return compile_state(inv, parse_policies([("p.yaml", POLICY)])).hosts[HOST]


def bridge_elements(objects: Any) -> dict[str, Any]:
    return {name: objects.elements[(fam, name)] for (fam, name), s in objects.sets.items()
            if fam == "bridge" and not s.dynamic}


HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYP
@given(pair=two_guests(), xml_names_taps=st.booleans())
def test_unbind_deletes_exactly_the_guests_bridge_elements(netns: str, pair: tuple[Dom, Dom],
                                                          xml_names_taps: bool) -> None:
    x, w = pair
    enforcer = Enforcer(NftRunner(netns))
    enforcer.remove()
    enforcer.sync(plan_of([x, w]))
    # without tap names (an XML that lost them), the MACs still find x's ports
    fp = Footprint.of(x.guest()) if xml_names_taps else Footprint(frozenset(), Footprint.of(x.guest()).macs,
                                                                   Footprint.of(x.guest()).addresses)
    assert unbind(enforcer, fp) > 0
    objects, _ = enforcer.read()
    # the bridge table is exactly what a plan without x would have: w and the uplink untouched
    assert bridge_elements(objects) == bridge_elements(render_plan(plan_of([w])))
    dispatched = {str(k) for n in ("eg4", "in4", "eg6", "in6") for k in objects.elements[("inet", n)]}
    assert dispatched == {str(a) for n in w.nics for a in n.addresses}
    assert unbind(enforcer, fp) == 0  # nothing left: idempotent, no transaction


def test_an_xml_naming_an_uplink_or_another_guests_tap_never_unbinds_the_uplink(netns: str) -> None:
    w = Dom("w", (Nic("52:54:00:00:00:0c", "gt-w", ("10.0.0.12",)),))
    enforcer = Enforcer(NftRunner(netns))
    enforcer.sync(plan_of([w]))
    unbind(enforcer, Footprint(frozenset({UPLINK}), frozenset(), frozenset()))
    objects, _ = enforcer.read()
    assert objects.elements[("bridge", "ports-in")][UPLINK] == "goto:uplink-guard"


class Interleaving(NftRunner):
    """Real nft; before its first transaction commits, `meanwhile` runs (another process's commit)."""

    def __init__(self, netns: str, meanwhile: Any) -> None:
        super().__init__(netns)
        object.__setattr__(self, "meanwhile", [meanwhile])

    def run_payload(self, text: str) -> None:
        pending: list[Any] = self.meanwhile  # type: ignore[attr-defined]
        if pending:
            pending.pop()()
        super().run_payload(text)


def test_an_unbind_between_a_full_diffs_read_back_and_its_commit(netns: str) -> None:
    """The diff deletes an element the unbind already deleted: its transaction fails whole, and it is
    recomputed from a fresh read-back, so the kernel ends up holding exactly its plan."""
    x = Dom("x", (Nic("52:54:00:00:00:0a", "gt-x", ("10.0.0.10",)),))
    x2 = Dom("x", (Nic("52:54:00:00:00:0a", "gt-x", ("10.0.0.10", "10.0.0.20")),))  # x got an address
    w = Dom("w", (Nic("52:54:00:00:00:0c", "gt-w", ("10.0.0.12",)),), (("zone", "db"),))
    plain = Enforcer(NftRunner(netns))
    plain.sync(plan_of([x, w]))
    racing = Enforcer(Interleaving(netns, lambda: unbind(plain, Footprint.of(x.guest()))))
    desired = plan_of([w])  # the diff takes x away too (its snapshot says it stopped)
    result = racing.sync(desired)
    assert result.commands > 0
    objects, _ = plain.read()
    assert bridge_elements(objects) == bridge_elements(render_plan(desired))
    # and a diff whose plan still binds x (its snapshot predates the stop) binds it again: the stale
    # binding the hook's start check is there for (test_hook_fail_closed)
    racing = Enforcer(Interleaving(netns, lambda: unbind(plain, Footprint.of(x2.guest()))))
    racing.sync(plan_of([x2, w]))
    assert "gt-x" in plain.read()[0].bound_ports()


def test_a_full_diff_between_an_unbinds_read_and_its_commit(netns: str) -> None:
    """The unbind's read is stale: its transaction deletes an element already gone and fails whole;
    it reads again and deletes what is there, so nothing of x stays bound."""
    x = Dom("x", (Nic("52:54:00:00:00:0a", "gt-x", ("10.0.0.10", "fd00::10")),))
    w = Dom("w", (Nic("52:54:00:00:00:0c", "gt-w", ("10.0.0.12",)),), (("zone", "db"),))
    plain = Enforcer(NftRunner(netns))
    plain.sync(plan_of([x, w]))
    fewer = Dom("x", (Nic("52:54:00:00:00:0a", "gt-x", ("10.0.0.10",)),))  # the diff drops one address
    racing = Enforcer(Interleaving(netns, lambda: plain.sync(plan_of([fewer, w]))))
    assert unbind(racing, Footprint.of(x.guest())) > 0
    objects, _ = plain.read()
    assert bridge_elements(objects) == bridge_elements(render_plan(plan_of([w])))


def test_an_unbind_that_nft_keeps_refusing_raises_after_bounded_attempts(netns: str) -> None:
    x = Dom("x", (Nic("52:54:00:00:00:0a", "gt-x", ("10.0.0.10",)),))
    plain = Enforcer(NftRunner(netns))
    plain.sync(plan_of([x]))

    class Refusing(NftRunner):
        def run_payload(self, text: str) -> None:
            raise EnforceError("nft transaction failed: Error: Could not process rule: Device or resource busy")

    with pytest.raises(EnforceError, match="unbind failed 5 times"):
        unbind(Enforcer(Refusing(netns)), Footprint.of(x.guest()))
