"""The renderer's own check: no port or MAC reaches nft unless nft can only read it as a literal.

A bug upstream (or a snapshot written before names were checked) must not become a set reference
(`@x`), a wildcard (`a*`, `*`) or a broken transaction: such a binding is left out (its port falls to
the bridge table's drop of unknown ports) and every other binding is rendered as before."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.compile import HostPlan
from guestward.compile.compiler import HostDelta
from guestward.compile.plan import VnicBinding
from guestward.dataplane import render_delta, render_plan
from tests.model.test_ifname import hostile_ifnames

GOOD = {f"vnet{i}": VnicBinding(f"vnet{i}", f"52:54:00:00:00:0{i}", f"g{i}", "ident", (ip_address(f"10.0.0.{i}"),))
        for i in range(1, 4)}
BAD_MACS = st.sampled_from(["@x", "52:54:00:00:00", "52:54:00:00:00:0g", "*", "52:54:00:00:00:01:02",
                            "52:54:00:00:00:1", "52:54:00:AA:00:01", "$m"])


def plan(vnics: dict[str, VnicBinding], uplinks: frozenset[str] = frozenset({"eno1"})) -> HostPlan:
    return HostPlan("hv1", uplinks, dict(vnics))


def strings(x: object) -> set[str]:
    """Every string in a JSON-like value (the names nft would read)."""
    if isinstance(x, str):
        return {x}
    if isinstance(x, dict):  # a match's operator ("==", "!=", ...) is nft syntax, not a name
        return {s for k, v in x.items() if k != "op" for s in (strings(k) | strings(v))}
    if isinstance(x, list | tuple | set | frozenset):
        return {s for v in x for s in strings(v)}
    return set()


@settings(max_examples=300)
@given(hostile_ifnames(), st.booleans())
def test_a_binding_with_a_hostile_port_is_left_out_and_the_others_kept(port: str, as_uplink: bool) -> None:
    want = render_plan(plan(GOOD))
    if as_uplink:
        got = render_plan(plan(GOOD, frozenset({"eno1", port})))
    else:
        got = render_plan(plan({**GOOD, port: VnicBinding(port, "52:54:00:00:00:09", "evil", "ident")}))
    assert got.elements == want.elements and got.sets == want.sets and got.chains == want.chains
    delta = HostDelta()
    delta.vnics[port] = VnicBinding(port, "52:54:00:00:00:09", "evil", "ident")
    assert render_delta(plan(GOOD), delta) == []  # nothing to send, rather than a name nft misreads
    delta.vnics["vnet9"] = VnicBinding("vnet9", "52:54:00:00:00:09", "g9", "ident")
    cmds = render_delta(plan(GOOD), delta)
    assert cmds and port not in strings(cmds) and "vnet9" in strings(cmds)


@given(BAD_MACS)
def test_a_binding_with_a_mac_that_is_not_six_lower_case_octets_is_left_out(mac: str) -> None:
    bad = replace(GOOD["vnet1"], mac=mac)
    got = render_plan(plan({**GOOD, "vnet1": bad}))
    want = render_plan(plan({p: b for p, b in GOOD.items() if p != "vnet1"}))
    assert got.elements == want.elements
    assert "vnet1" not in strings(list(got.elements.values()))
