"""The policy language (POLICY.md section 2): valid documents parse to the values they say, and every
kind of error of section 2.4 is rejected as `file:line: message`, pointing at the line of the mistake."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from guestward.model import Expression, Operator, Selector
from guestward.policy import (
    TIERS,
    Action,
    AnyPeer,
    CidrPeer,
    Diagnostic,
    GuestsPeer,
    PolicyError,
    PortRange,
    parse_policies,
    parse_port,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lab" / "policy.yaml"

HEAD = """\
apiVersion: guestward.dev/v1
kind: Policy
metadata:
  name: p
spec:
  tier: application
  rules:
"""


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the one line of `text` that holds `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def only_error(sources: list[tuple[str, str]]) -> Diagnostic:
    with pytest.raises(PolicyError) as info:
        parse_policies(sources)
    assert len(info.value.diagnostics) == 1, str(info.value)
    d = info.value.diagnostics[0]
    assert str(info.value) == f"{d.file}:{d.line}: {d.message}"
    return d


def assert_error(text: str, needle: str, *words: str, file: str = "policy.yaml") -> None:
    d = only_error([(file, text)])
    assert (d.file, d.line) == (file, line_of(text, needle)), str(d)
    for w in words:
        assert w in d.message, str(d)


# -- errors (POLICY.md 2.4) -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "needle", "words"), [
    (HEAD + "    - name: r\n      action: allow\n     to: {guests: {}}\n", "     to:", ("invalid YAML",)),
    ("apiVersion: [guestward.dev/v1\nkind: Policy\n", "kind:", ("invalid YAML", "flow sequence at line 1")),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: x}\nspec: {tier: baseline}\n\tbad: tab\n",
     "bad: tab", ("invalid YAML", "\\t")),
    ("apiVersion: guestward.dev/v1\n kind: Policy\n", "kind", ("invalid YAML", "not allowed")),
    ("apiVersion: guestward.dev/v1\nkind: @Policy\n", "kind", ("invalid YAML", "'@'")),
], ids=["indentation", "unclosed-flow", "tab", "mapping-in-scalar", "reserved-char"])
def test_bad_yaml(text: str, needle: str, words: tuple[str, ...]) -> None:
    assert_error(text, needle, *words, file="bad.yaml")


def test_bad_yaml_unclosed_quote_names_where_it_opened() -> None:
    text = 'apiVersion: "guestward.dev/v1\nkind: Policy\nmetadata: {name: p}\n'
    d = only_error([("q.yaml", text)])
    # The parser notices at the end of the stream; the message names the line of the opening quote.
    assert d.file == "q.yaml" and d.line == len(text.splitlines()) + 1
    assert "invalid YAML" in d.message and "quoted scalar at line 1" in d.message


@pytest.mark.parametrize(("text", "needle", "field"), [
    ("apiVersion: guestward.dev/v1\nkind: Policy\nbogus: 1\nmetadata: {name: p}\nspec: {tier: baseline}\n",
     "bogus", "bogus"),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata:\n  name: p\n  nmae: q\nspec: {tier: baseline}\n",
     "nmae", "nmae"),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  tier: baseline\n  extra:\n"
     "    a: 1\n    b: 2\n", "extra", "extra"),
    (HEAD + "    - name: r\n      action: allow\n      port: [tcp/80]\n", "port:", "port"),
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests: {a: b}\n        cdir: [10.0.0.0/8]\n",
     "cdir", "cdir"),
    (HEAD + "    - name: r\n      action: allow\n      to:\n        guests:\n          matchExpressions:\n"
     "            - key: a\n              operator: Exists\n              value: [x]\n", "value:", "value"),
], ids=["document", "metadata", "spec-block-value", "rule", "peer", "match-expression"])
def test_unknown_field_at_every_level(text: str, needle: str, field: str) -> None:
    assert_error(text, needle, f"unknown field {field!r}")


@pytest.mark.parametrize(("text", "needle", "words"), [
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests:\n          zone: web\n"
     "          'bad key!': x\n", "bad key!", ("invalid label key", "bad key!")),
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests:\n          matchLabels:\n"
     "            zone: web\n            -lead: x\n", "-lead", ("invalid label key",)),
    (HEAD + "    - name: r\n      action: allow\n      to:\n        guests:\n          matchExpressions:\n"
     "            - key: 'no spaces'\n              operator: Exists\n", "no spaces", ("invalid label key",)),
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests:\n          matchExpressions:\n"
     "            - key: a\n              operator: Equals\n              values: [x]\n", "Equals",
     ("operator", "'In'", "'NotIn'", "'Exists'", "'DoesNotExist'", "Equals")),
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests:\n          matchExpressions:\n"
     "            - key: a\n              operator: In\n", "operator: In", ("In", "non-empty values")),
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests:\n          matchExpressions:\n"
     "            - key: a\n              operator: NotIn\n              values: []\n", "operator: NotIn",
     ("NotIn", "non-empty values")),
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests:\n          matchExpressions:\n"
     "            - key: a\n              operator: Exists\n              values: [x]\n", "values: [x]",
     ("Exists", "takes no values")),
    (HEAD + "    - name: r\n      action: allow\n      from:\n        guests:\n          matchExpressions:\n"
     "            - key: a\n              operator: DoesNotExist\n              values: [x]\n", "values: [x]",
     ("DoesNotExist", "takes no values")),
    (HEAD + "    - name: r\n      action: allow\n      to: {guests: {port: 80}}\n", "port: 80", ("must be a string",)),
    (HEAD + "    - name: r\n      action: allow\n      to: {guests: {zone: 'a b'}}\n", "a b",
     ("invalid label value",)),
    (HEAD + "    - name: r\n      action: allow\n      to:\n        guests:\n          matchExpressions:\n"
     "            - key: a\n              operator: In\n              values:\n                - ok\n"
     "                - 'not ok'\n", "not ok", ("invalid label value",)),
    (HEAD + "    - name: r\n      action: allow\n      to:\n        guests: {zone: web}\n        cidr: [10.0.0.0/8]\n",
     "      to:", ("either guests: or cidr:",)),
    (HEAD + "    - name: r\n      action: allow\n      to:\n        cidr:\n          - 10.0.0.0/8\n"
     "          - 10.0.0.1/8\n",
     "10.0.0.1/8", ("invalid cidr",)),
], ids=["plain-key", "long-form-key", "expression-key", "operator", "in-without-values",
        "notin-empty-values", "exists-with-values", "doesnotexist-with-values", "non-string-value",
        "bad-value", "bad-expression-value", "guests-and-cidr", "cidr-host-bits"])
def test_bad_selector_or_peer(text: str, needle: str, words: tuple[str, ...]) -> None:
    assert_error(text, needle, *words)


@pytest.mark.parametrize(("port", "words"), [
    ("tcp/0", ("1-65535",)),
    ("tcp/70000", ("1-65535",)),
    ("udp/65536", ("1-65535",)),
    ("http", ("expected tcp/PORT",)),
    ("tcp/90-80", ("range ends before it starts",)),
    ("tcp/", ("expected tcp/PORT",)),
    ("sctp/80", ("expected tcp/PORT",)),
    ("tcp/-5", ("expected tcp/PORT",)),
])
def test_bad_port(port: str, words: tuple[str, ...]) -> None:
    text = HEAD + f"    - name: r\n      action: allow\n      ports:\n        - tcp/80\n        - '{port}'\n"
    assert_error(text, f"'{port}'", repr(port), *words)
    with pytest.raises(ValueError, match="port"):
        parse_port(port)


def test_port_that_is_not_a_string() -> None:
    text = HEAD + "    - name: r\n      action: allow\n      ports: [443]\n"
    assert_error(text, "ports:", "ports")


def test_empty_ports_list_is_refused() -> None:
    text = HEAD + "    - name: r\n      action: allow\n      ports: []\n"
    assert_error(text, "ports:", "omit ports")


@pytest.mark.parametrize("tier", ["apps", "Application", "", "0"])
def test_unknown_tier(tier: str) -> None:
    text = f"apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {{name: p}}\nspec:\n  order: 5\n  tier: '{tier}'\n"
    d = only_error([("t.yaml", text)])
    assert (d.file, d.line) == ("t.yaml", line_of(text, "tier:"))
    assert "tier" in d.message and repr(tier) in d.message
    assert all(t in d.message for t in TIERS), d.message


@pytest.mark.parametrize(("text", "needle", "words"), [
    ("apiVersion: guestward.dev/v2\nkind: Policy\nmetadata: {name: p}\nspec: {tier: baseline}\n", "v2",
     ("apiVersion",)),
    ("apiVersion: guestward.dev/v1\nkind: Poolicy\nmetadata: {name: p}\nspec: {tier: baseline}\n", "Poolicy",
     ("kind",)),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: Shop_1}\nspec: {tier: baseline}\n", "Shop_1",
     ("invalid policy name",)),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: \"shop\\n\"}\nspec: {tier: baseline}\n", "shop",
     ("invalid policy name",)),
    (HEAD + "    - name: Rule_1\n      action: allow\n", "Rule_1", ("invalid rule name",)),
    (HEAD + "    - name: r\n      action: permit\n", "permit", ("action", "'allow'", "permit")),
    (HEAD + "    - name: r\n      action: allow\n      action: deny\n", "action: deny", ("duplicate key 'action'",)),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  tier: baseline\n  order: -1\n",
     "order", ("order",)),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  tier: baseline\n  order: '5'\n",
     "order", ("order",)),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: p}\n", "apiVersion", ("missing field 'spec'",)),
    ("- just\n- a list\n", "just", ("must be a map",)),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: &m {name: p}\nspec: {tier: baseline}\nx: *m\n", "&m",
     ("aliases",)),
    ("apiVersion: !!python/object:os.system guestward.dev/v1\nkind: Policy\n", "python", ("unsupported YAML tag",)),
    ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: !!int x}\n", "!!int", ("invalid value",)),
], ids=["api-version", "kind", "policy-name", "policy-name-newline", "rule-name", "action", "duplicate-key",
        "negative-order", "string-order", "missing-spec", "not-a-map", "alias", "python-tag", "bad-int"])
def test_other_invalid_documents(text: str, needle: str, words: tuple[str, ...]) -> None:
    assert_error(text, needle, *words)


def doc(name: str, tier: str = "baseline", rules: str = "") -> str:
    return f"apiVersion: guestward.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  tier: {tier}\n" + (
        f"  rules:\n{rules}" if rules else "")


def test_duplicate_policy_names_in_one_file() -> None:
    text = doc("shop") + "---\n" + doc("other") + "---\n" + doc("shop", "platform")
    d = only_error([("a.yaml", text)])
    second = [i for i, line in enumerate(text.splitlines(), 1) if line == "apiVersion: guestward.dev/v1"][2]
    assert (d.file, d.line) == ("a.yaml", second)
    assert "duplicate policy name 'shop'" in d.message and "a.yaml:1" in d.message


def test_duplicate_policy_names_across_files() -> None:
    a = doc("keep") + "---\n" + doc("shop")
    b = "# the same name again\n\n" + doc("shop", "platform")
    d = only_error([("dir/a.yaml", a), ("dir/b.yaml", b)])
    assert (d.file, d.line) == ("dir/b.yaml", line_of(b, "apiVersion"))
    first = [i for i, line in enumerate(a.splitlines(), 1) if line.startswith("apiVersion")][1]
    assert f"dir/a.yaml:{first}" in d.message and "'shop'" in d.message


def test_duplicate_rule_names() -> None:
    text = doc("p", rules="    - name: r\n      action: allow\n    - name: s\n      action: deny\n"
                          "    - name: r # again\n      action: deny\n")
    d = only_error([("r.yaml", text)])
    assert (d.file, d.line) == ("r.yaml", line_of(text, "again"))
    assert "duplicate rule name 'r'" in d.message and "policy 'p'" in d.message
    assert f"first at line {text.splitlines().index('    - name: r') + 1}" in d.message


def test_every_problem_of_every_file_is_reported_and_nothing_is_returned() -> None:
    good = doc("good")
    bad1 = HEAD + "    - name: r\n      action: allow\n      ports: [tcp/0]\n"
    bad2 = doc("p2", tier="nope")
    with pytest.raises(PolicyError) as info:
        parse_policies([("good.yaml", good), ("b1.yaml", bad1), ("b2.yaml", bad2 + "---\n" + doc("good"))])
    found = [(d.file, d.line) for d in info.value.diagnostics]
    assert ("b1.yaml", line_of(bad1, "tcp/0")) in found
    assert ("b2.yaml", line_of(bad2, "tier:")) in found
    assert any(d.file == "b2.yaml" and "duplicate policy name 'good'" in d.message for d in info.value.diagnostics)
    assert info.value.diagnostics == sorted(info.value.diagnostics)
    assert not any(d.file == "good.yaml" for d in info.value.diagnostics)


def test_oversized_source_is_refused() -> None:
    d = only_error([("huge.yaml", "#" * (8 * 1024 * 1024 + 1))])
    assert (d.file, d.line) == ("huge.yaml", 1) and "8 MiB" in d.message


# -- valid documents ------------------------------------------------------------------------------------------

def test_example_policy_file() -> None:
    text = EXAMPLE.read_text()
    policies = parse_policies([(str(EXAMPLE), text)])
    assert [p.name for p in policies] == ["quarantine-remediation", "platform-guards", "shop", "baseline"]
    assert [p.tier for p in policies] == list(TIERS)
    by_name = {p.name: p for p in policies}
    assert by_name["platform-guards"].order == 10 and by_name["shop"].order == 100
    assert by_name["baseline"].order == 1000  # the default
    for p in policies:
        assert p.file == str(EXAMPLE)
        assert text.splitlines()[p.line - 1].startswith("apiVersion:")
        assert p.source.startswith("apiVersion:") and f"name: {p.name}" in p.source

    guards = {r.name: r for r in by_name["platform-guards"].rules}
    assert guards["no-dev-to-db"].action is Action.DENY
    assert guards["no-dev-to-db"].source == GuestsPeer(Selector.of({}, [Expression("env", Operator.IN, ("dev",))]))
    assert guards["no-dev-to-db"].destination == GuestsPeer(Selector.of({"zone": "db"}))
    assert guards["no-dev-to-db"].ports == ()
    assert guards["dns-for-all"].source == GuestsPeer(Selector())
    assert set(guards["dns-for-all"].ports) == {PortRange("udp", 53, 53), PortRange("tcp", 53, 53)}
    assert guards["monitoring-everywhere"].destination == AnyPeer()
    assert guards["app-teams-decide"].action is Action.PASS
    assert guards["app-teams-decide"].line == line_of(text, "name: app-teams-decide")

    shop = {r.name: r for r in by_name["shop"].rules}
    assert [r.name for r in by_name["shop"].rules] == ["outside-to-lb", "lb-to-web", "web-to-db", "web-not-outside"]
    assert shop["outside-to-lb"].source == CidrPeer((ip_network("10.77.0.250/32"),))
    assert set(shop["outside-to-lb"].ports) == {PortRange("tcp", 443, 443), PortRange("icmp")}
    assert shop["web-to-db"].source == GuestsPeer(
        Selector.of({"zone": "web"}, [Expression("env", Operator.NOT_IN, ("dev",))]))
    assert shop["web-not-outside"].destination == CidrPeer((ip_network("10.77.0.250/32"),))
    assert by_name["quarantine-remediation"].rules[0].source == AnyPeer()


def test_policy_md_example_document() -> None:
    text = """\
