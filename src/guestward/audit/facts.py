"""Facts the audit judges, as values: parsed domain XML, host config files and file metadata.

Collecting them is someone else's job (`hypervisor/audit_facts.py` reads libvirt and host roots);
this module only parses what it is given. Domain XML may be written by anyone who can define a
guest, so it is parsed with defusedxml (no entity expansion, no external entities, no DTD) after a
size cap; every failure is a `FactError` naming the input, never an exception for the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException  # type: ignore[import-untyped]

NS = "https://guestward.dev/xmlns/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
MAX_XML_BYTES = 4 * 1024 * 1024
MAX_CONF_BYTES = 1024 * 1024

ConfValue = str | int | list[str]


class FactError(ValueError):
    """An input that cannot be audited, with the reason (shown per input; the audit goes on)."""


@dataclass(frozen=True)
class XmlWaiver:
    check: str
    expires: str
    reason: str


@dataclass(frozen=True)
class DomainFacts:
    name: str
    uuid: str
    root: Element
    source: str                 # file path or "URI (inactive|live)"
    view: str                   # "file" | "inactive" | "live"
    labels: dict[str, str] = field(default_factory=dict)
    waivers: tuple[XmlWaiver, ...] = ()

    @cached_property
    def tags(self) -> frozenset[str]:
        """Every element tag in the document: a selector whose last step's tag is not here matches nothing."""
        return frozenset(el.tag for el in self.root.iter() if isinstance(el.tag, str))

    @cached_property
    def subject(self) -> str:
        """Unique per audited document: the name alone is not (corpora reuse `vm1`)."""
        return f"domain {self.name} ({self.view} {self.source})"


@dataclass(frozen=True)
class FileMeta:
    path: str          # absolute path as on the host (under the audited root)
    kind: str          # "file" | "dir" | "symlink" | "other"
    mode: int          # permission bits (st_mode & 0o7777)
    uid: int
    gid: int
    target: str | None = None  # for symlinks: where it points (never followed out of the root)


@dataclass(frozen=True)
class HostFacts:
    """A host as files: `files` maps absolute host paths to text (config files), `meta` maps paths
    to their metadata, `problems` are per-path errors found while collecting (symlink escapes...)."""

    root: str
    files: dict[str, str] = field(default_factory=dict)
    meta: dict[str, FileMeta] = field(default_factory=dict)
    problems: tuple[tuple[str, str], ...] = ()
    _conf_cache: dict[str, dict[str, ConfValue]] = field(default_factory=dict, compare=False, repr=False)

    def conf(self, path: str) -> dict[str, ConfValue] | None:
        """The parsed config file at `path`, or None if the host has no such file."""
        if path not in self.files:
            return None
        if path not in self._conf_cache:
            self._conf_cache[path] = parse_conf(self.files[path], path)
        return self._conf_cache[path]


def parse_domain(data: str | bytes, source: str, view: str = "file") -> DomainFacts:
    """One domain XML document -> its facts, or FactError (too large, hostile, malformed, not a domain)."""
    docs = parse_domain_docs(data, source, view, many=False)
    return docs[0]


def parse_domain_docs(data: str | bytes, source: str, view: str = "file", many: bool = True) -> list[DomainFacts]:
    """A domain XML file -> its domains. `many`: a file holding several top-level <domain> documents
    one after another (virt-install writes install and boot phases so) gives one each, `source#N`."""
    if len(data) > MAX_XML_BYTES:
        raise FactError(f"{source}: larger than {MAX_XML_BYTES // (1024 * 1024)} MiB, not parsed")
    try:
        root = _parse(data, source)
        if root.tag == "node" and many:  # libvirt test driver: a host of <domain>s (and networks, pools)
            found = root.findall("domain")
            if not found:
                raise FactError(f"{source}: <node> without <domain>")
            return [_facts(el, f"{source}#{i}", view) for i, el in enumerate(found, 1)]
        return [_facts(root, source, view)]
    except FactError as exc:
        if not many or "junk after document element" not in str(exc):
            raise
    text = data.decode("utf-8", errors="strict") if isinstance(data, bytes) else data
    body = re.sub(r"<\?xml[^>]*\?>", "", text)
    wrapper = _parse(f"<gw-documents>{body}</gw-documents>", source)
    roots = list(wrapper)
    if not roots:
        raise FactError(f"{source}: no document")
    return [_facts(el, f"{source}#{i}", view) for i, el in enumerate(roots, 1)]


