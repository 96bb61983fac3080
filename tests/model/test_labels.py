"""Labels: an immutable, hashable mapping with Kubernetes-style keys (POLICY.md section 1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.model import QUARANTINE_LABEL, Labels, label_key_error
from guestward.model.labels import label_value_error

pairs = st.dictionaries(st.sampled_from(["a", "b", "zone", "env", "x.io/y"]), st.sampled_from(["1", "2", "web", ""]))


@settings(max_examples=100, deadline=None)
@given(pairs, st.randoms())
def test_equality_and_hash_do_not_depend_on_insertion_order(items: dict[str, str], rnd: object) -> None:
    shuffled = list(items.items())
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = Labels(items), Labels(dict(shuffled))
    assert a == b and hash(a) == hash(b)
    assert dict(a) == items and len(a) == len(items)
    assert {a: 1}[b] == 1
    assert list(a) == sorted(items)
    assert a.pairs() == tuple(sorted(items.items()))


@settings(max_examples=100, deadline=None)
@given(pairs, pairs)
def test_equal_exactly_when_the_pairs_are_equal(x: dict[str, str], y: dict[str, str]) -> None:
    assert (Labels(x) == Labels(y)) == (x == y)
    if x != y:
        assert Labels(x) != Labels(y)


def test_mapping_behaviour_and_immutability() -> None:
    lab = Labels({"zone": "web", "env": "prod"})
    assert lab["zone"] == "web" and lab.get("nope") is None and "env" in lab and "prod" not in lab
    with pytest.raises(KeyError):
        lab["missing"]
    with pytest.raises((AttributeError, TypeError)):
        lab["zone"] = "db"  # type: ignore[index]
    with pytest.raises(AttributeError):
        lab.extra = 1  # type: ignore[attr-defined]
    assert Labels() == Labels({}) and len(Labels()) == 0
    assert Labels({"a": "1"}) != {"a": "1"}  # only equal to other label sets
    assert "zone" in repr(lab) and "web" in repr(lab)


def test_with_and_without_return_new_label_sets() -> None:
    lab = Labels({"zone": "web"})
    more = lab.with_label("env", "prod")
    assert more == Labels({"zone": "web", "env": "prod"}) and lab == Labels({"zone": "web"})
    assert more.with_label("zone", "db")["zone"] == "db"
    assert more.without("zone") == Labels({"env": "prod"}) and more.without("nope") == more


def test_quarantine() -> None:
    key, value = QUARANTINE_LABEL
    assert (key, value) == ("guestward.dev/quarantine", "true")
    assert Labels({key: value}).quarantined
    assert Labels({"zone": "web"}).with_label(key, value).quarantined
    assert not Labels({key: "false"}).quarantined
    assert not Labels({key: "True"}).quarantined
    assert not Labels().quarantined
    assert not Labels({key: value}).without(key).quarantined


@pytest.mark.parametrize("key", [
    "zone", "a", "Z9", "a-b_c.d", "a" * 63, "guestward.dev/quarantine", "example.com/team", "a.b-c.d/x",
    "k8s.io/" + "n" * 63, ".".join(["a" * 63] * 3) + "/n",
])
def test_valid_label_keys(key: str) -> None:
    assert label_key_error(key) is None


@pytest.mark.parametrize("key", [
    "", "-a", "a-", "_a", "a_", ".a", "a b", "a" * 64, "zone\n", "\nzone", "Example.com/a", "/a", "a/",
    "a/b/c", "ex_ample.com/a", "-ex.com/a", "ex..com/a", "a" * 64 + ".com/x", ("a" * 63 + ".") * 4 + "com/x",
    "zone\x00", "zöne",
])
def test_invalid_label_keys(key: str) -> None:
    err = label_key_error(key)
    assert err is not None and "invalid label key" in err and repr(key) in err


def test_label_keys_that_are_not_strings() -> None:
    assert label_key_error(42) is not None  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "ok"), [
    ("", True), ("web", True), ("a-b_c.D9", True), ("v" * 63, True), ("v" * 64, False), ("-a", False),
    ("a b", False), ("web\n", False), ("a/b", False), ("é", False),
])
def test_label_values(value: str, ok: bool) -> None:
    assert (label_value_error(value) is None) == ok
