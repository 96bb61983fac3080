"""Label selectors with Kubernetes semantics (matchLabels + matchExpressions)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from guestward.model.labels import Labels


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, order=True)
class Expression:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        present = self.key in labels
        if self.operator is Operator.EXISTS:
            return present
        if self.operator is Operator.DOES_NOT_EXIST:
            return not present
        if self.operator is Operator.IN:
            return present and labels[self.key] in self.values
        # NotIn, as in Kubernetes, also selects guests that lack the key.
        return not present or labels[self.key] not in self.values


@dataclass(frozen=True)
class Selector:
    """A label selector. The empty selector selects every guest.

    Selectors are normalised (sorted pairs, sorted expressions with sorted values), so two selectors
    written differently but meaning the same thing compare equal and share one named set.
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Expression, ...] = field(default_factory=tuple)

    @staticmethod
    def of(match_labels: dict[str, str] | None = None,
           match_expressions: list[Expression] | None = None) -> Selector:
        exprs = tuple(sorted({  # a set: an expression written twice means it once
            Expression(e.key, e.operator, tuple(sorted(set(e.values)))) for e in (match_expressions or [])
        }))
        return Selector(tuple(sorted((match_labels or {}).items())), exprs)

    def matches(self, labels: Labels) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(e.matches(labels) for e in self.match_expressions)

    def canonical(self) -> str:
        """A stable text form: equal selectors give equal text."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for e in self.match_expressions:
            parts.append(f"{e.key} {e.operator.value} ({','.join(e.values)})")
        return "{" + "; ".join(parts) + "}"

    @property
    def digest(self) -> str:
        """Short stable id, used to name the selector's nft set."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:12]
