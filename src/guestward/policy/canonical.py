"""The stored form of a validated policy: plain YAML that re-parses to the very same `Policy`.

What a user wrote may lean on the rest of its file (a `%TAG` directive, an anchor, the file's
encoding); a slice of it does not always parse again on its own. So the store keeps this canonical
re-serialisation instead: block YAML with no directives, tags, anchors or comments, written by
`yaml.safe_dump` from the values the parser built. The origin (`file`, the document's `line`, each
rule's line) is kept beside it as data, and `load` puts it back.

Contract: `dump` refuses (`ValueError`) a policy whose canonical form does not re-parse, with its
origin restored, to a value equal to it; so whatever is stored parses again identically.
Pure: texts and values in, texts and values out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from guestward.model import Selector
from guestward.policy.errors import Diagnostic, PolicyError
from guestward.policy.model import AnyPeer, CidrPeer, GuestsPeer, Peer, Policy, Rule
from guestward.policy.parse import parse_policies


@dataclass(frozen=True)
class Canonical:
    """A policy as stored: its canonical text, and where the user wrote it."""

    name: str
    file: str
    line: int
    text: str
    rule_lines: tuple[int, ...]


def _selector(s: Selector) -> dict[str, Any]:
    # Always the long form: a plain map with a label named `matchLabels` would read as the long form.
    doc: dict[str, Any] = {"matchLabels": dict(s.match_labels)}
    if s.match_expressions:
        doc["matchExpressions"] = [
            {"key": e.key, "operator": str(e.operator), **({"values": list(e.values)} if e.values else {})}
            for e in s.match_expressions
        ]
    return doc


def _peer(p: Peer) -> dict[str, Any] | None:
    if isinstance(p, GuestsPeer):
        return {"guests": _selector(p.selector)}
    if isinstance(p, CidrPeer):
        return {"cidr": [str(n) for n in p.networks]}
    assert isinstance(p, AnyPeer)
    return None


def _rule(r: Rule) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": r.name, "action": str(r.action)}
    for key, peer in (("from", r.source), ("to", r.destination)):
        if (d := _peer(peer)) is not None:
            doc[key] = d
    if r.ports:
        doc["ports"] = [str(p) for p in r.ports]
    return doc


def document(p: Policy) -> dict[str, Any]:
    """The policy as a plain document of the schema (POLICY.md 2)."""
    return {"apiVersion": "guestward.dev/v1", "kind": "Policy", "metadata": {"name": p.name},
            "spec": {"tier": p.tier, "order": p.order, "rules": [_rule(r) for r in p.rules]}}


def _text(p: Policy) -> str:
    return yaml.safe_dump(document(p), sort_keys=False, allow_unicode=True, width=1 << 20,
                          default_flow_style=False, explicit_start=False)


def load(items: list[Canonical]) -> list[Policy]:
    """The policies of stored canonical forms, with their origins. Raises PolicyError (naming the
    stored policy) when one does not parse, which `dump` makes impossible for what it wrote."""
    policies: list[Policy] = []
    diagnostics: list[Diagnostic] = []
    for c in items:
        try:
            (p,) = parse_policies([(c.file, c.text)])
        except PolicyError as exc:
            diagnostics.extend(Diagnostic(c.file, c.line, f"stored policy {c.name!r}: {d.message}")
                               for d in exc.diagnostics)
            continue
        except ValueError:  # not exactly one document
            diagnostics.append(Diagnostic(c.file, c.line, f"stored policy {c.name!r}: not one document"))
            continue
        if len(c.rule_lines) != len(p.rules):
            diagnostics.append(Diagnostic(c.file, c.line, f"stored policy {c.name!r}: its rule lines do not match"))
            continue
        rules = tuple(dataclasses.replace(r, line=n) for r, n in zip(p.rules, c.rule_lines, strict=True))
        policies.append(dataclasses.replace(p, rules=rules, line=c.line, source=c.text))
    if diagnostics:
        raise PolicyError(diagnostics)
    return policies


def dump(p: Policy) -> Canonical:
    """The canonical form of `p`, checked: it re-parses to `p` (ValueError otherwise)."""
    c = Canonical(p.name, p.file, p.line, _text(p), tuple(r.line for r in p.rules))
    try:
        (again,) = load([c])
    except (PolicyError, ValueError) as exc:
        raise ValueError(f"policy {p.name!r}: its stored form does not parse again: {exc}") from None
    if again != p:
        raise ValueError(f"policy {p.name!r}: its stored form parses to a different policy")
    return c
