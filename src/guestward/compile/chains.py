"""Per-identity rule chains: the policy as seen from one label set, in one direction.

For identity X (labels L) the egress chain holds, in evaluation order, every rule whose `from` can
match X (a selector that selects L, a cidr checked per packet, or anything); the rule's `to` becomes a
per-packet match on the destination address. The ingress chain is the mirror image. Because both
chains keep the global order and the same first-match semantics as `evaluate.decide`, the verdict
at the source's vNIC and at the destination's vNIC is the one verdict of the flow.
"""

from __future__ import annotations

from guestward.compile.plan import (
    EGRESS,
    INGRESS,
    QUARANTINE_SET,
    ChainPlan,
    Match,
    PlannedRule,
)
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


def _tier_rules(policies: list[Policy], labels: Labels, direction: str) -> list[list[tuple[Policy, Rule, Match]]]:
    by_tier: list[list[tuple[Policy, Rule, Match]]] = [[] for _ in TIERS]
    for policy in sorted(policies, key=lambda p: p.sort_key):
        for rule in policy.rules:
            match = _planned(rule, policy, labels, direction)
            if match is not None:
                by_tier[TIERS.index(policy.tier)].append((policy, rule, match))
    return by_tier


def _rule(policy: Policy, rule: Rule, match: Match, pass_target: str) -> PlannedRule:
    verdict = {Action.ALLOW: "allow", Action.DENY: "deny"}.get(rule.action, pass_target)
    return PlannedRule(match, verdict, policy.tier, policy.name, rule.name)


def identity_chains(policies: list[Policy], labels: Labels, ident: str) -> dict[str, ChainPlan]:
    """Every chain identity `ident` (labels `labels`) needs, by name: `eg-<id>` and `in-<id>` are the
    entry points; `-q` is the quarantine-only variant; `-t<N>` continues at tier N after a `pass`."""
    chains: dict[str, ChainPlan] = {}
    for direction in (EGRESS, INGRESS):
        base = f"{direction}-{ident}"
        tiers = _tier_rules(policies, labels, direction)
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
