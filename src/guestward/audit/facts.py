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
from xml.parsers import expat

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException  # type: ignore[import-untyped]

NS = "https://guestward.dev/xmlns/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
MAX_XML_BYTES = 4 * 1024 * 1024
# A libvirt test-driver <node> or a virt-install file holds a few domains; a real domain has a few
# hundred elements. The caps bound what one file can make the audit build and judge (each domain
# costs ~150 results): 256 domains x ~150 checks, 200,000 elements (~40 MB of tree).
MAX_DOMAINS_PER_FILE = 256
MAX_ELEMENTS_PER_FILE = 200_000
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
    if len(data) > MAX_XML_BYTES:
        raise FactError(f"{source}: larger than {MAX_XML_BYTES // (1024 * 1024)} MiB, not parsed")
    return _facts(_parse(data, source), source, view)


def parse_domain_docs(data: str | bytes, source: str, view: str = "file", many: bool = True) -> list[DomainFacts]:
    """A domain XML file -> its domains, or the first FactError (see `parse_domain_file`, which keeps
    the good documents of a file beside the bad ones)."""
    if not many:
        return [parse_domain(data, source, view)]
    domains, errors = parse_domain_file(data, source, view)
    if errors:
        raise errors[0]
    return domains


def parse_domain_file(data: str | bytes, source: str, view: str = "file") -> tuple[list[DomainFacts], list[FactError]]:
    """A domain XML file -> (its domains, a FactError per document that could not be audited).

    A file holds one `<domain>` (or `<domstatus>`), a libvirt test-driver `<node>` of them, or several
    top-level documents one after another (virt-install writes install and boot phases so): each
    document is split off and parsed on its own, so invalid UTF-8 or malformed XML in one is an error
    for `source#N` and the others are still audited. Bounded before any tree is built: at most
    MAX_XML_BYTES, MAX_DOMAINS_PER_FILE domains and MAX_ELEMENTS_PER_FILE elements; a file over a cap
    is one FactError naming it, and none of its domains (fail closed: never a partial file)."""
    if len(data) > MAX_XML_BYTES:
        raise FactError(f"{source}: larger than {MAX_XML_BYTES // (1024 * 1024)} MiB, not parsed")
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    spans = _split(raw, source)
    domains: list[DomainFacts] = []
    errors: list[FactError] = []
    for i, (start, end, problem) in enumerate(spans, 1):
        name = source if len(spans) == 1 else f"{source}#{i}"
        where = source if len(spans) == 1 else f"{source}: document {i}"  # errors start with the file
        if problem is not None:
            errors.append(FactError(f"{where}: {problem}"))
            continue
        try:
            root = _parse(raw[start:end], where)
            if root.tag == "node":  # libvirt test driver: a host of <domain>s (and networks, pools)
                found = root.findall("domain")
                if not found:
                    raise FactError(f"{where}: <node> without <domain>")
                domains += [_facts(el, f"{name}#{j}" if len(spans) > 1 else f"{source}#{j}", view)
                            for j, el in enumerate(found, 1)]
            else:
                domains.append(_facts(root, name, view, where))
        except FactError as exc:
            errors.append(exc)
    return domains, errors


_UNDECODABLE = re.compile("[\udc80-\udcff]")
_RESYNC = re.compile(rb"<(?:\?xml[\s?]|domain[\s/>]|domstatus[\s/>]|node[\s/>])")
_NEXT_DOCUMENT = {expat.errors.codes[expat.errors.XML_ERROR_JUNK_AFTER_DOC_ELEMENT],
                  expat.errors.codes[expat.errors.XML_ERROR_MISPLACED_XML_PI]}


class _Refused(Exception):
    pass


class _Scan:
    """expat handlers for one document of `_split`: depth, whether the root closed, and the caps
    (counted over the whole file in `counts`)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.depth = 0
        self.root: str | None = None
        self.closed = False
        self.parser = expat.ParserCreate()
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.StartDoctypeDeclHandler = self.no_dtd
        self.parser.EntityDeclHandler = self.no_dtd

    def start(self, tag: str, _attrs: object) -> None:
        self.depth += 1
        self.counts["elements"] += 1
        if self.root is None:
            self.root = tag
        if (self.depth == 1 and tag != "node") or (self.depth == 2 and self.root == "node" and tag == "domain"):
            self.counts["domains"] += 1
        if self.counts["domains"] > MAX_DOMAINS_PER_FILE:
            raise _Refused(f"more than {MAX_DOMAINS_PER_FILE} domains in one file: not audited (split it)")
        if self.counts["elements"] > MAX_ELEMENTS_PER_FILE:
            raise _Refused(f"more than {MAX_ELEMENTS_PER_FILE} XML elements in one file: not audited")

    def end(self, _tag: str) -> None:
        self.depth -= 1
        self.closed = self.closed or self.depth == 0

    def no_dtd(self, *_: object) -> None:
        raise _Refused("refused: a DTD (DOCTYPE) is not allowed in domain XML")


_BLANK = re.compile(rb"\s*")
_CHUNK = 1 << 16


def _split(raw: bytes, source: str) -> list[tuple[int, int, str | None]]:
    """The top-level documents of `raw` as (start, end, problem) byte spans, found by a streaming expat
    pass that builds nothing (a DTD is refused here as in `_parse`). The pass reads a copy in which
    every undecodable byte is `?` (same offsets), so bad encoding never hides where documents start;
    after a malformed document, the next one is looked for at the next `<?xml`, `<domain`,
    `<domstatus` or `<node`. Counts domains and elements against the caps as it goes."""
    probe = _UNDECODABLE.sub("?", raw.decode("utf-8", "surrogateescape")).encode("utf-8")
    view = memoryview(probe)
    spans: list[tuple[int, int, str | None]] = []
    counts = {"domains": 0, "elements": 0}
    pos = 0
    while (blank := _BLANK.match(probe, pos)) is not None and blank.end() < len(probe):
        pos = blank.end()  # an XML declaration must be a document's first bytes
        scan = _Scan(counts)
        try:
            for off in range(pos, len(probe), _CHUNK):
                scan.parser.Parse(view[off:off + _CHUNK], False)
            scan.parser.Parse(b"", True)
            spans.append((pos, len(probe), None))
            break
        except _Refused as exc:
            raise FactError(f"{source}: {exc}") from None
        except expat.ExpatError as exc:
            at = pos + scan.parser.ErrorByteIndex
            if scan.closed and exc.code in _NEXT_DOCUMENT:
                spans.append((pos, at, None))
                pos = at
                continue
            why = expat.errors.messages[exc.code] if exc.code is not None else str(exc)
            spans.append((pos, at, f"malformed XML: {why} (at byte {at})"))
            nxt = _RESYNC.search(probe, at + 1)
            if nxt is None:
                break
            pos = nxt.start()
    if not spans:
        raise FactError(f"{source}: no document")
    return spans


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


def _facts(root: Element, source: str, view: str, where: str | None = None) -> DomainFacts:
    where = where or source
    if root.tag == "domstatus":  # libvirt's status XML wraps the live domain
        inner = root.find("domain")
        if inner is None:
            raise FactError(f"{where}: <domstatus> without <domain>")
        root = inner
    if root.tag != "domain":
        raise FactError(f"{where}: root element is <{root.tag}>, not <domain>")
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
