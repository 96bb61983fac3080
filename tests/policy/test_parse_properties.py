"""Properties of the parser: whatever the input, it returns policies or raises PolicyError (never anything
else), every diagnostic names a line of its file, and what it accepts means what it says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.model import Expression, Operator, Selector
from guestward.policy import TIERS, Action, GuestsPeer, Policy, PolicyError, PortRange, parse_policies

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lab" / "policy.yaml"
EXAMPLE_TEXT = EXAMPLE.read_text()
YAML_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what YAML counts as the end of a line
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_diagnose(sources: list[tuple[str, str]]) -> list[Policy] | PolicyError:
    try:
        return parse_policies(sources)
    except PolicyError as exc:
        assert exc.diagnostics, "a PolicyError without diagnostics"
        files = {f: t for f, t in sources}
        for d in exc.diagnostics:
            assert d.file in files
            assert 1 <= d.line <= len(YAML_LINE_BREAK.findall(files[d.file])) + 2, str(d)
            assert d.message and "\n" not in d.message, repr(d.message)
        return exc


# -- arbitrary input ------------------------------------------------------------------------------------------

YAML_CHARS = list(":-[]{}#&*!|>'\"%@`,? \t\n")
YAMLISH = st.sampled_from([*YAML_CHARS, "---\n", "...\n", "  ", "- ", ": ", "apiVersion", "guestward.dev/v1", "Policy",
                           "\\u0000", "!!"])


@SETTINGS
@given(st.one_of(st.text(), st.lists(YAMLISH).map("".join), st.binary().map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text(text: str) -> None:
    parse_or_diagnose([("fuzz.yaml", text)])


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
                    st.sampled_from(["allow", "deny", "pass", "tcp/80", "tcp/0", "icmp", "In", "Exists", "10.0.0.0/8",
                                     "application", "guestward.dev/v1", "Policy", "zone", ""]))
keys = st.one_of(st.text(max_size=8), st.sampled_from([
    "apiVersion", "kind", "metadata", "name", "spec", "tier", "order", "rules", "action", "from", "to", "ports",
    "guests", "cidr", "matchLabels", "matchExpressions", "key", "operator", "values", "labels", "annotations"]))
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                      max_leaves=25)


@SETTINGS
@given(st.lists(nested, min_size=1, max_size=3))
def test_arbitrary_yaml_shaped_documents(docs: list[Any]) -> None:
    parse_or_diagnose([("shaped.yaml", yaml.safe_dump_all(docs))])


@SETTINGS
@given(st.dictionaries(keys, nested, max_size=4), nested)
def test_policy_shaped_documents_with_arbitrary_parts(spec_extra: dict[str, Any], rules: Any) -> None:
    document = {"apiVersion": "guestward.dev/v1", "kind": "Policy", "metadata": {"name": "p"},
                "spec": {"tier": "platform", "rules": rules, **spec_extra}}
    parse_or_diagnose([("p.yaml", yaml.safe_dump(document))])


# -- mutations of a valid document ----------------------------------------------------------------------------

@st.composite
def text_mutation(draw: st.DrawFn) -> str:
    text = EXAMPLE_TEXT
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 20)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "dup-line", "drop-line", "indent"]))
        lines = text.split("\n")
        k = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.text(st.sampled_from(YAML_CHARS) | st.characters(), max_size=5)) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(["0", "-1", "x", "tcp/0", "'", "{", "]", "Exists", ""])) + text[j:]
        elif op == "dup-line":
            text = "\n".join([*lines[:k], lines[k], *lines[k:]])
        elif op == "drop-line":
            text = "\n".join(lines[:k] + lines[k + 1:])
        else:
            text = "\n".join([*lines[:k], " " + lines[k], *lines[k + 1:]])
    return text


@SETTINGS
@given(text_mutation())
def test_textual_mutations_of_the_example(text: str) -> None:
    parse_or_diagnose([("mutated.yaml", text)])


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


@SETTINGS
@given(st.data())
def test_structural_mutations_of_the_example(data: st.DataObject) -> None:
    docs = list(yaml.safe_load_all(EXAMPLE_TEXT))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(docs) if p]
        path = data.draw(st.sampled_from(paths))
        parent = docs
        for step in path[:-1]:
            parent = parent[step]
        op = data.draw(st.sampled_from(["set", "delete", "add-key"]))
        if op == "set":
            parent[path[-1]] = data.draw(nested)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(keys)] = data.draw(nested)
    parse_or_diagnose([("mutated.yaml", yaml.safe_dump_all(docs))])


# -- what is accepted means what it says ------------------------------------------------------------------------

LABEL_KEYS = ["zone", "env", "role", "guestward.dev/quarantine", "example.com/team"]
LABEL_VALUES = ["web", "db", "prod", "dev", "true", "a-b_c.d"]
PORTS = ["tcp/22", "tcp/80", "tcp/8000-8080", "udp/53", "udp/1-65535", "icmp", "icmpv6", "any"]


@st.composite
def selector_doc(draw: st.DrawFn) -> tuple[dict[str, Any], Selector]:
    labels = draw(st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2))
    exprs = []
    for key in draw(st.lists(st.sampled_from(LABEL_KEYS), max_size=2)):
        op = draw(st.sampled_from(list(Operator)))
        values = draw(st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=3)) if op in (
            Operator.IN, Operator.NOT_IN) else []
        exprs.append((key, op, values))
    selector = Selector.of(labels, [Expression(k, o, tuple(v)) for k, o, v in exprs])
    if not exprs and draw(st.booleans()):
        return labels, selector  # the plain-map form
    long: dict[str, Any] = {"matchLabels": labels} if labels or not exprs else {}
    if exprs:
        long["matchExpressions"] = [{"key": k, "operator": o.value, **({"values": v} if v else {})}
                                    for k, o, v in exprs]
    return long, selector


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TIERS), st.integers(0, 2000),
                          st.lists(st.tuples(st.sampled_from(list(Action)), selector_doc(),
                                             st.lists(st.sampled_from(PORTS), max_size=3)), max_size=4)),
                min_size=1, max_size=4))
def test_generated_documents_parse_to_what_they_say(specs: list[Any]) -> None:
    docs = []
    for n, (tier, order, rules) in enumerate(specs):
        docs.append({"apiVersion": "guestward.dev/v1", "kind": "Policy", "metadata": {"name": f"p{n}"},
                     "spec": {"tier": tier, "order": order, "rules": [
                         {"name": f"r{i}", "action": action.value, "to": {"guests": sel_doc},
                          **({"ports": ports} if ports else {})}
                         for i, (action, (sel_doc, _), ports) in enumerate(rules)]}})
    policies = parse_policies([("gen.yaml", yaml.safe_dump_all(docs, sort_keys=False))])
    assert [(p.name, p.tier, p.order) for p in policies] == [(f"p{n}", t, o) for n, (t, o, _) in enumerate(specs)]
    for p, (_, _, rules) in zip(policies, specs, strict=True):
        assert len(p.rules) == len(rules)
        for r, (action, (_, selector), ports) in zip(p.rules, rules, strict=True):
            assert r.action is action
            assert r.destination == GuestsPeer(selector)
            assert set(r.ports) == {PortRange(*_port(x)) for x in ports}


def _port(text: str) -> tuple[str, int, int]:
    proto, _, rest = text.partition("/")
    if not rest:
        return proto, 0, 0
    first, _, last = rest.partition("-")
    return proto, int(first), int(last or first)
