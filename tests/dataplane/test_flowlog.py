"""Reader lines -> flow records: the guest, direction, reason and rule for every kind of drop."""

from __future__ import annotations

from typing import Any

import pytest

from guestward.dataplane.flowlog import to_flow

PORTS = {"vnet1": "web1", "vnet2": "db1"}
ADDRS = {"10.0.0.1": "web1", "10.0.0.2": "db1"}


def line(prefix: str, **kw: Any) -> dict[str, Any]:
    base = {"at": 1.5, "prefix": prefix, "proto": "tcp", "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40000,
            "dport": 5432, "tcpflags": "S", "physin": "vnet1", "physout": "vnet2", "lost": 0}
    return {**base, **kw}


@pytest.mark.parametrize(("prefix", "extra", "want"), [
    ("gw deny eg-abc application/shop/no-db", {}, ("web1", "egress", "deny", "vnet1")),
    ("gw default-deny in-def default deny", {}, ("db1", "ingress", "default-deny", "vnet2")),
    ("gw spoof src-guard spoof: arp", {"physout": None}, ("web1", "egress", "spoof", "vnet1")),
    ("gw not-for-vnic dst-guard not for this vNIC's addresses", {}, ("db1", "ingress", "not-for-vnic", "vnet2")),
    ("gw unknown-port prerouting unknown port: fail closed", {"physin": "vnet9"}, (None, "egress", "unknown-port",
                                                                                  "vnet9")),
    ("gw unknown-port forward unknown port: fail closed", {"physout": "vnet9", "dst": "10.0.0.99"},
     (None, "ingress", "unknown-port", "vnet9")),
    ("gw invalid forward forward: invalid, from or to a local vNIC", {}, ("web1", "egress", "invalid", "vnet1")),
    ("gw invalid forward forward: invalid, from or to a local vNIC", {"physin": "up0"},
     ("db1", "ingress", "invalid", "vnet2")),
    ("gw no-identity forward forward: sender without identity: fail closed", {},
     ("web1", "egress", "no-identity", "vnet1")),
    # the host's own packet to a guest: no bridge port yet, the address names the guest
    ("gw default-deny in-def default deny", {"physin": None, "physout": None},
     ("db1", "ingress", "default-deny", None)),
])
def test_each_reason_names_its_guest_and_direction(prefix: str, extra: dict[str, Any], want: tuple[Any, ...]) -> None:
    r = to_flow(line(prefix, **extra), "hv1", PORTS, ADDRS)
    assert r is not None
    assert (r.guest, r.direction, r.reason, r.port) == want
    assert (r.host, r.verdict, r.at) == ("hv1", "blocked", 1.5)


def test_the_rule_and_its_parts() -> None:
    r = to_flow(line("gw deny eg-abc application/shop/no-db", lost=3), "hv1", PORTS, ADDRS)
    assert r is not None and r.rule == "application/shop/no-db" and r.chain == "eg-abc" and r.lost == 3
    assert r.tier_policy_rule == ("application", "shop", "no-db")
    d = r.as_dict()
    assert (d["tier"], d["policy"], d["rule_name"], d["dport"], d["tcpflags"]) == ("application", "shop", "no-db",
                                                                                 5432, "S")
    dd = to_flow(line("gw default-deny eg-abc default deny"), "hv1", PORTS, ADDRS)
    assert dd is not None and dd.tier_policy_rule is None


def test_lines_that_are_not_our_drops_or_are_mistyped() -> None:
    assert to_flow({"ready": True}, "h", PORTS, ADDRS) is None
    assert to_flow(line("DROP r=6 "), "h", PORTS, ADDRS) is None
    assert to_flow(line(None), "h", PORTS, ADDRS) is None  # type: ignore[arg-type]
    r = to_flow({"prefix": "gw deny eg-x a/b/c", "sport": "80", "dport": True, "at": "x", "src": 5, "lost": None},
                "h", PORTS, ADDRS)
    assert r is not None and (r.sport, r.dport, r.at, r.src, r.lost, r.guest) == (None, None, 0.0, None, 0, None)
