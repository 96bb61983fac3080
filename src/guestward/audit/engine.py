"""Run the catalogue over facts: (checks, domains, host, waivers, today) -> a Report. Pure.

Every (check, subject) pair gets exactly one result. A check that raises is an `error` result for
that pair, not a crash: one odd document never hides the rest of the audit. Waivers turn a failure
into `waived` (the reason kept); an expired waiver no longer applies and is listed in the report.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from xml.etree.ElementTree import Element

from guestward.audit.catalogue import Check
from guestward.audit.facts import NS, QEMU_NS, ConfValue, DomainFacts, FactError, FileMeta, HostFacts, XmlWaiver
from guestward.audit.model import (
    ConfRule,
    DomainRule,
    FileRule,
    Op,
    Operand,
    Result,
    Severity,
    Status,
    Waiver,
)

NAMESPACES = {"qemu": QEMU_NS, "gw": NS}
# Bounds on what hostile input can make an audit hold and print: a result's or an input error's
# message (it quotes the input), the domains one run judges (each costs ~150 results; fleet checks
# need them all at once), and how far ahead a guest's own XML may waive a finding.
MAX_MESSAGE = 2000
MAX_DOMAINS_PER_RUN = 5000
MAX_ELEMENTS_PER_RUN = 2_000_000  # the trees every domain of a run keeps until the fleet checks ran (~300 MB)
MAX_XML_WAIVER_DAYS = 90
CHECK_ID = re.compile(r"[A-Z]{3}-\d{3}")


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` cut to `limit` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters)"


@dataclass(frozen=True)
class Verdict:
    status: Status
    message: str = ""
    severity: Severity | None = None


@dataclass(frozen=True)
class InputError:
    source: str
    message: str


@dataclass(frozen=True)
class ExpiredWaiver:
    check: str
    where: str
    expires: str
    justification: str


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    expired_waivers: list[ExpiredWaiver] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for r in self.results:
            out[r.status.value] += 1
        return out

    def worst_failure(self) -> Severity | None:
        fails = [r.severity for r in self.results if r.status is Status.failed]
        return max(fails, key=lambda s: s.rank) if fails else None


# --- operators -----------------------------------------------------------------------------------

def _as_int(v: object) -> int | None:
    try:
        return int(str(v).strip(), 0)
    except ValueError:
        return None


def value_fails(op: Op, value: ConfValue, operand: Operand) -> bool:
    """Whether one value meets the fail condition `op operand` (exists/missing are decided by callers)."""
    if op is Op.equals:
        return _norm(value) == _norm(operand)
    if op is Op.not_equals:
        return _norm(value) != _norm(operand)
    if op is Op.in_:
        return _norm(value) in [_norm(o) for o in operand or []]  # type: ignore[union-attr]
    if op is Op.not_in:
        return _norm(value) not in [_norm(o) for o in operand or []]  # type: ignore[union-attr]
    if op is Op.matches:
        return any(re.search(str(operand), str(v)) for v in _items(value))
    if op is Op.not_matches:
        return not any(re.search(str(operand), str(v)) for v in _items(value))
    if op in (Op.lt, Op.gt):
        n = _as_int(value)
        if n is None:
            return False
        return n < operand if op is Op.lt else n > operand  # type: ignore[operator]
    if op is Op.contains:
        return str(operand) in [str(v) for v in _items(value)]
    if op is Op.lacks:
        return str(operand) not in [str(v) for v in _items(value)]
    raise ValueError(f"operator {op.value} needs elements, not a value")


def _items(value: ConfValue) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _norm(v: object) -> object:
    if isinstance(v, list):
        return [str(x) for x in v]
    n = _as_int(v) if not isinstance(v, bool) else int(v)
    return n if n is not None else str(v).strip().lower()


# --- domain rules --------------------------------------------------------------------------------

def describe(el: Element) -> str:
    tag = el.tag.split("}")[-1]
    attrs = " ".join(f"{k.split('}')[-1]}='{v}'" for k, v in list(el.attrib.items())[:4] if k != "passwd")
    return f"<{tag}{' ' + attrs if attrs else ''}>"


@lru_cache(maxsize=4096)
def _last_tag(path: str) -> str | None:
    """The tag a path's last step names (`{ns}tag` for prefixed names), or None for `*`, `.` and `..`."""
    step = re.sub(r"\[[^\]]*\]", "", path).rstrip("/").rsplit("/", 1)[-1]
    if step in ("", "*", ".", ".."):
        return None
    if ":" in step:
        prefix, local = step.split(":", 1)
        return f"{{{NAMESPACES.get(prefix, prefix)}}}{local}"
    return step


