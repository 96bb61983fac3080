"""Evaluate rendered nftables objects for one packet, as the kernel would (the subset render.py writes).

A packet crosses a host as br_netfilter makes it: bridge prerouting (-300), bridge forward (-200),
then the inet forward hook. The end of a chain reached by `goto` falls back to the base chain's
policy, a missed `vmap` lookup goes on with the next rule, `accept` ends the hook. `POLICY_REACHED`
counts the packets decided by a policy (render.py promises none are: every path ends in a verdict).

Conntrack as far as the rules see it: a packet carries its connection's state, its direction
(`original` or `reply`) and the connection's ct mark; `ct mark set` changes the mark the packet
leaves with (`run_hook` returns it), which the caller keeps for the connection's next packets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from guestward.dataplane import NftObjects

IPAddress = IPv4Address | IPv6Address
_NO = object()  # a payload that the packet does not have: the match fails


@dataclass(frozen=True)
class Packet:
    iif: str
    oif: str
    ether_saddr: str
    saddr: IPAddress
    daddr: IPAddress
    l4proto: str  # tcp, udp, icmp, ipv6-icmp
    dport: int = 0
    mark: int = 0
    ct_state: str = "new"
    ct_direction: str = "original"
    ct_mark: int = 0

    @property
    def ip_family(self) -> str:
        return "ip" if self.saddr.version == 4 else "ip6"


POLICY_REACHED: Counter[tuple[str, str]] = Counter()


def _value(expr: Any, p: Packet) -> Any:
    if isinstance(expr, dict) and "meta" in expr:
        key = expr["meta"]["key"]
        return {"iifname": p.iif, "oifname": p.oif, "mark": p.mark, "l4proto": p.l4proto,
                "nfproto": f"ipv{p.saddr.version}"}[key]
    if isinstance(expr, dict) and "payload" in expr:
        proto, field = expr["payload"]["protocol"], expr["payload"]["field"]
        if proto == "ether":
            return {"saddr": p.ether_saddr, "type": p.ip_family}[field]
        if proto in ("ip", "ip6"):
            return (p.saddr if field == "saddr" else p.daddr) if proto == p.ip_family else _NO
        if proto in ("tcp", "udp"):
            return p.dport if p.l4proto == proto and field == "dport" else _NO
        if proto in ("icmpv6", "icmp"):
            return _NO  # only neighbour-discovery rules look at icmp types; our probes are not ND
        if proto == "arp":
            return _NO
        raise AssertionError(f"payload {proto} {field}")
    if isinstance(expr, dict) and "concat" in expr:
        return tuple(_value(e, p) for e in expr["concat"])
    if isinstance(expr, dict) and "&" in expr:
        left, bits = expr["&"]
        return _value(left, p) & bits
    if isinstance(expr, dict) and "ct" in expr:
        return {"state": p.ct_state, "direction": p.ct_direction, "mark": p.ct_mark}[expr["ct"]["key"]]
    return expr


def _canon(v: Any) -> Any:
    if isinstance(v, tuple):
        return tuple(_canon(x) for x in v)
    if isinstance(v, IPv4Address | IPv6Address):
        return str(v)
    return v


def _member(value: Any, right: Any, o: NftObjects, family: str) -> bool:
    if isinstance(right, str) and right.startswith("@"):
        return _canon(value) in o.elements[(family, right[1:])]
    if isinstance(right, dict) and "set" in right:
        for item in right["set"]:
            if isinstance(item, dict) and "prefix" in item:
                net = ip_network(f"{item['prefix']['addr']}/{item['prefix']['len']}")
                if isinstance(value, IPv4Address | IPv6Address) and value.version == net.version and value in net:
                    return True
            elif isinstance(item, dict) and "range" in item:
                if isinstance(value, int) and item["range"][0] <= value <= item["range"][1]:
                    return True
            elif value == item or (isinstance(value, IPv4Address | IPv6Address) and isinstance(item, str)
                                   and value == ip_address(item)):
                return True
        return False
    if isinstance(right, list):  # ct state in [..]
        return value in right
    return bool(_canon(value) == right)


def _match(m: dict[str, Any], p: Packet, o: NftObjects, family: str) -> bool:
    value = _value(m["left"], p)
    if value is _NO or (isinstance(value, tuple) and _NO in value):
        return False
    hit = _member(value, m["right"], o, family)
    return not hit if m["op"] == "!=" else hit


def run_hook(o: NftObjects, family: str, base: str, p: Packet) -> tuple[str, Packet]:
    """The verdict ("accept" or "drop") of base chain `base`, and the packet as it leaves (marks)."""
    chain = base
    rule_index = 0
    for _ in range(10_000):
        rules = o.chains[(family, chain)].rules
        if rule_index >= len(rules):
            POLICY_REACHED[(family, base)] += 1
            return o.chains[(family, base)].policy, p  # end of chain: the base chain's policy
        expr = rules[rule_index].expr
        rule_index += 1
        verdict: str | None = None
        for e in expr:
            if "match" in e:
                if not _match(e["match"], p, o, family):
                    break
            elif "counter" in e or "log" in e:
                continue
            elif "set" in e:  # a limiter update: never over its rate here, and it never decides
                assert e["set"]["op"] == "update" and e["set"]["set"].startswith("@lim"), e
                continue
            elif "mangle" in e and e["mangle"]["key"] == {"ct": {"key": "mark"}}:
                (kept, keep_mask), bits = e["mangle"]["value"]["|"][0]["&"], e["mangle"]["value"]["|"][1]
                assert kept == {"ct": {"key": "mark"}}
                if p.ct_state != "untracked":
                    p = replace(p, ct_mark=(p.ct_mark & keep_mask) | bits)
            elif "mangle" in e:
                assert e["mangle"]["key"] == {"meta": {"key": "mark"}}
                bits = e["mangle"]["value"]["|"][1]
                p = replace(p, mark=p.mark | bits)
            elif "vmap" in e:
                key = _canon(_value(e["vmap"]["key"], p))
                target = o.elements[(family, e["vmap"]["data"][1:])]
                assert isinstance(target, dict)
                if key in target:
                    verdict = target[key]
                    break
                break  # a miss: on with the next rule
            elif "goto" in e:
                verdict = "goto:" + e["goto"]["target"]
                break
            elif "accept" in e or "drop" in e:
                verdict = next(iter(e))
                break
            else:
                raise AssertionError(f"expression {e}")
        if verdict is None:
            continue
        if verdict.startswith("goto:"):
            chain, rule_index = verdict[5:], 0
            continue
        return verdict, p
    raise AssertionError("chain loop")


def cross_host(o: NftObjects, p: Packet) -> bool:
    """Whether one host lets the packet through: bridge prerouting, bridge forward, inet forward."""
    return cross_host_marked(o, p)[0]


def cross_host_marked(o: NftObjects, p: Packet) -> tuple[bool, int]:
    """`cross_host`, and the connection's ct mark after the packet (what the next packet carries)."""
    for family, hook in (("bridge", "prerouting"), ("bridge", "forward"), ("inet", "forward")):
        verdict, p = run_hook(o, family, hook, p)
        if verdict != "accept":
            return False, p.ct_mark
    return True, p.ct_mark
