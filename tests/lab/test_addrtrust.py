"""Addresses and quarantine are not self-asserted (docs/SECURITY.md), on the real lab.

- web1's XML claims the gateway, the metadata address, an out-of-range address and a host's address
  besides its own: each is refused and reported (events, store findings), none is bound on hv1, and
  every flow of the truth table (tests/lab/test_enforcement.py) stays as it was.
- a quarantined guest whose label is removed from its XML by libvirt's setMetadata stays quarantined
  (probed), and the missing mirror is reported; `guestward release` releases it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestward.enforce import NftRunner
from guestward.hypervisor import domains
from guestward.lab.lab import Flow, Lab
from guestward.policy import parse_port
from guestward.store.sqlite import Store
from tests.conftest import guestward
from tests.lab.test_enforcement import expected

pytestmark = pytest.mark.lab

# Flows that tell quarantine apart (only the quarantine tier's udp/53 to dns is left), and none of
# web1 -> db1 tcp/5432: tests/lab/test_flows.py expects that allowed flow never to be in the drop log.
FLOWS = [Flow("lb1", "web1", parse_port("tcp/443")), Flow("web1", "dns1", parse_port("udp/53")),
         Flow("web1", "dns1", parse_port("tcp/53"))]
NORMAL, QUARANTINED = [True, True, True], [False, True, False]


def verdicts(lab: Lab) -> list[bool]:
    results = lab.probe(FLOWS)
    return [results[f] for f in FLOWS]

HOSTILE = {"10.77.0.1": "the gateway of network lab", "169.254.169.254": "link-local",
           "10.99.0.5": "outside every configured network",
           "10.77.0.254": "an address of host hv1", "10.77.0.253": "an address of host hv2",
           "10.77.0.250": "reserved in network lab"}


def events(kind: str) -> list[dict[str, object]]:
    r = guestward("events", "--kind", kind, "--json", "--limit", "1000")
    assert r.returncode == 0, r.stderr
    out: list[dict[str, object]] = json.loads(r.stdout)
    return out


def bound_on(lab: Lab, host: str) -> set[tuple[str, str]]:
    """(port, address) of every element of the host's bind4 set, read from the kernel."""
    r = NftRunner(lab.controller().config.host(host).netns).run("nft", "-j", "list", "set", "bridge", "guestward",
                                                                "bind4")
    assert r.returncode == 0, r.stderr
    (s,) = [x["set"] for x in json.loads(r.stdout)["nftables"] if "set" in x]
    return {(e["concat"][0], e["concat"][2]) for e in s.get("elem", [])}


def test_hostile_address_claims_are_refused_reported_and_the_truth_table_holds(lab: Lab) -> None:
    uri = lab.uri("hv1")
    mac = lab.scenario().guest("web1").mac
    original = [(mac, "10.77.0.11")]
    domains.set_addresses(uri, "web1", [*original, *((mac, a) for a in HOSTILE)])
    try:
        r = guestward("sync")
        assert r.returncode == 0, r.stderr
        for a in HOSTILE:
            assert f"web1: address {a}" in r.stderr
        refused = {(e["subject"], e["address"], e["reason"]) for e in events("address-refused")}
        assert {("web1", a, why) for a, why in HOSTILE.items()} <= refused
        store = Store(Path(lab.controller().config.state_dir) / "guestward.db")
        current = {(f["address"], f["reason"]) for f in store.findings("address-refused") if f["subject"] == "web1"}
        assert current == set(HOSTILE.items())
        (nic,) = next(g for g in lab.controller().inventory().guests if g.name == "web1").interfaces
        assert [str(a) for a in nic.addresses] == ["10.77.0.11"]
        web1 = {a for port, a in bound_on(lab, "hv1") if port == lab.scenario().guest("web1").tap}
        assert web1 == {"10.77.0.11"}
        probe = guestward("lab", "probe", "--all", "--json")
        assert probe.returncode == 0, probe.stderr
        measured = {(x["src"], x["dst"], x["port"]): x["verdict"] == "allowed" for x in json.loads(probe.stdout)}
        flows = lab.all_flows()
        wrong = [str(f) for f in flows if measured[(f.src, f.dst, str(f.port))] != expected(f)]
        assert not wrong, "with hostile claims, real packets disagree with the truth table:\n" + "\n".join(wrong)
    finally:
        domains.set_addresses(uri, "web1", original)
        assert guestward("sync").returncode == 0


def test_quarantine_survives_removing_the_label_from_the_xml(lab: Lab) -> None:
    assert verdicts(lab) == NORMAL
    r = guestward("quarantine", "web1", "--reason", "test: label removal")
    assert r.returncode == 0, r.stderr
    try:
        # Whoever can write the XML removes the label (virsh metadata / setMetadata), then a sync runs.
        assert domains.set_label(lab.uri("hv1"), "web1", "guestward.dev/quarantine", None)
        assert "guestward.dev/quarantine" not in domains.live_xml(lab.uri("hv1"), "web1")
        assert guestward("sync").returncode == 0
        assert verdicts(lab) == QUARANTINED  # still quarantined: quarantine tier only
        assert any(e["subject"] == "web1" for e in events("quarantine-label-missing"))
    finally:
        r = guestward("release", "web1")
        assert r.returncode == 0, r.stderr
    assert verdicts(lab) == NORMAL


def test_a_stopped_guests_address_is_not_taken_by_a_guest_that_declares_it(lab: Lab) -> None:
    """web1 stops; web2 (on the other host) then declares web1's address too: it does not get it."""
    sc = lab.scenario()
    web2_uri, web2_mac, web2_tap = lab.uri("hv2"), sc.guest("web2").mac, sc.guest("web2").tap
    lab.stop("web1")
    try:
        assert guestward("sync").returncode == 0
        domains.set_addresses(web2_uri, "web2", [(web2_mac, "10.77.0.12"), (web2_mac, "10.77.0.11")])
        r = guestward("sync")
        assert r.returncode == 0, r.stderr
        assert "address 10.77.0.11 claimed by web1, web2: web1 keeps it" in r.stderr, r.stderr
        assert {a for port, a in bound_on(lab, "hv2") if port == web2_tap} == {"10.77.0.12"}
        assert not any(a == "10.77.0.11" for _, a in bound_on(lab, "hv1") | bound_on(lab, "hv2"))
    finally:
        domains.set_addresses(web2_uri, "web2", [(web2_mac, "10.77.0.12")])
        assert guestward("sync").returncode == 0
        lab.start("web1")
        assert guestward("sync").returncode == 0
    assert {a for port, a in bound_on(lab, "hv1") if port == sc.guest("web1").tap} == {"10.77.0.11"}
    assert verdicts(lab) == NORMAL