def _select(d: DomainFacts, paths: Iterable[str]) -> list[Element]:
    out: list[Element] = []
    for p in paths:
        last = _last_tag(p)
        if last is not None and last not in d.tags:  # most devices are absent from most guests: skip the search
            continue
        out.extend(d.root.iterfind(p, NAMESPACES))
    return out


def _value_of(el: Element, value: str) -> str | None:
    if value == "text":
        return (el.text or "").strip()
    return el.get(value[1:])


def eval_domain_rule(rule: DomainRule, d: DomainFacts) -> Verdict:
    if rule.when_labels and not rule.when_labels.matches(d.labels):
        want = ", ".join(f"{k}={v}" for k, v in rule.when_labels.labels.items())
        return Verdict(Status.not_applicable, f"applies to guests labelled {want}")
    if rule.when and not _select(d, rule.when):
        return Verdict(Status.not_applicable, "the configuration this check is about is absent")
    if rule.unless and (hit := _select(d, rule.unless)):
        return Verdict(Status.passed, f"compensated by {describe(hit[0])}")
    elems = _select(d, rule.select)
    if rule.value is not None:
        pairs = [(el, v) for el in elems if (v := _value_of(el, rule.value)) is not None]
    else:
        pairs = [(el, "") for el in elems]
    op = rule.fail_if
    if op is Op.exists:
        if pairs:
            el, v = pairs[0]
            more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
            shown = f" {rule.value}={v!r}" if rule.value else ""
            return Verdict(Status.failed, f"found {describe(el)}{shown}{more}")
        return Verdict(Status.passed)
    if op is Op.missing:
        if not pairs:
            return Verdict(Status.failed, f"no {' or '.join(rule.select)}{' ' + rule.value if rule.value else ''}")
        return Verdict(Status.passed, f"found {describe(pairs[0][0])}")
    if op is Op.count_gt:
        if len(pairs) > int(rule.operand or 0):  # type: ignore[arg-type]
            return Verdict(Status.failed, f"{len(pairs)} of {' or '.join(rule.select)} (at most {rule.operand})")
        return Verdict(Status.passed)
    for el, v in pairs:
        if value_fails(op, v, rule.operand):
            return Verdict(Status.failed, f"{describe(el)} {rule.value}={v!r} ({op.value} {rule.operand!r})")
    return Verdict(Status.passed)


def label_severity(rule: DomainRule, d: DomainFacts, default: Severity) -> Severity:
    for sw in rule.severity_when:
        if sw.matches(d.labels):
            return sw.severity
    return default


# --- host rules ----------------------------------------------------------------------------------

def conf_value(host: HostFacts, file: str, key: str, default: object) -> tuple[object, str]:
    conf = host.conf(file)
    if conf is not None and key in conf:
        return conf[key], f"{file}: {key} = {conf[key]!r}"
    where = "not set" if conf is not None else "file absent"
    return default, f"{file}: {key} {where} (default {default!r})"


def _cond_fails(op: Op, value: object, operand: Operand) -> bool:
    if op is Op.exists:
        return value is not None
    if op is Op.missing:
        return value is None
    if value is None:
        return False
    return value_fails(op, value, operand)  # type: ignore[arg-type]


