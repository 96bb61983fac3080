"""The verdict of one flow, straight from the policy semantics of POLICY.md 2.3.

This is the reference the data plane must agree with: `explain` and `reach` use it, and the lab's
tests compare it with what real packets do.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from guestward.model import Labels
from guestward.policy import TIERS, Action, AnyPeer, CidrPeer, GuestsPeer, Peer, Policy

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Endpoint:
    """One end of a flow: an address, and the labels of the managed guest that owns it (None: outside)."""

    address: IPAddress
    labels: Labels | None = None
    name: str = ""

    def __str__(self) -> str:
        return self.name or str(self.address)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    tier: str | None = None
    policy: str | None = None
    rule: str | None = None
    reason: str = ""

    def explain(self) -> str:
        if self.rule is not None:
            verb = "allowed" if self.allowed else "denied"
            return f"{verb} by tier {self.tier}, policy {self.policy}, rule {self.rule}"
        return self.reason


def peer_matches(peer: Peer, end: Endpoint) -> bool:
    if isinstance(peer, AnyPeer):
        return True
    if isinstance(peer, GuestsPeer):
        return end.labels is not None and peer.selector.matches(end.labels)
    assert isinstance(peer, CidrPeer)
    return any(end.address in net for net in peer.networks if net.version == end.address.version)


def ordered(policies: list[Policy] | tuple[Policy, ...]) -> list[Policy]:
    return sorted(policies, key=lambda p: p.sort_key)


def decide(policies: list[Policy] | tuple[Policy, ...], src: Endpoint, dst: Endpoint,
           protocol: str, port: int = 0) -> Decision:
    """The one verdict for a flow: first matching rule wins; `pass` skips the rest of its tier;
    no match is deny. A flow with a quarantined guest at either end sees only the quarantine tier."""
    quarantined = any(e.labels is not None and e.labels.quarantined for e in (src, dst))
    tiers = TIERS[:1] if quarantined else TIERS
    for tier in tiers:
        passed = False
        for policy in ordered([p for p in policies if p.tier == tier]):
            for rule in policy.rules:
                if not (rule.covers(protocol, port) and peer_matches(rule.source, src)
                        and peer_matches(rule.destination, dst)):
                    continue
                if rule.action is Action.PASS:
                    passed = True
                    break
                return Decision(rule.action is Action.ALLOW, tier, policy.name, rule.name)
            if passed:
                break
    if quarantined:
        return Decision(False, reason="quarantined: no quarantine-tier rule allows it")
    return Decision(False, reason="no rule matched: default deny")
