"""A guest refused at one end of a migration is refused at both: no end binds it."""

from __future__ import annotations

from dataclasses import replace

from guestward.compile import compile_state
from guestward.hypervisor.inventory import merge_copies
from guestward.model import Host, Interface, Inventory
from guestward.reconcile.hook import joined
from tests.compile.builders import guest

HOSTS = (Host("h1", "test:///h1"), Host("h2", "test:///h2"))
WEB = guest("web", "h1", {"zone": "web"}, "10.0.0.1")
MAC = WEB.interfaces[0].mac
SOURCE = replace(WEB, interfaces=(Interface.of(MAC, "vnet3", ["10.0.0.1"]),))
# the destination's XML names the tap "@x": domain_xml refused it and kept no port
DEST = replace(WEB, host="h2", interfaces=(Interface.of(MAC, None, ["10.0.0.1"]),),
               refusal="vNIC x: port name '@x' is not a plain interface name")


def bound(g: object) -> dict[str, set[str]]:
    state = compile_state(Inventory(HOSTS, (g,)), [])  # type: ignore[arg-type]
    return {h: set(p.vnics) for h, p in state.hosts.items()}


def test_copies_merge_refused_when_either_end_is() -> None:
    for copies in ([(SOURCE, True), (DEST, False)], [(DEST, False), (SOURCE, True)]):
        g = merge_copies(copies)
        assert g.refusal == "on h2: vNIC x: port name '@x' is not a plain interface name"
        assert bound(g) == {"h1": set(), "h2": set()}
    assert merge_copies([(SOURCE, True), (replace(DEST, refusal=None), False)]).refusal is None


def test_the_hook_keeps_a_refusal_from_either_end() -> None:
    arriving = joined(SOURCE, DEST, "h2", 5.0)
    assert arriving.refusal == DEST.refusal and arriving.hosts == ("h1", "h2")
    assert bound(arriving) == {"h1": set(), "h2": set()}
    refused_source = replace(SOURCE, refusal="malformed guestward metadata: x")
    back = joined(refused_source, replace(DEST, refusal=None, interfaces=SOURCE.interfaces), "h2", 6.0)
    assert back.refusal == "malformed guestward metadata: x" and bound(back) == {"h1": set(), "h2": set()}