def eval_conf_rule(rule: ConfRule, host: HostFacts) -> Verdict:
    files = [rule.file] if isinstance(rule.file, str) else rule.file
    present = [f for f in files if f in host.files] or files[:1]
    verdicts = [_eval_conf_file(rule, f, host) for f in present]
    failed = [v for v in verdicts if v.status is Status.failed]
    if failed:
        return Verdict(Status.failed, "; ".join(v.message for v in failed))
    if all(v.status is Status.not_applicable for v in verdicts):
        return verdicts[0]
    return Verdict(Status.passed, "; ".join(v.message for v in verdicts if v.status is Status.passed))


def _eval_conf_file(rule: ConfRule, file: str, host: HostFacts) -> Verdict:
    for cond in rule.when:
        value, _ = conf_value(host, cond.file or file, cond.key, cond.default)
        if not _cond_fails(cond.fail_if, value, cond.operand):
            return Verdict(Status.not_applicable, f"applies only where {cond.key} {cond.fail_if.value} "
                                                  f"{cond.operand if cond.operand is not None else ''}".rstrip())
    value, where = conf_value(host, file, rule.key, rule.default)
    if _cond_fails(rule.fail_if, value, rule.operand):
        return Verdict(Status.failed, where)
    return Verdict(Status.passed, where)


_MODE_BITS = {"world_readable": 0o004, "world_writable": 0o002, "group_readable": 0o040, "group_writable": 0o020}


def _file_fails(test: str, m: FileMeta) -> bool:
    if test in _MODE_BITS:
        return m.kind != "symlink" and bool(m.mode & _MODE_BITS[test])  # a link's own mode means nothing
    if test == "not_root_owned":
        return m.uid != 0
    if test == "symlink":
        return m.kind == "symlink"
    return test == "exists"


