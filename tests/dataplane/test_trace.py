"""`nft monitor trace` lines -> what our tables did to each packet, on real output (captured/README.md)."""

from __future__ import annotations

from pathlib import Path

from guestward.dataplane.trace import PacketTrace, packet_fields, parse_traces

CAPTURED = Path(__file__).parent / "captured" / "nft_trace.txt"


def traces() -> dict[str, PacketTrace]:
    return {t.id: t for t in parse_traces(CAPTURED.read_text().splitlines())}


def test_one_trace_per_packet_with_its_flow() -> None:
    found = traces()
    assert len(found) == 7
    syn = found["e4b9e1d8"].packet
    assert (syn["iif"], syn["ip saddr"], syn["ip daddr"], syn["ip protocol"], syn["tcp dport"], syn["tcp flags"]) == (
        "gwt-g1", "10.0.0.1", "10.0.0.2", "tcp", "5432", "syn")
    assert found["5704185a"].packet["icmp type"] == "echo-request"
    assert found["b0264777"].packet["udp dport"] == "53"


def test_an_allowed_flow_names_the_rule_at_both_ends() -> None:
    t = traces()["e4b9e1d8"]
    assert t.verdict == "accept"
    assert t.egress is not None and t.egress.label == "application/shop/web-to-db"
    assert t.egress.verdict == "goto ingress" and t.egress.chain.startswith("eg-")
    assert t.ingress is not None and t.ingress.label == "application/shop/web-to-db" and t.ingress.verdict == "accept"
    assert t.decided_by == "application/shop/web-to-db"
    assert t.lines()[0] == "bridge prerouting: dispatch: vNIC -> src-guard, uplink -> accept -> goto src-guard"
    assert not any("gwtrace" in line or "nftrace" in line for line in t.lines())  # the trace table is not ours


def test_blocked_flows_name_the_dropping_rule() -> None:
    found = traces()
    for tid in ("68fe2a89", "5704185a", "b0264777"):  # tcp, icmp, udp: no rule allows them
        t = found[tid]
        assert (t.verdict, t.decided_by) == ("drop", "default deny"), tid
        assert t.ingress is None and t.egress is not None and t.egress.verdict == "drop"


def test_spoof_and_unknown_ports_are_named_as_such() -> None:
    found = traces()
    spoof = found["c9882b4d"]
    assert spoof.packet["ip saddr"] == "10.0.0.9"
    assert (spoof.verdict, spoof.decided_by) == ("drop", "spoof: source address not bound, or not ip/arp")
    assert spoof.egress is None
    assert found["98f5fe0e"].decided_by == "unknown port: fail closed"
    assert found["ea6762b0"].decided_by == "not for this vNIC's addresses"


def test_a_base_chain_policy_drop_is_reported_and_garbage_ignored() -> None:
    lines = ['trace id 1 bridge guestward prerouting packet: iif "x" ip saddr 1.1.1.1',
             "trace id 1 bridge guestward prerouting policy drop ", "no trace here", ""]
    (t,) = parse_traces(lines)
    assert (t.verdict, t.decided_by) == ("drop", "prerouting: policy drop")
    assert parse_traces(["trace id 2 inet other forward rule accept (verdict accept)"])[0].decided_by == (
        "not seen by guestward's tables")
    assert packet_fields('iif "a" oif "b" ip saddr 1.2.3.4 tcp flags == syn') == {
        "iif": "a", "oif": "b", "ip saddr": "1.2.3.4", "tcp flags": "syn"}


def test_a_flow_gets_its_first_packet_on_the_ports_of_its_ends() -> None:
    from guestward.dataplane.trace import flow_trace, of_flow

    all_traces = list(traces().values())
    web_db = of_flow(all_traces, "10.0.0.1", "10.0.0.2", "tcp", 5432)
    assert [t.id for t in web_db] == ["e4b9e1d8"]
    assert [t.id for t in of_flow(all_traces, None, "10.0.0.2", "icmp", None)] == ["5704185a"]
    assert of_flow(all_traces, "10.0.0.1", "10.0.0.2", "tcp", 80) == []
    same_host = flow_trace({"h": web_db}, ("h", "gwt-g1"), ("h", "gwt-g2"))
    assert [h.role for h in same_host.hops] == ["source and destination"]
    assert same_host.verdict == "allowed" and same_host.agrees(True, "application/shop/web-to-db")
    assert not same_host.agrees(False, "application/shop/web-to-db")
    assert not same_host.agrees(True, "default deny")
    # the same packet seen on two hosts: the source's egress, the destination's ingress
    two = flow_trace({"a": web_db, "b": web_db}, ("a", "gwt-g1"), ("b", "gwt-g2"))
    assert [h.role for h in two.hops] == ["source", "destination"]
    assert two.hops[0].lines() == ["a (source): passed: egress rule application/shop/web-to-db -> goto ingress; "
                                   "ingress rule application/shop/web-to-db -> accept"]
    # a flooded copy sent to another port is not the flow's hop there
    flood = of_flow(all_traces, "10.0.0.2", "10.0.0.99", "tcp", 443)
    assert flow_trace({"h": flood}, None, ("h", "gwt-g3")).hops[0].trace.id == "98f5fe0e"
    blocked = flow_trace({"h": of_flow(all_traces, "10.0.0.2", "10.0.0.1", "tcp", 80)}, ("h", "gwt-g2"), None)
    assert (blocked.verdict, blocked.decided_by) == ("blocked", "default deny")
    assert flow_trace({}, ("h", "x"), None).verdict == "unseen"
