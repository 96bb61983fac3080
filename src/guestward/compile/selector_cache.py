"""The selector cache: which of the policy set's selectors select a label set.

Every guest with the same labels (one identity) selects the same selectors, so the answer is
computed once per label set and cached. Computing it does not scan every selector: a selector with
`matchLabels` can only select a label set that holds its first pair, so selectors are indexed by
that pair, and only selectors without `matchLabels` (expressions only, or `{}`) are checked for every
label set. The result is exactly `{d for d, s in selectors.items() if s.matches(labels)}`, in the
order of `selectors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from guestward.compile.plan import QUARANTINE_SET
from guestward.model import QUARANTINE_LABEL, Labels, Selector
from guestward.policy import GuestsPeer, Policy


def policy_selectors(policies: Iterable[Policy]) -> dict[str, Selector]:
    """Every distinct selector of the policy set, plus the quarantine selector, by digest."""
    out: dict[str, Selector] = {QUARANTINE_SET: Selector.of(dict([QUARANTINE_LABEL]))}
    for p in policies:
        for r in p.rules:
            for peer in (r.source, r.destination):
                if isinstance(peer, GuestsPeer):
                    out[peer.selector.digest] = peer.selector
    return out


class SelectorCache:
    def __init__(self, selectors: Mapping[str, Selector]) -> None:
        self._selectors = dict(selectors)
        self._order = {d: i for i, d in enumerate(self._selectors)}
        self._by_pair: dict[tuple[str, str], list[str]] = {}
        self._unindexed: list[str] = []
        for d, s in self._selectors.items():
            if s.match_labels:
                self._by_pair.setdefault(s.match_labels[0], []).append(d)
            else:
                self._unindexed.append(d)
        self._cache: dict[Labels, tuple[str, ...]] = {}

    def matching(self, labels: Labels) -> tuple[str, ...]:
        """The digests of the selectors that select `labels`."""
        hit = self._cache.get(labels)
        if hit is None:
            candidates = list(self._unindexed)
            for pair in labels.pairs():
                candidates += self._by_pair.get(pair, ())
            found = {d for d in candidates if self._selectors[d].matches(labels)}
            hit = tuple(sorted(found, key=self._order.__getitem__))
            self._cache[labels] = hit
        return hit
