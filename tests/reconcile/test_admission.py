"""What guestward believes of a guest read from its XML (reconcile/admission.py): quarantine from the
store whatever the XML says (fail closed both ways), refused addresses as findings, claims kept; and the
store's findings and quarantine tables that carry them."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.compile.address_trust import AddressTrust, Network
from guestward.model import QUARANTINE_LABEL, Interface
from guestward.reconcile.admission import admitted, inventory_findings
from guestward.store.sqlite import Finding, Store, guest_from_json, guest_to_json
from tests.compile.builders import guest, policy, rule

TRUST = AddressTrust((Network("lab", (ip_network("10.77.0.0/24"),), gateways=(ip_address("10.77.0.1"),)),))
WEB = guest("web1", "hv1", {"zone": "web"}, "10.77.0.11")


@settings(max_examples=40, deadline=None)
@given(in_store=st.booleans(), labelled=st.booleans(), active=st.booleans())
def test_quarantine_is_the_stores_and_a_label_alone_still_quarantines(in_store: bool, labelled: bool,
                                                                      active: bool) -> None:
    g = replace(WEB, active=active)
    if labelled:
        g = replace(g, labels=g.labels.with_label(*QUARANTINE_LABEL))
    store = {g.uuid: g.name} if in_store else {}
    out, found = admitted(g, None, 10.0, TRUST, store)
    assert out.labels.quarantined == (in_store or labelled)
    assert out.labels.without(QUARANTINE_LABEL[0]) == WEB.labels  # no other label changed
    kinds = [f.kind for f in found]
    expected = (["quarantine-label-missing"] if in_store and not labelled else []) + (
        ["quarantine-unconfirmed"] if labelled and not in_store else [])
    assert kinds == expected
    assert out.interfaces == WEB.interfaces  # its addresses untouched (all valid)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["10.77.0.1", "169.254.169.254", "10.99.0.5", "127.0.0.1", "224.0.0.5"]))
def test_a_refused_address_is_a_finding_and_is_not_claimed(hostile: str) -> None:
    nic = Interface.of(WEB.interfaces[0].mac, "tap-web1", ["10.77.0.11", hostile])
    g = replace(WEB, interfaces=(nic,))
    out, found = admitted(g, None, 10.0, TRUST, {})
    assert [(f.kind, f.detail["address"]) for f in found] == [("address-refused", hostile)]
    assert out.claimed == ((ip_address("10.77.0.11"), 10.0),)
    assert out.interfaces[0].refused[0][0] == ip_address(hostile)


def test_a_stopped_guest_keeps_its_claims_through_admission() -> None:
    running, _ = admitted(WEB, None, 10.0, TRUST, {})
    stopped, _ = admitted(replace(WEB, active=False), running, 20.0, TRUST, {})
    assert stopped.claimed == ((ip_address("10.77.0.11"), 10.0),)


def test_inventory_findings_report_cidr_peers_and_missing_networks() -> None:
    ps = [policy("p", "application", rule("admins", "allow", ["10.77.0.0/28"], {}, ("tcp/22",)))]
    found = inventory_findings([WEB], ps, TRUST)
    assert [(f.kind, f.subject, f.detail) for f in found] == [
        ("address-in-cidr-peer", "web1", {"address": "10.77.0.11", "policy": "p", "cidr": "10.77.0.0/28"})]
    assert [f.kind for f in inventory_findings([WEB], [], AddressTrust())] == ["networks-unconfigured"]


def test_store_keeps_current_findings_and_returns_each_new_one_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    a = Finding("address-refused", "web1", {"address": "10.77.0.1", "reason": "the gateway of network lab"})
    b = Finding("quarantine-unconfirmed", "db1", {"uuid": "u"})
    assert store.put_findings([a, b]) == [a, b]
    assert store.put_findings([a, b]) == []  # the same findings again: nothing new to record
    assert store.put_findings([a]) == []  # b is gone
    assert [f["kind"] for f in store.findings()] == ["address-refused"]
    assert store.put_findings([a, b]) == [b]  # b came back: new again
    assert store.findings("address-refused")[0]["reason"] == "the gateway of network lab"


def test_store_quarantine_and_refused_addresses_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.db")
    store.quarantine("u1", "web1", "incident 7")
    store.quarantine("u1", "web1", "again")  # idempotent
    assert store.quarantined() == {"u1": "web1"}
    assert store.release("u1") and not store.release("u1")
    assert store.quarantined() == {}
    nic = Interface.of(WEB.interfaces[0].mac, "t", ["10.77.0.11", "10.77.0.1"])
    out, _ = admitted(replace(WEB, interfaces=(nic,)), None, 1.0, TRUST, {})
    assert out.interfaces[0].refused
    assert guest_from_json(guest_to_json(out)) == out
