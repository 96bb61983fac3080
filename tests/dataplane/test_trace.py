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
