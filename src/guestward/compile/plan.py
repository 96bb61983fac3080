"""The compiled, per-host desired state: what each host must enforce, in data-plane-neutral terms.

A `HostPlan` holds
- `vnics`: every local vNIC guestward knows (port name -> MAC, owned addresses, identity); any other
  guest port gets no traffic,
- `dispatch`: local owned address -> identity id (the sender is bound to its vNIC by anti-spoofing,
  so the address names the vNIC's identity),
- `chains`: per-identity egress and ingress rule chains (only for identities with a local vNIC),
- `sets`: one address set per distinct selector referenced by those chains, with every owned
  address of every active guest (on any host) that the selector selects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from guestward.model import Labels
from guestward.policy import PortRange

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

QUARANTINE_SET = "quarantine"
EGRESS, INGRESS = "eg", "in"


def identity_id(labels: Labels) -> str:
    """A stable short id for a label set: every guest with the same labels shares it."""
    text = "\n".join(f"{k}={v}" for k, v in labels.pairs())
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Match:
    """Per-packet conditions of one planned rule, seen from the chain's own guest ("self").

    `peer_set`: the other end's address must be in this named set (a selector digest).
    `peer_cidrs` / `self_cidrs`: the other end's / our own address must be in one of these prefixes.
    `ports`: empty means every protocol and port."""

    peer_set: str | None = None
    peer_cidrs: tuple[IPNetwork, ...] = ()
    self_cidrs: tuple[IPNetwork, ...] = ()
    ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class PlannedRule:
    """`verdict` is "allow", "deny" or "goto:<chain>" (a `pass`, or a quarantine detour)."""

    match: Match
    verdict: str
    tier: str
    policy: str
    rule: str


@dataclass(frozen=True)
class ChainPlan:
    name: str
    direction: str  # EGRESS or INGRESS
    rules: tuple[PlannedRule, ...]
    # What a packet that matched no rule gets: always deny (POLICY.md 2.3).
    default: str = "deny"

    @property
    def referenced_sets(self) -> frozenset[str]:
        return frozenset(r.match.peer_set for r in self.rules if r.match.peer_set is not None)


@dataclass(frozen=True, order=True)
class VnicBinding:
    """`local_only`: the guest is live on this host alone (not both ends of a migration), so its
    addresses never arrive from an uplink (the bridge drops them there as spoofed)."""

    port: str
    mac: str
    guest: str
    identity: str
    addresses: tuple[IPAddress, ...] = ()
    local_only: bool = True


@dataclass(frozen=True, order=True)
class Conflict:
    """`owner`: the claimant that keeps the address (it was bound first), or None: nobody does."""

    address: IPAddress
    guests: tuple[str, ...]
    owner: str | None = None

    def __str__(self) -> str:
        claimed = f"address {self.address} claimed by {', '.join(self.guests)}"
        if self.owner is None:
            return f"{claimed}: no traffic on it for any of them"
        others = ", ".join(g for g in self.guests if g != self.owner)
        return f"{claimed}: {self.owner} keeps it (claimed first), no traffic on it for {others}"


@dataclass
class HostPlan:
    host: str
    uplinks: frozenset[str] = frozenset()
    vnics: dict[str, VnicBinding] = field(default_factory=dict)
    dispatch: dict[IPAddress, str] = field(default_factory=dict)
    chains: dict[str, ChainPlan] = field(default_factory=dict)
    sets: dict[str, frozenset[IPAddress]] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HostPlan):
            return NotImplemented
        return (self.host, self.uplinks, self.vnics, self.dispatch, self.chains, self.sets) == (
            other.host, other.uplinks, other.vnics, other.dispatch, other.chains, other.sets)


@dataclass
class CompiledState:
    hosts: dict[str, HostPlan]
    conflicts: tuple[Conflict, ...] = ()
    identities: dict[str, Labels] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompiledState):
            return NotImplemented
        return (self.hosts, self.conflicts, self.identities) == (other.hosts, other.conflicts, other.identities)
