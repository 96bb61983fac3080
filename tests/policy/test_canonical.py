"""The stored form of a policy: whatever the parser accepts, however it was written (directives,
tags, anchors, CRLF, a byte order mark, several documents), is stored as plain YAML that parses
again, on its own, to the very same policy with the same origin."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.policy import Policy, PolicyError, parse_policies
from guestward.policy.canonical import dump, load
from tests.policy.hostile import hostile_file

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TAG_FILE = ("%TAG !g! tag:yaml.org,2002:\n---\napiVersion: !g!str guestward.dev/v1\nkind: !g!str Policy\n"
            "metadata: {name: !g!str tagged}\nspec:\n  tier: !g!str application\n  rules:\n"
            "    - {name: !g!str web, action: !g!str allow, to: {guests: {zone: !g!str web}},\n"
            "       ports: [!g!str tcp/443]}\n")


def without_origin(p: Policy) -> Policy:
    return dataclasses.replace(p, file="", line=0, rules=tuple(dataclasses.replace(r, line=0) for r in p.rules))


def test_the_tag_directive_of_the_issue_is_stored_without_it() -> None:
    (p,) = parse_policies([("tag.yaml", TAG_FILE)])
    c = dump(p)
    assert "%" not in c.text and "!" not in c.text
    assert (c.file, c.line, c.rule_lines) == ("tag.yaml", 3, (9,))
    assert load([c]) == [p]
    assert p.rules[0].ports[0].first == 443
    with pytest.raises(PolicyError, match="undefined tag handle"):  # the slice the store kept before
        parse_policies([("tag.yaml", TAG_FILE.split("\n", 1)[1])])


@SETTINGS
@given(st.data())
def test_every_accepted_file_is_stored_so_that_it_parses_to_the_same_policy(data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(["a", "b.c", "d-e", "f1"]), min_size=1, max_size=3, unique=True))
    text, docs = data.draw(hostile_file(names))
    policies = parse_policies([("dir/hostile.yaml", text)])
    plain = parse_policies([("plain.yaml", yaml.safe_dump_all(docs, sort_keys=False))])
    assert [without_origin(p) for p in policies] == [without_origin(p) for p in plain]  # means what it says
    for p in policies:
        c = dump(p)
        assert load([c]) == [p]  # equal: name, tier, order, rules, file, line and every rule's line
        tokens = {type(t).__name__ for t in yaml.scan(c.text)}
        assert not tokens & {"DirectiveToken", "TagToken", "AnchorToken", "AliasToken"}, c.text
        assert c.file == "dir/hostile.yaml" and c.line == p.line and c.rule_lines == tuple(r.line for r in p.rules)
