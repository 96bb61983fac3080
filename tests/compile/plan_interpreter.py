"""The data plane's meaning of compiled HostPlans, as a small interpreter (no nft).

It follows `dataplane/render.py` step by step, from the plans only:

- at the source's host (when the source is a local vNIC): the bridge's source guard lets only a bound
  address out of a known vNIC; `eg4/eg6` (from `dispatch`) picks the identity, a missing entry drops;
  the chain `eg-<id>` is walked; `allow` continues to the ingress side (`goto ingress`), `deny` drops,
  `goto:<chain>` continues in that chain, the end of a chain drops;
- at the destination's host (when the destination is a local vNIC): the destination guard needs one of
  the vNIC's bound addresses, `in4/in6` picks the identity, `in-<id>` decides the same way;
- an endpoint that is not a managed guest is not checked on its side.

Per-packet matches are read as render.py writes them: a peer set is `@s-<digest>-<v>` (membership in
`plan.sets`), prefixes only of the packet's family (none left: the rule is not emitted), `icmp` only for
IPv4 and `icmpv6` only for IPv6, `any` or no ports: every protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from guestward.compile import CompiledState, HostPlan, Match, PlannedRule

IPAddress = IPv4Address | IPv6Address
MAX_JUMPS = 64


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    where: str  # "egress@host", "ingress@host", or "" when neither side checked
    rule: PlannedRule | None = None
    reason: str = ""


def _in_prefixes(addr: IPAddress, nets: tuple[object, ...]) -> bool:
    return any(addr in n for n in nets if n.version == addr.version)  # type: ignore[attr-defined, operator]


def _ports_match(m: Match, version: int, protocol: str, port: int) -> bool:
    if not m.ports or any(p.protocol == "any" for p in m.ports):
        return True
    for p in m.ports:
        if p.protocol in ("tcp", "udp") and p.protocol == protocol and p.first <= port <= p.last:
            return True
        if p.protocol == "icmp" and version == 4 and protocol == "icmp":
            return True
        if p.protocol == "icmpv6" and version == 6 and protocol == "icmpv6":
            return True
    return False


def rule_matches(plan: HostPlan, m: Match, own: IPAddress, other: IPAddress, protocol: str, port: int) -> bool:
    if m.self_cidrs and not _in_prefixes(own, m.self_cidrs):
        return False
    if m.peer_cidrs and not _in_prefixes(other, m.peer_cidrs):
        return False
    if m.peer_set is not None:
        # A rule that names a set the host does not hold could not be loaded: the plan is broken.
        assert m.peer_set in plan.sets, f"{plan.host}: chain references missing set {m.peer_set}"
        if other not in plan.sets[m.peer_set]:
            return False
    return _ports_match(m, own.version, protocol, port)


def run_chain(plan: HostPlan, name: str, own: IPAddress, other: IPAddress, protocol: str,
              port: int) -> tuple[str, PlannedRule | None]:
    """The final verdict ("allow" or "deny") of walking chain `name`, and the rule that gave it."""
    for _ in range(MAX_JUMPS):
        assert name in plan.chains, f"{plan.host}: jump to missing chain {name}"
        chain = plan.chains[name]
        for r in chain.rules:
            if rule_matches(plan, r.match, own, other, protocol, port):
                if r.verdict.startswith("goto:"):
                    name = r.verdict[5:]
                    break
                assert r.verdict in ("allow", "deny"), r.verdict
                return r.verdict, r
        else:
            return chain.default, None
    raise AssertionError(f"{plan.host}: chain loop from {name}")


def _bound(plan: HostPlan, addr: IPAddress) -> bool:
    return any(addr in b.addresses for b in plan.vnics.values())


def _side(plan: HostPlan, direction: str, own: IPAddress, other: IPAddress, protocol: str,
          port: int) -> Verdict | None:
    """None: this side allows; otherwise the blocking verdict."""
    where = f"{'egress' if direction == 'eg' else 'ingress'}@{plan.host}"
    if not _bound(plan, own):
        return Verdict(False, where, reason="address not bound to a local vNIC (anti-spoofing)")
    ident = plan.dispatch.get(own)
    if ident is None:
        return Verdict(False, where, reason="no identity: fail closed")
    verdict, rule = run_chain(plan, f"{direction}-{ident}", own, other, protocol, port)
    return None if verdict == "allow" else Verdict(False, where, rule)


def flow(state: CompiledState, src: IPAddress, src_host: str | None, dst: IPAddress, dst_host: str | None,
         protocol: str, port: int = 0) -> Verdict:
    """What the data plane does with the first packet of a flow. `*_host`: the host of the endpoint's vNIC,
    None for an endpoint outside the managed guests."""
    assert src.version == dst.version
    if src_host is not None:
        blocked = _side(state.hosts[src_host], "eg", src, dst, protocol, port)
        if blocked is not None:
            return blocked
    if dst_host is not None:
        blocked = _side(state.hosts[dst_host], "in", dst, src, protocol, port)
        if blocked is not None:
            return blocked
    return Verdict(True, "both" if src_host and dst_host else (src_host or dst_host or ""))
