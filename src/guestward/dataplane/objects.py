"""nftables objects as comparable values: tables hold sets/maps (with elements) and chains (with rules).

Elements are kept in a canonical, hashable form (strings and tuples of strings; for maps, the key
and the verdict text), so a desired state and a read-back of the kernel can be compared directly.
Rules are compared by their comment, which carries a digest of the rule itself.

A set with a timeout is dynamic: the kernel adds its elements (`update @set { key limit ... }`, the
per-guest log limiters), so its elements are kernel state, never desired state: they are neither
read back nor diffed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]  # (family, name)


UPLINK_VERDICTS = ("accept", "goto:uplink-guard")  # an uplink in `ports-in` (before / since the uplink guard)

@dataclass(frozen=True)
class NftSet:
    family: str
    name: str
    type: tuple[str, ...]
    map_to: str | None = None  # "verdict" for verdict maps
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds an element lives after its last update (dynamic sets)
    size: int | None = None  # most elements the kernel will hold (dynamic sets: adds beyond it fail)

    @property
    def dynamic(self) -> bool:
        """Its elements are the kernel's (added by packets), not ours."""
        return "timeout" in self.flags

    def spec(self, table: str) -> dict[str, Any]:
        out: dict[str, Any] = {"family": self.family, "table": table, "name": self.name,
                               "type": list(self.type) if len(self.type) > 1 else self.type[0]}
        if self.map_to:
            out["map"] = self.map_to
        if self.flags:
            out["flags"] = list(self.flags)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class NftRule:
    expr: tuple[Any, ...]  # nft JSON expressions (dicts), treated as opaque
    comment: str

    def __hash__(self) -> int:
        return hash(self.comment)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NftRule) and self.comment == other.comment


@dataclass(frozen=True)
class NftChain:
    family: str
    name: str
    rules: tuple[NftRule, ...]
    hook: str | None = None
    priority: int = 0
    policy: str = "accept"  # of a base chain: what happens when no rule decides

    def spec(self, table: str) -> dict[str, Any]:
        out: dict[str, Any] = {"family": self.family, "table": table, "name": self.name}
        if self.hook:
            out.update({"type": "filter", "hook": self.hook, "prio": self.priority, "policy": self.policy})
        return out


@dataclass
class NftObjects:
    """Everything in guestward's tables on one host. Element values: frozenset for sets, dict for maps."""

    table: str = "guestward"
    sets: dict[Key, NftSet] = field(default_factory=dict)
    elements: dict[Key, set[Any] | dict[Any, str]] = field(default_factory=dict)
    chains: dict[Key, NftChain] = field(default_factory=dict)
    families: tuple[str, ...] = ("bridge", "inet")

    def add_set(self, s: NftSet) -> None:
        self.sets[(s.family, s.name)] = s
        self.elements[(s.family, s.name)] = {} if s.map_to else set()

    def add_chain(self, c: NftChain) -> None:
        self.chains[(c.family, c.name)] = c

    def bound_ports(self) -> set[str]:
        """Bridge ports with a guest's guard (uplinks, accepted or sent to the uplink guard, are not bound)."""
        ports = self.elements.get(("bridge", "ports-in"), {})
        return {str(k) for k, v in ports.items() if v not in UPLINK_VERDICTS} if isinstance(ports, dict) else set()

    def uplinks(self) -> set[str]:
        """Bridge ports that are uplinks (`ports-in` accepts them, or sends them to the uplink guard)."""
        ports = self.elements.get(("bridge", "ports-in"), {})
        return {str(k) for k, v in ports.items() if v in UPLINK_VERDICTS} if isinstance(ports, dict) else set()
