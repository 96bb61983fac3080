"""Per-rule counters read back from `nft -j list table` output, and what they add up to. Pure.

Every rule guestward renders carries one anonymous counter; its comment (`label #digest`) names it.
A drop is two rules (render.py `_drop`): the log rule counts what was *logged* (under the per-guest
rate), the drop rule counts what was *dropped*. `rule_counters` returns both, told apart by `logged`;
totals (`drops_by_reason`) count drop rules only, so nothing is counted twice.

Contracts:
- `rule_counters` never raises on shapes it does not know: a rule without a counter is skipped, a
  rule of another table is ignored;
- `reason` is set exactly for drop rules and their log rules, from the same table of reasons the
  renderer writes into the log prefixes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from guestward.dataplane.render import DEFAULT_DENY, DENY, INVALID, NO_IDENTITY, NOT_FOR_VNIC, SPOOF, UNKNOWN_PORT
from guestward.dataplane.revision import ACCEPTED

IDENTITY_CHAIN_PREFIXES = ("eg-", "in-")


@dataclass(frozen=True)
class RuleCounter:
    """One rule's counter. `label`: the comment without its digest (`tier/policy/rule`, `default
    deny`, or a skeleton rule's text); `verdict`: accept, drop, goto:<chain>, vmap, or "" (the rule
    decides nothing); `logged`: a log rule (counts logged drops)."""

    family: str
    chain: str
    label: str
    verdict: str
    packets: int
    bytes: int
    reason: str | None = None
    logged: bool = False

    @property
    def identity(self) -> str | None:
        """The identity whose chain holds the rule (`eg-<id>`, `in-<id>`, `eg-<id>-q`), else None."""
        if self.family == "inet" and self.chain.startswith(IDENTITY_CHAIN_PREFIXES):
            return self.chain[3:].removesuffix("-q")
        return None

    @property
    def direction(self) -> str | None:
        if self.identity is None:
            return None
        return "egress" if self.chain.startswith("eg-") else "ingress"


def label_of(comment: str, logged: bool = False) -> str:
    """A rule's label: its comment without the digest (and, for a log rule, the label of its drop)."""
    head, sep, digest = comment.rpartition(" #")
    label = head if sep and digest.isalnum() else comment
    return label.removeprefix("log: ") if logged else label


def _verdict(expr: list[Any]) -> str:
    for e in reversed(expr):
        if not isinstance(e, dict):
            continue
        for k in ("accept", "drop"):
            if k in e:
                return k
        for k in ("goto", "jump"):
            if k in e and isinstance(e[k], dict):
                return f"{k}:{e[k].get('target', '')}"
        if "vmap" in e:
            return "vmap"
    return ""


def shown_verdict(verdict: str) -> str:
    """A rule's verdict as `stats` shows it: `goto:accepted` (stamp the connection with the policy
    revision, then accept: dataplane/revision.py) is an accept."""
    return "accept" if verdict == f"goto:{ACCEPTED}" else verdict


def drop_reason(family: str, chain: str, label: str) -> str:
    """Why a drop rule of ours drops: the reason its log prefix names."""
    label = label.removeprefix("log: ")
    if family == "inet" and chain.startswith(IDENTITY_CHAIN_PREFIXES):
        return DEFAULT_DENY if label == "default deny" else DENY
    if label.startswith("spoof"):
        return SPOOF
    if label.startswith("unknown port"):
        return UNKNOWN_PORT
    if label.startswith("not for this vNIC"):
        return NOT_FOR_VNIC
    if "invalid" in label:
        return INVALID
    return NO_IDENTITY


def rule_counters(documents: Iterable[dict[str, Any]], table: str = "guestward") -> list[RuleCounter]:
    """Every counted rule of our tables, in listing order."""
    out: list[RuleCounter] = []
    for doc in documents:
        for item in doc.get("nftables", []) if isinstance(doc, dict) else ():
            body = item.get("rule") if isinstance(item, dict) else None
            if not isinstance(body, dict) or body.get("table") != table:
                continue
            expr = body.get("expr")
            if not isinstance(expr, list):
                continue
            counter = next((e["counter"] for e in expr if isinstance(e, dict) and isinstance(e.get("counter"), dict)),
                           None)
            if counter is None:
                continue
            family, chain = str(body.get("family", "")), str(body.get("chain", ""))
            logged = any(isinstance(e, dict) and "log" in e for e in expr)
            label = label_of(str(body.get("comment", "")), logged)
            verdict = shown_verdict(_verdict(expr))
            reason = drop_reason(family, chain, label) if verdict == "drop" or logged else None
            out.append(RuleCounter(family, chain, label, verdict, int(counter.get("packets", 0)),
                                   int(counter.get("bytes", 0)), reason, logged))
    return out


def drops_by_reason(counters: Iterable[RuleCounter]) -> dict[str, tuple[int, int]]:
    """Dropped (packets, bytes) per reason, from the drop rules (log rules are not added in)."""
    out: dict[str, tuple[int, int]] = {}
    for c in counters:
        if c.reason is not None and not c.logged:
            p, b = out.get(c.reason, (0, 0))
            out[c.reason] = (p + c.packets, b + c.bytes)
    return out


@dataclass(frozen=True)
class RuleStat:
    """One planned rule (or skeleton rule) summed over the nft rules it became (per protocol and IP
    version). `logged`: how many of its drops were logged (0 for rules that do not drop)."""

    family: str
    chain: str
    label: str
    verdict: str
    reason: str | None
    packets: int
    bytes: int
    logged: int = 0

    @property
    def identity(self) -> str | None:
        return RuleCounter(self.family, self.chain, self.label, self.verdict, 0, 0).identity


def by_rule(counters: Iterable[RuleCounter]) -> list[RuleStat]:
    """One row per (family, chain, label, verdict), in first-seen order, with its log rules' counts."""
    rows: dict[tuple[str, str, str, str], RuleStat] = {}
    logged: dict[tuple[str, str, str], int] = {}
    for c in counters:
        if c.logged:
            k3 = (c.family, c.chain, c.label)
            logged[k3] = logged.get(k3, 0) + c.packets
            continue
        key = (c.family, c.chain, c.label, c.verdict)
        have = rows.get(key)
        rows[key] = RuleStat(c.family, c.chain, c.label, c.verdict, c.reason,
                             c.packets + (have.packets if have else 0), c.bytes + (have.bytes if have else 0))
    return [RuleStat(r.family, r.chain, r.label, r.verdict, r.reason, r.packets, r.bytes,
                     logged.get((r.family, r.chain, r.label), 0)) for r in rows.values()]
