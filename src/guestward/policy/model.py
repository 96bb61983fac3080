"""Validated policy values. Everything here is frozen and compares by value."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network

from guestward.model import Selector

TIERS: tuple[str, ...] = ("quarantine", "platform", "application", "baseline")
PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "icmp", "icmpv6", "any")


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    PASS = "pass"


@dataclass(frozen=True)
class AnyPeer:
    """`from`/`to` omitted: anything."""


@dataclass(frozen=True)
class GuestsPeer:
    selector: Selector


@dataclass(frozen=True)
class CidrPeer:
    networks: tuple[IPv4Network | IPv6Network, ...]


Peer = AnyPeer | GuestsPeer | CidrPeer


@dataclass(frozen=True, order=True)
class PortRange:
    """`tcp/443`, `tcp/8000-8080`, `udp/53`, `icmp`, `icmpv6`, `any` (first..last inclusive; 0 for none)."""

    protocol: str
    first: int = 0
    last: int = 0

    def __str__(self) -> str:
        if self.protocol in ("icmp", "icmpv6", "any"):
            return self.protocol
        if self.first == self.last:
            return f"{self.protocol}/{self.first}"
        return f"{self.protocol}/{self.first}-{self.last}"

    def covers(self, protocol: str, port: int) -> bool:
        if self.protocol == "any":
            return True
        if self.protocol != protocol:
            return False
        return self.protocol in ("icmp", "icmpv6") or self.first <= port <= self.last


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    source: Peer
    destination: Peer
    ports: tuple[PortRange, ...]  # empty: every protocol and port
    line: int = 0

    def covers(self, protocol: str, port: int) -> bool:
        return not self.ports or any(p.covers(protocol, port) for p in self.ports)


@dataclass(frozen=True)
class Policy:
    name: str
    tier: str
    order: int
    rules: tuple[Rule, ...]
    file: str = ""
    line: int = 0
    source: str = field(default="", compare=False, repr=False)

    @property
    def sort_key(self) -> tuple[int, int, str]:
        """Evaluation order (POLICY.md 2.3): tier, then order, then name."""
        return (TIERS.index(self.tier), self.order, self.name)