def eval_file_rule(rule: FileRule, host: HostFacts) -> Verdict:
    matched = [m for p, m in sorted(host.meta.items())
               if any(fnmatch.fnmatchcase(p, pat) for pat in rule.paths)
               and m.kind in rule.kinds]
    if not matched:
        return Verdict(Status.passed, f"no {' or '.join(rule.paths)} on this host")
    bad = [(m, t) for m in matched for t in rule.fail_if if _file_fails(t, m)]
    if bad:
        shown = "; ".join(f"{m.path} ({oct(m.mode)} uid {m.uid}: {t.replace('_', ' ')})" for m, t in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        return Verdict(Status.failed, shown + more)
    return Verdict(Status.passed, f"{len(matched)} path(s) checked")


# --- running -------------------------------------------------------------------------------------

def select_checks(checks: Sequence[Check], only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[Check]:
    """`only`/`skip` are ids or globs (`LVD-04*`); an `only` entry that matches nothing is an error."""
    for pat in only:
        if not any(fnmatch.fnmatchcase(c.id, pat.upper()) for c in checks):
            raise ValueError(f"--check {pat}: no such check")
    out = [c for c in checks if not only or any(fnmatch.fnmatchcase(c.id, p.upper()) for p in only)]
    return [c for c in out if not any(fnmatch.fnmatchcase(c.id, p.upper()) for p in skip)]


def _run_one(check: Check, subject: DomainFacts | HostFacts, domains: Sequence[DomainFacts]) -> Verdict:
    rule = check.spec.rule
    try:
        if isinstance(rule, DomainRule):
            assert isinstance(subject, DomainFacts)
            return eval_domain_rule(rule, subject)
        if isinstance(rule, ConfRule):
            assert isinstance(subject, HostFacts)
            return eval_conf_rule(rule, subject)
        if isinstance(rule, FileRule):
            assert isinstance(subject, HostFacts)
            return eval_file_rule(rule, subject)
        assert check.code is not None
        out = check.code(subject, domains, rule.params) if rule.scope == "host" else check.code(subject, rule.params)
        return out if isinstance(out, Verdict) else Verdict(*out)
    except FactError as exc:
        return Verdict(Status.error, str(exc))
    except Exception as exc:  # a check bug must not end the audit of everything else
        return Verdict(Status.error, f"check failed: {type(exc).__name__}: {exc}")


def audit(checks: Sequence[Check], domains: Sequence[DomainFacts], hosts: Sequence[HostFacts] = (), *,
          waivers: Sequence[Waiver] = (), today: dt.date | None = None,
          errors: Sequence[InputError] = ()) -> Report:
    if today is None:
        raise ValueError("audit() needs today's date (the pure part has no clock)")
    report = Report(errors=list(errors), checks={c.id: c for c in checks})
    domain_checks = [c for c in checks if c.spec.scope == "domain"]
    fleet_checks = [c for c in checks if c.spec.scope == "fleet"]
    host_checks = [c for c in checks if c.spec.scope == "host"]
    # Check-major order: ElementTree caches only ~100 compiled paths, the catalogue has more; one
    # check's few paths over every document stay compiled (3x faster than document-major).
    per_domain: list[list[Result]] = [[] for _ in domains]
    for c in domain_checks:
        for i, d in enumerate(domains):
            v = _run_one(c, d, domains)
            sev = v.severity or (label_severity(c.spec.rule, d, c.spec.severity)
                                 if isinstance(c.spec.rule, DomainRule) else c.spec.severity)
            per_domain[i].append(Result(c.id, d.subject, "domain", v.status, sev, bounded(v.message), None,
                                        d.source))
    for rs in per_domain:
        report.results.extend(rs)
    for c in fleet_checks:
        assert c.code is not None
        try:
            verdicts = c.code(list(domains), c.spec.rule.params)  # type: ignore[union-attr]
        except Exception as exc:
            report.errors.append(InputError(c.id, f"check failed: {type(exc).__name__}: {exc}"))
            continue
        for d, v in verdicts:
            report.results.append(Result(check=c.id, subject=d.subject, kind="fleet", status=v.status,
                                         severity=v.severity or c.spec.severity, message=bounded(v.message),
                                         source=d.source))
    for h in hosts:
        for src, msg in h.problems:
            report.errors.append(InputError(src, msg))
        for c in host_checks:
            v = _run_one(c, h, domains)
            report.results.append(Result(check=c.id, subject=f"host {h.root}", kind="host", status=v.status,
                                         severity=v.severity or c.spec.severity, message=bounded(v.message),
                                         source=h.root))
    _apply_waivers(report, domains, waivers, today)
    return report


def xml_waivers(d: DomainFacts, today: dt.date) -> tuple[list[tuple[XmlWaiver, dt.date]], list[InputError]]:
    """The in-XML waivers of `d` that may apply, and an error for each that may not. A guest's own XML
    is written by whoever can define the guest, so its waivers are narrower than the operator's: one
    exact check id (no `*`, no glob), an `expires` date no more than MAX_XML_WAIVER_DAYS ahead. (That
    they never waive a critical finding is decided per result, in `_apply_waivers`.)"""
    ok: list[tuple[XmlWaiver, dt.date]] = []
    errs: list[InputError] = []
    for w in d.waivers:
        what = f"in-XML waiver for {w.check[:40]!r}"
        if not CHECK_ID.fullmatch(w.check.strip().upper()):
            errs.append(InputError(d.source, f"{d.subject}: {what}: not applied: names one check id "
                                             "(like LVD-040), never a wildcard"))
            continue
        try:
            until = dt.date.fromisoformat(w.expires)
        except ValueError:
            errs.append(InputError(d.source, f"{d.subject}: {what}: bad or missing expires {w.expires[:40]!r} "
                                             "(YYYY-MM-DD)"))
            continue
        if until > today + dt.timedelta(days=MAX_XML_WAIVER_DAYS):
            errs.append(InputError(d.source, f"{d.subject}: {what}: not applied: expires {w.expires}, more than "
                                             f"{MAX_XML_WAIVER_DAYS} days ahead (use the waiver file for longer)"))
            continue
        ok.append((w, until))
    return ok, errs


def _apply_waivers(report: Report, domains: Sequence[DomainFacts], waivers: Sequence[Waiver], today: dt.date) -> None:
    """In-XML waivers (see `xml_waivers`; never for a critical finding) and the operator's waiver
    file (any check or `*`, guests by glob, any expiry) turn failures into `waived`."""
    by_subject = {d.subject: d for d in domains}
    seen_expired: set[tuple[str, str, str]] = set()
    usable: dict[str, list[tuple[XmlWaiver, dt.date]]] = {}
    for dom in domains:
        if dom.waivers:
            usable[dom.subject], errs = xml_waivers(dom, today)
            report.errors += errs
    refused: set[tuple[str, str]] = set()

    def expired(check: str, where: str, expires: str, why: str) -> None:
        if (check, where, expires) not in seen_expired:
            seen_expired.add((check, where, expires))
            report.expired_waivers.append(ExpiredWaiver(check, where, expires, why))

    for i, r in enumerate(report.results):
        if r.status is not Status.failed:
            continue
        reason: str | None = None
        d = by_subject.get(r.subject)
        if d is not None:
            for w, until in usable.get(r.subject, ()):
                if w.check.strip().upper() != r.check:
                    continue
                if r.severity is Severity.critical:
                    if (d.subject, r.check) not in refused:
                        refused.add((d.subject, r.check))
                        report.errors.append(InputError(d.source, f"{d.subject}: in-XML waiver for {r.check}: not "
                                                        "applied: a guest's own XML never waives a critical finding"))
                    continue
                if until < today:
                    expired(w.check, f"{d.subject} <metadata>", w.expires, bounded(w.reason, 200))
                    continue
                reason = f"{bounded(w.reason, 200) or '(no reason given)'} (in-XML waiver, expires {w.expires})"
        for fw in waivers:
            if reason or fw.check not in (r.check, "*"):
                continue
            name = d.name if d is not None else None
            hit = (r.kind == "host" and fw.host) or (
                name is not None and any(fnmatch.fnmatchcase(name, g) for g in fw.guests))
            if not hit:
                continue
            if fw.expires < today:
                expired(fw.check, f"{fw.source}: {', '.join(fw.guests) or 'host'}", fw.expires.isoformat(),
                        fw.justification)
                continue
            reason = f"{fw.justification} ({fw.source}, expires {fw.expires.isoformat()})"
        if reason:
            report.results[i] = replace(r, status=Status.waived, waiver=reason)


def parse_domains(docs: Iterable[tuple[str, str | bytes, str]]) -> tuple[list[DomainFacts], list[InputError]]:
    """(source, data, view) triples -> parsed domains and per-input errors: one per document that
    could not be audited (the file's other documents still are), one per file over a cap, and one
    per input past MAX_DOMAINS_PER_RUN or MAX_ELEMENTS_PER_RUN (each names its input; none is
    silently dropped). `docs` is consumed one input at a time."""
    from guestward.audit.facts import parse_domain_file

    out: list[DomainFacts] = []
    errs: list[InputError] = []
    elements = 0
    for source, data, view in docs:
        if len(out) >= MAX_DOMAINS_PER_RUN:
            errs.append(InputError(source, f"{source}: not audited: this run already has {MAX_DOMAINS_PER_RUN} "
                                           "domains (the most one run judges); audit the rest in another run"))
            continue
        try:
            domains, bad = parse_domain_file(data, source, view)
        except FactError as exc:
            errs.append(InputError(source, bounded(str(exc))))
            continue
        size = sum(1 for d in domains for _ in d.root.iter())
        if elements + size > MAX_ELEMENTS_PER_RUN:
            errs.append(InputError(source, f"{source}: not audited: its {size} XML elements would take this run past "
                                           f"{MAX_ELEMENTS_PER_RUN}; audit it in another run"))
            continue
        elements += size
        room = MAX_DOMAINS_PER_RUN - len(out)
        out.extend(domains[:room])
        if len(domains) > room:
            errs.append(InputError(source, f"{source}: {len(domains) - room} of its domains not audited: this run "
                                           f"reached {MAX_DOMAINS_PER_RUN} domains; audit the rest in another run"))
        errs += [InputError(source, bounded(str(e))) for e in bad]
    return out, errs
