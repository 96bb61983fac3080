"""Read one host's rule counters from the kernel (`nft -j list table`, both families, in its netns).

`read_counters` is what `guestward stats` and the agent's metrics call; the parsing and adding up
are pure (dataplane/counters.py). A missing table reads as no rules: nothing enforced, nothing counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guestward.dataplane.counters import RuleCounter, rule_counters
from guestward.enforce.enforcer import FAMILIES, TABLE, NftRunner


@dataclass
class HostTables:
    """What one read of a host's tables gives: every counted rule, and how many sets and rules."""

    counters: list[RuleCounter] = field(default_factory=list)
    rules: int = 0
    sets: int = 0
    missing: list[str] = field(default_factory=list)


def read_tables(runner: NftRunner) -> HostTables:
    """One read of both of our tables (raises EnforceError when nft fails other than "no table")."""
    docs: list[dict[str, Any]] = []
    out = HostTables()
    for family in FAMILIES:
        doc = runner.list_table(family)
        if doc is None:
            out.missing.append(family)
        else:
            docs.append(doc)
    for doc in docs:
        for item in doc.get("nftables", []):
            kind, body = next(iter(item.items()))
            if isinstance(body, dict) and body.get("table") == TABLE:
                out.rules += kind == "rule"
                out.sets += kind in ("set", "map")
    out.counters = rule_counters(docs, TABLE)
    return out


def read_counters(runner: NftRunner) -> list[RuleCounter]:
    """Every counted rule of our tables on the runner's host, in listing order."""
    return read_tables(runner).counters
