"""Counters read back from listings: every rendered rule is found, drop reasons match the log prefixes,
sums add up per planned rule and per reason, and log rules are never counted as drops."""

from __future__ import annotations

import copy
from typing import Any

from guestward.dataplane import render_plan
from guestward.dataplane.counters import by_rule, drops_by_reason, rule_counters
from guestward.dataplane.render import parse_prefix
from tests.dataplane.nft_sim import list_table
from tests.dataplane.test_render import example_plans


def with_counts(doc: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """The listing with counter values as the kernel prints them: rule number n counted n packets."""
    doc = copy.deepcopy(doc)
    given: list[int] = []
    for n, item in enumerate(doc["nftables"]):
        if "rule" in item:
            expr = item["rule"]["expr"]
            for k, e in enumerate(expr):
                if "counter" in e:  # rendered rules share one COUNTER value: replace, never mutate
                    expr[k] = {"counter": {"packets": n, "bytes": 100 * n}}
            given.append(n)
    return doc, given


def test_every_rendered_rule_is_read_with_its_counts() -> None:
    o = render_plan(example_plans()["hv1"])
    docs, given = zip(*(with_counts(list_table(o, f)) for f in ("bridge", "inet")), strict=True)
    counters = rule_counters(list(docs))
    assert len(counters) == sum(len(c.rules) for c in o.chains.values())
    assert [c.packets for c in counters] == [n for g in given for n in g]
    assert all(c.bytes == 100 * c.packets for c in counters)


def test_reasons_are_the_ones_the_log_prefixes_name() -> None:
    o = render_plan(example_plans()["hv1"])
    prefixes = {}
    for c in o.chains.values():
        for r in c.rules:
            for e in r.expr:
                if "log" in e:
                    label = r.comment.rsplit(" #", 1)[0].removeprefix("log: ")
                    prefixes[(c.family, c.name, label)] = e["log"]["prefix"]
    counters = rule_counters([with_counts(list_table(o, f))[0] for f in ("bridge", "inet")])
    checked = 0
    for c in counters:
        if c.reason is None:
            assert c.verdict != "drop" and not c.logged
            continue
        parsed = parse_prefix(prefixes[(c.family, c.chain, c.label)])
        assert parsed is not None and parsed[0] == c.reason, (c, parsed)
        checked += 1
    assert checked >= 16


def rule(chain: str, comment: str, packets: int, *stmts: Any, family: str = "inet") -> dict[str, Any]:
    return {"rule": {"family": family, "table": "guestward", "chain": chain, "comment": comment,
                     "expr": [{"counter": {"packets": packets, "bytes": packets * 60}}, *stmts]}}


def test_sums_per_planned_rule_and_per_reason_leave_log_rules_out() -> None:
    log = {"log": {"prefix": "gw deny eg-abc a/p/r", "group": 7}}
    doc = {"nftables": [
        rule("eg-abc", "log: a/p/r #1111111111", 20, log),
        rule("eg-abc", "a/p/r #2222222222", 500, {"drop": None}),
        rule("eg-abc", "log: a/p/r #3333333333", 5, log),  # the same planned rule, v6
        rule("eg-abc", "a/p/r #4444444444", 7, {"drop": None}),
        rule("eg-abc", "a/p/ok #5555555555", 9, {"goto": {"target": "ingress"}}),
        rule("eg-abc", "default deny #6666666666", 3, {"drop": None}),
        rule("src-guard", "spoof: arp #7777777777", 2, {"drop": None}, family="bridge"),
        {"rule": {"family": "inet", "table": "other", "chain": "x", "comment": "a/p/r #1", "expr": [
            {"counter": {"packets": 1000, "bytes": 1}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": "guestward", "chain": "x", "expr": [{"accept": None}]}},  # no counter
        {"rule": "nonsense"}, {"set": {"name": "s"}},
    ]}
    counters = rule_counters([doc, {"unexpected": 1}])
    assert drops_by_reason(counters) == {"deny": (507, 507 * 60), "default-deny": (3, 180), "spoof": (2, 120)}
    rows = {(r.chain, r.label, r.verdict): r for r in by_rule(counters)}
    deny = rows[("eg-abc", "a/p/r", "drop")]
    assert (deny.packets, deny.logged, deny.reason, deny.identity) == (507, 25, "deny", "abc")
    assert rows[("eg-abc", "a/p/ok", "goto:ingress")].reason is None
    assert rows[("src-guard", "spoof: arp", "drop")].identity is None
    assert len(rows) == 4
