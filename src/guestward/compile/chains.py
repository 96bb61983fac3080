"""Per-identity rule chains: the policy as seen from one label set, in one direction.

For identity X (labels L) the egress chain holds, in evaluation order, every rule whose `from` can
match X (a selector that selects L, a cidr checked per packet, or anything); the rule's `to` becomes a
per-packet match on the destination address. The ingress chain is the mirror image. Because both
chains keep the global order and the same first-match semantics as `evaluate.decide`, the verdict
at the source's vNIC and at the destination's vNIC is the one verdict of the flow.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from guestward.compile.plan import (
    EGRESS,
    INGRESS,
    QUARANTINE_SET,
    ChainPlan,
    Match,
    PlannedRule,
)
from guestward.compile.selector_cache import SelectorCache, policy_selectors
from guestward.model import Labels
from guestward.policy import TIERS, Action, AnyPeer, CidrPeer, GuestsPeer, Peer, Policy, Rule


def _self_condition(peer: Peer, labels: Labels) -> tuple[bool, tuple[object, ...]]:
    """Whether a rule side can match our own guest, and the per-packet prefixes it still needs."""
    if isinstance(peer, AnyPeer):
        return True, ()
    if isinstance(peer, GuestsPeer):
        return peer.selector.matches(labels), ()
    assert isinstance(peer, CidrPeer)
    return True, peer.networks


def _planned(rule: Rule, policy: Policy, labels: Labels, direction: str) -> Match | None:
    own, other = (rule.source, rule.destination) if direction == EGRESS else (rule.destination, rule.source)
    applies, self_cidrs = _self_condition(own, labels)
    if not applies:
        return None
    peer_set = other.selector.digest if isinstance(other, GuestsPeer) else None
    peer_cidrs = other.networks if isinstance(other, CidrPeer) else ()
    return Match(peer_set, peer_cidrs, self_cidrs, rule.ports)  # type: ignore[arg-type]


class RuleIndex:
    """The rules of a policy set in evaluation order, indexed by the selector on their own side.

    The rules that can apply to a label set in one direction are those whose own side (`from` for
    egress, `to` for ingress) is anything, a cidr, or a selector that selects the label set. Looking
    them up by selector keeps the cost of one identity's chains proportional to the rules that apply
    to it, not to the size of the policy set; the order is the evaluation order, as if scanned."""

    def __init__(self, policies: Iterable[Policy], selectors: SelectorCache | None = None) -> None:
        ordered = sorted(policies, key=lambda p: p.sort_key)
        self._entries: list[tuple[Policy, Rule]] = [(p, r) for p in ordered for r in p.rules]
        self._always: dict[str, list[int]] = {EGRESS: [], INGRESS: []}
        self._by_selector: dict[str, dict[str, list[int]]] = {EGRESS: {}, INGRESS: {}}
        for i, (_, r) in enumerate(self._entries):
            for direction, own in ((EGRESS, r.source), (INGRESS, r.destination)):
                if isinstance(own, GuestsPeer):
                    self._by_selector[direction].setdefault(own.selector.digest, []).append(i)
                else:
                    self._always[direction].append(i)
        self.selectors = selectors if selectors is not None else SelectorCache(policy_selectors(ordered))

    def tier_rules(self, labels: Labels, direction: str) -> list[list[tuple[Policy, Rule, Match]]]:
        """Per tier, in evaluation order: every rule that can match `labels` in `direction`, planned."""
        by_selector = self._by_selector[direction]
        positions = sorted(chain(self._always[direction],
                                 *(by_selector.get(d, ()) for d in self.selectors.matching(labels))))
        by_tier: list[list[tuple[Policy, Rule, Match]]] = [[] for _ in TIERS]
        for i in positions:
            policy, rule = self._entries[i]
            match = _planned(rule, policy, labels, direction)
            if match is not None:
                by_tier[TIERS.index(policy.tier)].append((policy, rule, match))
        return by_tier


def _rule(policy: Policy, rule: Rule, match: Match, pass_target: str) -> PlannedRule:
    verdict = {Action.ALLOW: "allow", Action.DENY: "deny"}.get(rule.action, pass_target)
    return PlannedRule(match, verdict, policy.tier, policy.name, rule.name)


def identity_chains(policies: list[Policy], labels: Labels, ident: str,
                    index: RuleIndex | None = None) -> dict[str, ChainPlan]:
    """Every chain identity `ident` (labels `labels`) needs, by name: `eg-<id>` and `in-<id>` are the
    entry points; `-q` is the quarantine-only variant; `-t<N>` continues at tier N after a `pass`.
    `index` must be the `RuleIndex` of `policies` (built here when not given)."""
    index = index if index is not None else RuleIndex(policies)
    chains: dict[str, ChainPlan] = {}
    for direction in (EGRESS, INGRESS):
        base = f"{direction}-{ident}"
        tiers = index.tier_rules(labels, direction)
        # Quarantine-only evaluation: a pass or no match in the quarantine tier is a deny.
        q_rules = tuple(_rule(p, r, m, "deny") for p, r, m in tiers[0])
        if labels.quarantined:
            chains[base] = ChainPlan(base, direction, q_rules)
            continue
        chains[f"{base}-q"] = ChainPlan(f"{base}-q", direction, q_rules)
        detour = PlannedRule(Match(peer_set=QUARANTINE_SET), f"goto:{base}-q", "quarantine", "", "")

        def tier_chain(start: int, base: str = base, tiers: list[list[tuple[Policy, Rule, Match]]] = tiers,
                       direction: str = direction) -> tuple[PlannedRule, ...]:
            out: list[PlannedRule] = []
            for t in range(start, len(TIERS)):
                target = f"goto:{base}-t{t + 1}" if t + 1 < len(TIERS) else "deny"
                used_pass = False
                for p, r, m in tiers[t]:
                    out.append(_rule(p, r, m, target))
                    used_pass |= r.action is Action.PASS
                if used_pass and t + 1 < len(TIERS):
                    name = f"{base}-t{t + 1}"
                    chains[name] = ChainPlan(name, direction, tier_chain(t + 1))
            return tuple(out)

        chains[base] = ChainPlan(base, direction, (detour, *tier_chain(0)))
    return chains