def _parse(data: str | bytes, source: str) -> Element:
    try:
        root: Element = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise FactError(f"{source}: refused: {type(exc).__name__} ({exc})") from None
    except ParseError as exc:
        raise FactError(f"{source}: malformed XML: {exc}") from None
    except (ValueError, UnicodeError) as exc:
        raise FactError(f"{source}: unreadable XML: {exc}") from None
    return root


def _facts(root: Element, source: str, view: str) -> DomainFacts:
    if root.tag == "domstatus":  # libvirt's status XML wraps the live domain
        inner = root.find("domain")
        if inner is None:
            raise FactError(f"{source}: <domstatus> without <domain>")
        root = inner
    if root.tag != "domain":
        raise FactError(f"{source}: root element is <{root.tag}>, not <domain>")
    name = (root.findtext("name") or "").strip() or "(unnamed)"
    labels: dict[str, str] = {}
    waivers: list[XmlWaiver] = []
    guest_el = root.find(f"metadata/{{{NS}}}guest")
    if guest_el is not None:
        for el in guest_el.findall(f"{{{NS}}}label"):
            labels[el.get("key", "")] = (el.text or "").strip()
        for el in guest_el.findall(f"{{{NS}}}waiver"):
            waivers.append(XmlWaiver(el.get("check", ""), el.get("expires", ""), (el.text or "").strip()))
    return DomainFacts(name=name, uuid=(root.findtext("uuid") or "").strip(), root=root, source=source, view=view,
                       labels=labels, waivers=tuple(waivers))


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|(\[)|(\])|(,)|(=)|([A-Za-z_][\w.-]*)|(-?\d+)|(\n)|(\S))')


def parse_conf(text: str, source: str = "config") -> dict[str, ConfValue]:
    """libvirt's config syntax (`key = "string" | integer | ["list", ...]`, `#` comments), as used by
    qemu.conf, libvirtd.conf, virt*d.conf. Malformed input is a FactError naming the line."""
    if len(text) > MAX_CONF_BYTES:
        raise FactError(f"{source}: larger than 1 MiB, not parsed")
    out: dict[str, ConfValue] = {}
    tokens: list[tuple[str, str, int]] = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            break
        pos = m.end()
        kinds = ("comment", "str", "[", "]", ",", "=", "name", "int", "nl", "bad")
        kind = next(k for k, g in zip(kinds, m.groups(), strict=True) if g is not None) if m.lastindex else "end"
        tok = m.group(m.lastindex or 0)
        if kind == "nl":
            line += 1
        elif kind == "bad":
            raise FactError(f"{source}:{line}: unexpected {tok!r}")
        elif kind != "comment":
            tokens.append((kind, tok, line))
        if kind == "str":
            line += tok.count("\n")
    i = 0
    while i < len(tokens):
        kind, tok, ln = tokens[i]
        if kind != "name":
            raise FactError(f"{source}:{ln}: expected `key = value`, got {tok!r}")
        if i + 1 >= len(tokens) or tokens[i + 1][0] != "=" or i + 2 >= len(tokens):
            raise FactError(f"{source}:{ln}: expected `=` and a value after {tok!r}")
        vkind, vtok, _ = tokens[i + 2]
        if vkind == "str":
            out[tok] = _unquote(vtok)
            i += 3
        elif vkind == "int":
            out[tok] = int(vtok)
            i += 3
        elif vkind == "[":
            items: list[str] = []
            j = i + 3
            while j < len(tokens) and tokens[j][0] != "]":
                if tokens[j][0] == "str":
                    items.append(_unquote(tokens[j][1]))
                elif tokens[j][0] != ",":
                    raise FactError(f"{source}:{tokens[j][2]}: unexpected {tokens[j][1]!r} in a list")
                j += 1
            if j >= len(tokens):
                raise FactError(f"{source}:{ln}: list for {tok!r} is not closed")
            out[tok] = items
            i = j + 1
        else:
            raise FactError(f"{source}:{ln}: bad value {vtok!r} for {tok!r}")
    return out


def _unquote(tok: str) -> str:
    return re.sub(r"\\(.)", r"\1", tok[1:-1])