apiVersion: guestward.dev/v1
kind: Policy
metadata:
  name: shop
spec:
  tier: application          # quarantine | platform | application | baseline
  order: 100                 # optional, default 1000; lower is evaluated first within a tier
  rules:
    - name: lb-to-web
      action: allow          # allow | deny | pass
      from: {guests: {zone: lb}}
      to: {guests: {zone: web}}
      ports: [tcp/443, tcp/8000-8080]
    - name: web-to-db
      action: allow
      from: {guests: {matchLabels: {zone: web}, matchExpressions: [{key: env, operator: In, values: [prod]}]}}
      to: {guests: {zone: db}}
      ports: [tcp/5432]
    - name: admins-in
      action: allow
      from: {cidr: [192.0.2.0/24, "2001:db8::/32"]}
      to: {guests: {zone: web}}
      ports: [tcp/22, icmp]
"""
    [p] = parse_policies([("shop.yaml", text)])
    assert (p.name, p.tier, p.order, p.line) == ("shop", "application", 100, 1)
    lb, web, admins = p.rules
    assert set(lb.ports) == {PortRange("tcp", 443, 443), PortRange("tcp", 8000, 8080)}
    assert web.source == GuestsPeer(Selector.of({"zone": "web"}, [Expression("env", Operator.IN, ("prod",))]))
    assert admins.source == CidrPeer((ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")))
    assert [r.line for r in p.rules] == [line_of(text, f"name: {r}") for r in ("lb-to-web", "web-to-db", "admins-in")]


def test_a_directory_of_files_and_multi_document_files(tmp_path: Path) -> None:
    (tmp_path / "10-platform.yaml").write_text(
        "# platform\n---\n" + doc("guards", "platform", "    - name: dns\n      action: allow\n      ports: [udp/53]\n")
        + "---\n---\n" + doc("more", "platform"))
    (tmp_path / "20-app.yaml").write_text(doc("app", "application"))
    (tmp_path / "30-empty.yaml").write_text("# nothing here yet\n")
    sources = [(str(f), f.read_text()) for f in sorted(tmp_path.glob("*.yaml"))]
    policies = parse_policies(sources)
    assert [(p.name, p.tier, p.file) for p in policies] == [
        ("guards", "platform", sources[0][0]), ("more", "platform", sources[0][0]),
        ("app", "application", sources[1][0])]
    assert policies[0].line == 3 and policies[0].rules[0].ports == (PortRange("udp", 53, 53),)
    assert policies[1].line == sources[0][1].splitlines().index("  name: more") - 2
    assert parse_policies([("empty.yaml", "")]) == []


def test_normalisation_of_equivalent_writings() -> None:
    a = doc("a", rules="    - name: r\n      action: allow\n      from: {guests: {zone: web, env: prod}}\n"
                       "      to: {cidr: [10.0.0.0/8, 10.0.0.0/8, '2001:db8::/32']}\n"
                       "      ports: [udp/53, tcp/80, udp/53]\n")
    b = doc("a", rules="    - name: r\n      action: allow\n      from:\n        guests:\n          matchLabels:\n"
                       "            env: prod\n            zone: web\n"
                       "      to: {cidr: ['2001:db8::/32', 10.0.0.0/8]}\n      ports: [TCP/80, ' udp/53 ']\n")
    [pa], [pb] = parse_policies([("a", a)]), parse_policies([("b", b)])
    assert pa.rules[0].source == pb.rules[0].source
    assert pa.rules[0].destination == pb.rules[0].destination
    assert pa.rules[0].ports == pb.rules[0].ports == (PortRange("tcp", 80, 80), PortRange("udp", 53, 53))


@pytest.mark.parametrize(("text", "expected"), [
    ("tcp/443", PortRange("tcp", 443, 443)),
    ("tcp/8000-8080", PortRange("tcp", 8000, 8080)),
    ("udp/1-65535", PortRange("udp", 1, 65535)),
    ("icmp", PortRange("icmp")),
    ("icmpv6", PortRange("icmpv6")),
    ("any", PortRange("any")),
])
def test_parse_port(text: str, expected: PortRange) -> None:
    assert parse_port(text) == expected
    assert str(parse_port(text)) == text
    assert parse_port(str(expected)) == expected


def test_port_coverage() -> None:
    r = parse_port("tcp/8000-8080")
    assert r.covers("tcp", 8000) and r.covers("tcp", 8080) and not r.covers("tcp", 8081)
    assert not r.covers("udp", 8000) and not r.covers("tcp", 7999)
    assert parse_port("any").covers("udp", 9) and parse_port("any").covers("icmp", 0)
    assert parse_port("icmp").covers("icmp", 0) and not parse_port("icmp").covers("icmpv6", 0)
