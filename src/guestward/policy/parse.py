"""Parse policy documents with line numbers, validate them, and build `policy.model` values.

Contract: `parse_policies` either returns every policy of the given sources or raises `PolicyError`
listing every problem as `file:line: message`. It raises nothing else, whatever the input.

Cost is bounded while loading, not after: a source over 8 MiB (counted in UTF-8 bytes) is refused
before YAML sees it, and the composer stops at the first alias, at the 200 001st node of a file or
below 64 levels of nesting, so neither time nor memory grows past those caps whatever the input.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from ipaddress import ip_network
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import Composer
from yaml.reader import Reader
from yaml.resolver import Resolver

from guestward.model import Expression, Operator, Selector, label_key_error
from guestward.model.labels import label_value_error
from guestward.policy.errors import Diagnostic, PolicyError
from guestward.policy.model import (
    Action,
    AnyPeer,
    CidrPeer,
    GuestsPeer,
    Peer,
    Policy,
    PortRange,
    Rule,
)
from guestward.policy.schema import MatchExpressionDoc, PeerDoc, PolicyDoc, RuleDoc

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_RULE_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PORT_RE = re.compile(r"(tcp|udp)/([0-9]{1,5})(?:-([0-9]{1,5}))?", re.ASCII)  # ASCII digits: not `tcp/٤٤٣`
MAX_SOURCE_BYTES = 8 * 1024 * 1024
_MAX_NODES = 200_000
_MAX_DEPTH = 64
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what YAML counts as the end of a line
_SCALAR_TAGS = frozenset(f"tag:yaml.org,2002:{t}"
                         for t in ("null", "bool", "int", "float", "str", "timestamp", "binary"))

Path = tuple[str | int, ...]


class _Invalid(Exception):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message


class _Refused(Exception):
    """The composer stopped: an input that would cost more than the caps allow, or an alias."""

    def __init__(self, mark: Any, message: str) -> None:
        self.line = mark.line + 1 if mark is not None else 1
        self.message = message


try:  # libyaml scans ten times faster than PyYAML's Python scanner; the composer stays Python (bounded)
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _Parser  # type: ignore[assignment]


class _BoundedLoader(_Parser, Composer, Resolver):  # type: ignore[misc]
    """A safe composer (YAML 1.1 resolution, no constructor: values are built by `_Located`) that
    counts every node as it is composed, so a hostile file is refused after at most `_MAX_NODES`
    nodes instead of after all of them, and refuses every alias before it is followed."""

    def __init__(self, stream: str) -> None:
        if _Parser.__module__ == "yaml.parser":  # pragma: no cover - the pure-Python parser needs its own reader
            yaml.reader.Reader.__init__(self, stream)  # type: ignore[arg-type]
            yaml.scanner.Scanner.__init__(self)  # type: ignore[arg-type]
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        Resolver.__init__(self)
        self.nodes = 0
        self.depth = 0

    check_node = Composer.check_node
    get_node = Composer.get_node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()
        if isinstance(event, yaml.AliasEvent):  # one alias can stand for a whole tree: billion laughs
            anchored = self.anchors.get(event.anchor)
            alias_line = event.start_mark.line + 1 if event.start_mark is not None else 1
            where = f" (alias *{event.anchor} at line {alias_line})"
            raise _Refused(anchored.start_mark if anchored is not None else event.start_mark,
                           "anchors and aliases are not supported" + where)
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise _Refused(event.start_mark, f"too many YAML nodes (more than {_MAX_NODES} in one file)")
        if self.depth >= _MAX_DEPTH:
            raise _Refused(event.start_mark, f"document nested too deeply (more than {_MAX_DEPTH} levels)")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose_all(text: str) -> list[yaml.Node | None]:
    loader = _BoundedLoader(text)
    nodes = []
    while loader.check_node():
        nodes.append(loader.get_node())
    return nodes


def _line_at(text: str, index: int) -> int:
    """The 1-based YAML line of character `index` of `text`."""
    return len(_LINE_BREAK.findall(text, 0, max(0, min(index, len(text))))) + 1


def _char_at(text: str, line: int, column: int) -> str:
    """The character at 0-based `line` and `column` of `text` (empty when out of range)."""
    start = 0
    for n, m in enumerate(_LINE_BREAK.finditer(text)):
        if n == line:
            break
        start = m.end()
    return text[start + column:start + column + 1]


class _Located:
    """A YAML document turned into plain values, with the line of every value and key."""

    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}
        self._seen: set[int] = set()
        self._scalars = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: Path = ()) -> Any:
        if id(node) in self._seen:
            raise _Invalid(node.start_mark.line + 1, "anchors and aliases are not supported")
        self._seen.add(id(node))
        if len(self._seen) > _MAX_NODES:
            raise _Invalid(node.start_mark.line + 1, "document too large")
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                if not isinstance(key, str):
                    raise _Invalid(key_node.start_mark.line + 1, f"mapping key {key!r} must be a string")
                if key in out:
                    raise _Invalid(key_node.start_mark.line + 1, f"duplicate key {key!r}")
                out[key] = self.build(value_node, (*path, key))
                # A field's mistakes are reported on its key's line, not where its value starts.
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise _Invalid(node.start_mark.line + 1, "expected a plain value here")
        if node.tag not in _SCALAR_TAGS:
            raise _Invalid(node.start_mark.line + 1, f"unsupported YAML tag {node.tag!r}")
        try:
            return self._scalars.construct_object(node)
        except Exception as exc:  # a malformed timestamp or number: a user error, not ours
            # One line: a YAML error's own text quotes the document over several lines.
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
            first = (reason.splitlines() or [type(exc).__name__])[0]
            raise _Invalid(node.start_mark.line + 1, f"invalid value: {first}") from None

    def line_of(self, path: Iterable[str | int]) -> int:
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), 1)


def parse_port(text: str) -> PortRange:
    """Parse one port spec (POLICY.md 2.2). Raises ValueError with a readable message."""
    if not isinstance(text, str):
        raise ValueError(f"port {text!r} must be a string such as tcp/443, udp/53, icmp or any")
    t = text.strip(" \t").lower()
    if t in ("icmp", "icmpv6", "any"):
        return PortRange(t)
    m = _PORT_RE.fullmatch(t)
    if not m:
        raise ValueError(f"invalid port {text!r}: expected tcp/PORT, tcp/FIRST-LAST, udp/..., icmp, icmpv6 or any")
    first = int(m.group(2))
    last = int(m.group(3)) if m.group(3) else first
    if not (1 <= first <= 65535 and 1 <= last <= 65535):
        raise ValueError(f"invalid port {text!r}: ports are 1-65535")
    if last < first:
        raise ValueError(f"invalid port {text!r}: range ends before it starts")
    return PortRange(m.group(1), first, last)


def _selector(doc: dict[str, Any], at: _Located, path: Path) -> Selector:
    long_form = bool(doc) and set(doc) <= {"matchLabels", "matchExpressions"}
    match_labels = doc.get("matchLabels", {}) if long_form else doc
    if not isinstance(match_labels, dict):
        raise _Invalid(at.line_of((*path, "matchLabels")), "matchLabels must be a map of label key to value")
    for key, value in match_labels.items():
        lp = (*path, "matchLabels", key) if long_form else (*path, key)
        err = label_key_error(key)
        if err is None and not isinstance(value, str):
            err = f"label {key!r}: value {value!r} must be a string (quote it)"
        err = err or label_value_error(value)
        if err:
            raise _Invalid(at.line_of(lp), err)
    expressions: list[Expression] = []
    raw_exprs = doc.get("matchExpressions", []) if long_form else []
    if not isinstance(raw_exprs, list):
        raise _Invalid(at.line_of((*path, "matchExpressions")), "matchExpressions must be a list")
    for i, raw in enumerate(raw_exprs):
        ep = (*path, "matchExpressions", i)
        try:
            e = MatchExpressionDoc.model_validate(raw)
        except ValidationError as exc:
            raise _Invalid(*_first_error(exc, at, ep)) from None
        values = e.values or []
        if err := label_key_error(e.key):
            raise _Invalid(at.line_of((*ep, "key")), err)
        if e.operator in ("In", "NotIn") and not values:
            raise _Invalid(at.line_of((*ep, "operator")),
                           f"matchExpressions: operator {e.operator} needs a non-empty values list")
        if e.operator in ("Exists", "DoesNotExist") and e.values:
            raise _Invalid(at.line_of((*ep, "values")), f"matchExpressions: operator {e.operator} takes no values")
        for j, v in enumerate(values):
            if err := label_value_error(v):
                raise _Invalid(at.line_of((*ep, "values", j)), err)
        expressions.append(Expression(e.key, Operator(e.operator), tuple(values)))
    return Selector.of(dict(match_labels), expressions)


def _peer(doc: PeerDoc | None, raw: Any, at: _Located, path: Path) -> Peer:
    if doc is None:
        return AnyPeer()
    if doc.guests is not None and doc.cidr is not None:
        raise _Invalid(at.line_of(path), "a peer is either guests: or cidr:, not both")
    if doc.guests is not None:
        return GuestsPeer(_selector(doc.guests, at, (*path, "guests")))
    if doc.cidr is not None:
        if not doc.cidr:
            raise _Invalid(at.line_of((*path, "cidr")), "cidr: needs at least one prefix")
        nets = []
        for i, text in enumerate(doc.cidr):
            try:
                nets.append(ip_network(text, strict=True))
            except ValueError as exc:
                raise _Invalid(at.line_of((*path, "cidr", i)), f"invalid cidr {text!r}: {exc}") from None
        return CidrPeer(tuple(sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen))))
    raise _Invalid(at.line_of(path), "a peer needs guests: or cidr: (omit from/to for anything)")


def _rule(doc: RuleDoc, at: _Located, path: Path) -> Rule:
    line = at.line_of(path)
    if not _RULE_NAME_RE.fullmatch(doc.name):
        raise _Invalid(at.line_of((*path, "name")), f"invalid rule name {doc.name!r}: lowercase alphanumerics and '-'")
    ports: list[PortRange] = []
    for i, text in enumerate(doc.ports or []):
        try:
            ports.append(parse_port(text))
        except ValueError as exc:
            raise _Invalid(at.line_of((*path, "ports", i)), str(exc)) from None
    if doc.ports is not None and not doc.ports:
        raise _Invalid(at.line_of((*path, "ports")), "ports: [] matches nothing; omit ports for every port")
    return Rule(
        name=doc.name,
        action=Action(doc.action),
        source=_peer(doc.from_, None, at, (*path, "from")),
        destination=_peer(doc.to, None, at, (*path, "to")),
        ports=tuple(sorted(set(ports))),
        line=line,
    )


def _first_error(exc: ValidationError, at: _Located, base: Path) -> tuple[int, str]:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    field = ".".join(str(p) for p in (*base, *loc) if isinstance(p, str)) or "document"
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = f"unknown field {loc[-1]!r}" + (f" in {'.'.join(str(p) for p in loc[:-1])}" if loc[:-1] else "")
    elif kind == "missing":
        msg = f"missing field {field!r}"
    else:
        got = err.get("input")
        text = err["msg"][:1].lower() + err["msg"][1:]  # keep the case of the allowed values it quotes
        msg = f"{field}: {text}" + (f" (got {got!r})" if not isinstance(got, dict | list) else "")
    return at.line_of((*base, *loc)), msg


def _policy(doc: Any, at: _Located, file: str) -> Policy:
    if not isinstance(doc, dict):
        raise _Invalid(at.line_of(()), "a policy document must be a map with apiVersion, kind, metadata, spec")
    try:
        pd = PolicyDoc.model_validate(doc)
    except ValidationError as exc:
        raise _Invalid(*_first_error(exc, at, ())) from None
    if not _NAME_RE.fullmatch(pd.metadata.name):
        raise _Invalid(at.line_of(("metadata", "name")),
                       f"invalid policy name {pd.metadata.name!r}: lowercase alphanumerics, '-' and '.'")
    rules = [_rule(r, at, ("spec", "rules", i)) for i, r in enumerate(pd.spec.rules)]
    seen: dict[str, int] = {}
    for r in rules:
        if r.name in seen:
            raise _Invalid(r.line, f"duplicate rule name {r.name!r} in policy {pd.metadata.name!r} "
                                   f"(first at line {seen[r.name]})")
        seen[r.name] = r.line
    return Policy(pd.metadata.name, pd.spec.tier, pd.spec.order, tuple(rules), file, at.line_of(()))


def parse_policies(sources: Iterable[tuple[str, str]]) -> list[Policy]:
    """Parse every (file name, text) source. All or nothing: any problem raises PolicyError."""
    diagnostics: list[Diagnostic] = []
    policies: list[Policy] = []
    for file, text in sources:
        if not isinstance(text, str):
            diagnostics.append(Diagnostic(file, 1, "not a text file"))
            continue
        if len(text) > MAX_SOURCE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
            diagnostics.append(Diagnostic(file, 1, f"larger than {MAX_SOURCE_BYTES // 1024 // 1024} MiB"))
            continue
        try:
            nodes = _compose_all(text)
        except _Refused as exc:
            diagnostics.append(Diagnostic(file, exc.line, exc.message))
            continue
        except yaml.reader.ReaderError:  # a NUL or another character YAML does not allow: found here, so
            bad = Reader.NON_PRINTABLE.search(text)  # its line does not depend on how the parser counts
            where, what = (_line_at(text, bad.start()), f"character {bad.group()!r}") if bad else (1, "a character")
            diagnostics.append(Diagnostic(file, where, f"invalid YAML: {what} is not allowed in YAML"))
            continue
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            problem = exc.problem or exc.context or "unknown error"
            if mark and problem.startswith("found character that"):  # libyaml does not say which one
                problem = problem.replace("character", f"character {_char_at(text, mark.line, mark.column)!r}", 1)
            message = f"invalid YAML: {problem}"
            if exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
                message += f" ({exc.context} at line {exc.context_mark.line + 1})"
            diagnostics.append(Diagnostic(file, line, message))
            continue
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            diagnostics.append(Diagnostic(file, 1, f"invalid YAML: {type(exc).__name__}"))
            continue
        for node in nodes:
            if node is None:
                continue
            at = _Located()
            try:
                doc = at.build(node)
                if doc is None:
                    continue
                start = text.rfind("\n", 0, node.start_mark.index) + 1
                source = text[start:node.end_mark.index]
                policy = _policy(doc, at, file)
                policies.append(dataclasses.replace(policy, line=node.start_mark.line + 1, source=source))
            except _Invalid as exc:
                diagnostics.append(Diagnostic(file, exc.line, exc.message))
            except RecursionError:
                diagnostics.append(Diagnostic(file, node.start_mark.line + 1, "document nested too deeply"))
    first_by_name: dict[str, Policy] = {}
    for p in policies:
        if p.name in first_by_name:
            f = first_by_name[p.name]
            message = f"duplicate policy name {p.name!r} (first at {f.file}:{f.line})"
            diagnostics.append(Diagnostic(p.file, p.line, message))
        else:
            first_by_name[p.name] = p
    if diagnostics:
        raise PolicyError(diagnostics)
    return policies
