"""Hypothesis strategies for valid policies written in every way YAML allows: directives (`%YAML`,
`%TAG`), tags (named, secondary, verbatim), anchors without aliases, comments, CRLF, a byte order
mark, flow and block style, several documents per file. Shared by the tests of the parser, the
store and the CLI."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from guestward.policy import TIERS

LABEL_KEYS = ["zone", "env", "example.com/team", "matchLabels", "x"]
LABEL_VALUES = ["web", "db", "prod", "true", "1", "null", "a-b_c.d", ""]
PORTS = ["tcp/22", "tcp/80", "tcp/8000-8080", "udp/53", "icmp", "icmpv6", "any", "TCP/443"]
CIDRS = ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32", "0.0.0.0/0"]


@st.composite
def peer(draw: st.DrawFn) -> dict[str, Any] | None:
    kind = draw(st.sampled_from(["none", "plain", "long", "cidr"]))
    if kind == "none":
        return None
    if kind == "cidr":
        return {"cidr": draw(st.lists(st.sampled_from(CIDRS), min_size=1, max_size=3, unique=True))}
    labels = draw(st.dictionaries(st.sampled_from(LABEL_KEYS[:3]), st.sampled_from(LABEL_VALUES), max_size=2))
    if kind == "plain":
        return {"guests": labels}
    exprs = [{"key": k, "operator": op, **({"values": draw(st.lists(st.sampled_from(LABEL_VALUES), min_size=1,
                                                                      max_size=3))} if op in ("In", "NotIn") else {})}
             for k, op in draw(st.lists(st.tuples(st.sampled_from(LABEL_KEYS),
                                                  st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"])),
                                        max_size=2))]
    return {"guests": {"matchLabels": labels, **({"matchExpressions": exprs} if exprs else {})}}


@st.composite
def policy_doc(draw: st.DrawFn, name: str) -> dict[str, Any]:
    rules = []
    for i in range(draw(st.integers(0, 4))):
        rule: dict[str, Any] = {"name": f"r{i}", "action": draw(st.sampled_from(["allow", "deny", "pass"]))}
        for key in ("from", "to"):
            if (p := draw(peer())) is not None:
                rule[key] = p
        if ports := draw(st.lists(st.sampled_from(PORTS), max_size=3)):
            rule["ports"] = ports
        rules.append(rule)
    spec: dict[str, Any] = {"tier": draw(st.sampled_from(TIERS)), "rules": rules}
    if draw(st.booleans()):
        spec["order"] = draw(st.integers(0, 1_000_000))
    return {"apiVersion": "guestward.dev/v1", "kind": "Policy", "metadata": {"name": name}, "spec": spec}


class Style:
    """How one document is written: which tag each kind of scalar gets, anchors, flow or block."""

    def __init__(self, draw: st.DrawFn, handle: str | None) -> None:
        tags = ["", "!!str ", "!<tag:yaml.org,2002:str> "] + ([f"!{handle}!str "] if handle else [])
        int_tags = ["", "!!int ", "!<tag:yaml.org,2002:int> "] + ([f"!{handle}!int "] if handle else [])
        map_tags = ["", "!!map "] + ([f"!{handle}!map "] if handle else [])
        seq_tags = ["", "!!seq "] + ([f"!{handle}!seq "] if handle else [])
        self.draw = draw
        self.str_tag = st.sampled_from(tags)
        self.int_tag = st.sampled_from(int_tags)
        self.map_tag = st.sampled_from(map_tags)
        self.seq_tag = st.sampled_from(seq_tags)
        self.anchors = 0

    def anchor(self) -> str:
        if not self.draw(st.booleans()):
            return ""
        self.anchors += 1
        return f"&a{self.anchors} "

    def flow(self, v: Any) -> str:
        if isinstance(v, dict):
            items = ", ".join(f"{self.flow(k)}: {self.flow(x)}" for k, x in v.items())
            return f"{self.draw(self.map_tag)}{self.anchor()}{{{items}}}"
        if isinstance(v, list):
            return f"{self.draw(self.seq_tag)}{self.anchor()}[{', '.join(self.flow(x) for x in v)}]"
        if isinstance(v, int):
            return f"{self.draw(self.int_tag)}{self.anchor()}{v}"
        quoted = json.dumps(v, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar
        return f"{self.draw(self.str_tag)}{self.anchor()}{quoted}"

    def block(self, v: dict[str, Any], indent: int = 0) -> list[str]:
        lines = []
        for k, x in v.items():
            pad = " " * indent
            if isinstance(x, dict) and x and self.draw(st.booleans()):
                lines += [f"{pad}{self.flow(k)}:  # {k} follows", *self.block(x, indent + 2)]
            else:
                lines.append(f"{pad}{self.flow(k)}: {self.flow(x)}")
        return lines


@st.composite
def hostile_file(draw: st.DrawFn, names: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """(text, documents): a valid file holding one policy per name, written with every device."""
    docs = [draw(policy_doc(n)) for n in names]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    parts = ["\ufeff"] if draw(st.booleans()) else []
    for i, d in enumerate(docs):
        directives = []
        if draw(st.booleans()):
            directives.append("%YAML 1.1")
        handle = draw(st.sampled_from([None, "g", "gw", "e"]))
        if handle:
            directives.append(f"%TAG !{handle}! tag:yaml.org,2002:")
        if draw(st.booleans()):
            directives.append("%TAG !unused! tag:example.com,2000:")
        style = Style(draw, handle)
        body = style.block(d) if draw(st.booleans()) else [style.flow(d)]
        if i and not directives and draw(st.booleans()):
            parts += ["---", *body]
        else:
            parts += [*(["..."] if i else []), "# a comment", *directives, "---", *body]
    return newline.join(parts) + newline, docs
