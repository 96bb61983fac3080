"""Drop-log lines (from the NFLOG reader) -> flow records naming the guest, the reason and the rule. Pure.

A logged packet names its rule only through its prefix (`gw <reason> <chain> <label>`, render.py):
NFLOG carries no rule handle. The guest is the one whose vNIC the packet came in by (egress) or was
going out by (ingress): its bridge port (physin/physout, which br_netfilter gives in the inet hooks
too), else, for drops in the inet table, its address (the host's own packets have no bridge port
yet). A bridge guard's drop is never put on a guest by address: a spoofed or unknown sender's
address is exactly what cannot be trusted.

Contract: `to_flow` returns None for a line that is not one of our drops (another prefix, a
control line) and never raises on missing or mistyped fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from guestward.dataplane.render import (
    DEFAULT_DENY,
    DENY,
    INVALID,
    NO_IDENTITY,
    NOT_FOR_VNIC,
    SPOOF,
    UNKNOWN_PORT,
    parse_prefix,
)

EGRESS, INGRESS = "egress", "ingress"
BRIDGE_REASONS = (SPOOF, UNKNOWN_PORT, NOT_FOR_VNIC)
BLOCKED = "blocked"


@dataclass(frozen=True)
class FlowRecord:
    """One logged packet. `verdict` is always "blocked" for now (only drops are logged); `rule` is the
    deciding rule's label (`tier/policy/rule`, `default deny`, or a guard's text); `port` the guest's
    vNIC; `mac` the frame's source MAC; `lost` the messages the kernel could not deliver to the
    reader just before this one."""

    at: float
    host: str
    guest: str | None
    direction: str | None
    verdict: str
    reason: str
    chain: str
    rule: str
    proto: str | None = None
    src: str | None = None
    sport: int | None = None
    dst: str | None = None
    dport: int | None = None
    tcpflags: str | None = None
    port: str | None = None
    lost: int = 0
    mac: str | None = None  # the frame's source MAC, when the kernel gave it (spoofing evidence)

    @property
    def tier_policy_rule(self) -> tuple[str, str, str] | None:
        """(tier, policy, rule) when a policy rule decided (not a default or a guard)."""
        if self.reason != DENY:
            return None
        parts = self.rule.split("/", 2)
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        tpr = self.tier_policy_rule
        d.update(dict(zip(("tier", "policy", "rule_name"), tpr or (None, None, None), strict=True)))
        return d


def _direction(reason: str, chain: str, label: str, physin: str | None, ports: Mapping[str, str]) -> str:
    if reason == SPOOF:
        return EGRESS
    if reason == NOT_FOR_VNIC:
        return INGRESS
    if reason == UNKNOWN_PORT:
        return EGRESS if chain == "prerouting" else INGRESS
    if reason in (DENY, DEFAULT_DENY):
        return EGRESS if chain.startswith("eg-") else INGRESS
    if reason == NO_IDENTITY:
        return EGRESS if "sender" in label else INGRESS
    if reason == INVALID:
        return EGRESS if physin is not None and physin in ports else INGRESS
    return INGRESS


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def to_flow(line: Mapping[str, Any], host: str, ports: Mapping[str, str],
            addresses: Mapping[str, str]) -> FlowRecord | None:
    """A reader line as a flow record. `ports`: this host's vNIC port -> guest name; `addresses`:
    guest address (as the reader prints it) -> guest name."""
    prefix = _str(line.get("prefix"))
    parsed = parse_prefix(prefix) if prefix else None
    if parsed is None:
        return None
    reason, chain, label = parsed
    physin, physout = _str(line.get("physin")), _str(line.get("physout"))
    direction = _direction(reason, chain, label, physin, ports)
    src, dst = _str(line.get("src")), _str(line.get("dst"))
    port, addr = (physin, src) if direction == EGRESS else (physout, dst)
    if port is None and direction == INGRESS and reason == UNKNOWN_PORT:
        port = _str(line.get("out"))
    guest = ports.get(port) if port else None
    if guest is None and reason not in BRIDGE_REASONS and addr:
        guest = addresses.get(addr)  # never for the bridge guards: their addresses are what is in doubt
    at = line.get("at")
    return FlowRecord(
        at=float(at) if isinstance(at, int | float) else 0.0, host=host, guest=guest, direction=direction,
        verdict=BLOCKED, reason=reason, chain=chain, rule=label, proto=_str(line.get("proto")), src=src,
        sport=_int(line.get("sport")), dst=dst, dport=_int(line.get("dport")), tcpflags=_str(line.get("tcpflags")),
        port=port, lost=_int(line.get("lost")) or 0, mac=_str(line.get("mac")))
