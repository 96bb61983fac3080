"""Selectors with Kubernetes semantics (POLICY.md 2.1), and their canonical form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.model import Expression, Labels, Operator, Selector

WEB_PROD = Labels({"zone": "web", "env": "prod"})
WEB_DEV = Labels({"zone": "web", "env": "dev"})
DB = Labels({"zone": "db"})
NONE = Labels()
ALL = [WEB_PROD, WEB_DEV, DB, NONE]


def selected(s: Selector) -> list[Labels]:
    return [lab for lab in ALL if s.matches(lab)]


def test_empty_selector_selects_every_guest() -> None:
    assert selected(Selector()) == ALL
    assert selected(Selector.of()) == ALL
    assert selected(Selector.of({}, [])) == ALL


def test_match_labels() -> None:
    assert selected(Selector.of({"zone": "web"})) == [WEB_PROD, WEB_DEV]
    assert selected(Selector.of({"zone": "web", "env": "prod"})) == [WEB_PROD]
    assert selected(Selector.of({"zone": "nope"})) == []
    assert selected(Selector.of({"zone": ""})) == []  # an empty value is a value, not "missing"
    assert Selector.of({"zone": ""}).matches(Labels({"zone": ""}))


def test_in() -> None:
    s = Selector.of({}, [Expression("env", Operator.IN, ("prod", "staging"))])
    assert selected(s) == [WEB_PROD]  # a guest without the key is not In anything


def test_not_in_also_selects_guests_without_the_key() -> None:
    s = Selector.of({}, [Expression("env", Operator.NOT_IN, ("prod",))])
    assert selected(s) == [WEB_DEV, DB, NONE]


def test_exists_and_does_not_exist() -> None:
    assert selected(Selector.of({}, [Expression("env", Operator.EXISTS)])) == [WEB_PROD, WEB_DEV]
    assert selected(Selector.of({}, [Expression("env", Operator.DOES_NOT_EXIST)])) == [DB, NONE]
    assert Selector.of({}, [Expression("env", Operator.EXISTS)]).matches(Labels({"env": ""}))


def test_all_parts_must_match() -> None:
    s = Selector.of({"zone": "web"}, [Expression("env", Operator.NOT_IN, ("dev",)),
                                      Expression("env", Operator.EXISTS)])
    assert selected(s) == [WEB_PROD]
    contradictory = Selector.of({}, [Expression("env", Operator.EXISTS), Expression("env", Operator.DOES_NOT_EXIST)])
    assert selected(contradictory) == []


def test_equivalent_writings_share_canonical_form_and_digest() -> None:
    a = Selector.of({"zone": "web", "env": "prod"},
                    [Expression("tier", Operator.IN, ("b", "a", "b")), Expression("x", Operator.EXISTS)])
    b = Selector.of({"env": "prod", "zone": "web"},
                    [Expression("x", Operator.EXISTS), Expression("tier", Operator.IN, ("a", "b"))])
    assert a == b and hash(a) == hash(b)
    assert a.canonical() == b.canonical() and a.digest == b.digest
    assert len(a.digest) == 12 and int(a.digest, 16) >= 0


@pytest.mark.parametrize(("x", "y"), [
    (Selector.of({"zone": "web"}), Selector.of({"zone": "db"})),
    (Selector.of({"zone": "web"}), Selector.of({}, [Expression("zone", Operator.EXISTS)])),
    (Selector.of({}, [Expression("a", Operator.IN, ("1",))]),
     Selector.of({}, [Expression("a", Operator.NOT_IN, ("1",))])),
    (Selector.of({}, [Expression("a", Operator.IN, ("1", "2"))]),
     Selector.of({}, [Expression("a", Operator.IN, ("1",))])),
    (Selector.of({"a": "1,2"}), Selector.of({}, [Expression("a", Operator.IN, ("1", "2"))])),
    (Selector(), Selector.of({"a": "1"})),
])
def test_different_selectors_have_different_digests(x: Selector, y: Selector) -> None:
    assert x.canonical() != y.canonical() and x.digest != y.digest


KEYS = ["a", "b", "c"]
VALUES = ["1", "2", "3"]
labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES)).map(Labels)
expr_st = st.builds(Expression, st.sampled_from(KEYS), st.sampled_from(list(Operator)),
                    st.lists(st.sampled_from(VALUES), min_size=1, max_size=3).map(tuple))


def reference(labels: Labels, match_labels: dict[str, str], exprs: list[Expression]) -> bool:
    """Kubernetes' LabelSelector semantics, written out independently."""
    for k, v in match_labels.items():
        if k not in labels or labels[k] != v:
            return False
    for e in exprs:
        has = e.key in labels
        ok = {
            Operator.IN: has and labels.get(e.key) in e.values,
            Operator.NOT_IN: not has or labels.get(e.key) not in e.values,
            Operator.EXISTS: has,
            Operator.DOES_NOT_EXIST: not has,
        }[e.operator]
        if not ok:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(labels_st, st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2),
       st.lists(expr_st, max_size=3), st.randoms())
def test_matches_kubernetes_semantics_and_normalisation_keeps_meaning(
        labels: Labels, ml: dict[str, str], exprs: list[Expression], rnd: object) -> None:
    s = Selector.of(ml, exprs)
    assert s.matches(labels) == reference(labels, ml, exprs)
    shuffled = [Expression(e.key, e.operator, tuple(reversed(e.values))) for e in exprs]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    t = Selector.of(dict(reversed(list(ml.items()))), shuffled + shuffled[:1])  # one written twice
    assert t == s and t.digest == s.digest and t.matches(labels) == s.matches(labels)
