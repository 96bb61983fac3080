"""A Report as JSON, SARIF 2.1.0 and JUnit XML values (pure: the CLI writes them).

SARIF carries failed and waived results (waived ones with an external suppression and its
justification), one rule per check with `security-severity` so code-scanning tools rank them;
input errors become tool execution notifications. JUnit has one suite per subject and one case per
check: failure, skipped (not applicable or waived, with the reason) or error.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from guestward.audit.engine import Report
from guestward.audit.model import Benchmark, Result, Severity, Status

TOOL = "guestward"
INFO_URI = "https://guestward.dev"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SECURITY_SEVERITY = {Severity.critical: "9.5", Severity.high: "8.0", Severity.medium: "5.5", Severity.low: "3.0",
                     Severity.info: "0.0"}
LEVEL = {Severity.critical: "error", Severity.high: "error", Severity.medium: "warning", Severity.low: "note",
         Severity.info: "note"}


def summary(report: Report) -> dict[str, Any]:
    counts = report.counts()
    failed_by_sev = {s.value: 0 for s in Severity}
    for r in report.results:
        if r.status is Status.failed:
            failed_by_sev[r.severity.value] += 1
    return {"results": len(report.results), "status": counts, "failed_by_severity": failed_by_sev,
            "input_errors": len(report.errors), "expired_waivers": len(report.expired_waivers),
            "subjects": len({r.subject for r in report.results})}


def benchmark_controls(report: Report, bench: Benchmark) -> list[dict[str, Any]]:
    """Per control: fail if a mapped check failed anywhere, pass if all mapped results pass (or do not
    apply), `not covered` if no check maps to it."""
    out = []
    for ctl in bench.controls:
        rs = [r for r in report.results if r.check in ctl.checks]
        if not ctl.checks:
            status = "not covered"
        elif any(r.status is Status.failed for r in rs):
            status = "fail"
        elif any(r.status is Status.error for r in rs):
            status = "error"
        elif not rs:
            status = "not run"
        else:
            status = "pass"
        failing = sorted({r.check for r in rs if r.status is Status.failed})
        out.append({"control": ctl.id, "title": ctl.title, "status": status, "checks": ctl.checks,
                    "failing_checks": failing, "note": ctl.note})
    return out


def to_json(report: Report, bench: Benchmark | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": summary(report),
        "results": [r.to_dict() for r in report.results],
        "input_errors": [{"source": e.source, "message": e.message} for e in report.errors],
        "expired_waivers": [vars(w) for w in report.expired_waivers],
    }
    if bench is not None:
        doc["benchmark"] = {"id": bench.id, "title": bench.title, "source": bench.source,
                            "controls": benchmark_controls(report, bench)}
    return doc


def _location(r: Result) -> dict[str, Any]:
    src = r.source or r.subject
    loc: dict[str, Any] = {"logicalLocations": [{"name": r.subject, "kind": "resource"}]}
    if src.startswith("/") and "#" not in src:
        loc["physicalLocation"] = {"artifactLocation": {"uri": "file://" + src}}
    else:
        loc["logicalLocations"][0]["fullyQualifiedName"] = src
    return loc


def to_sarif(report: Report, version: str) -> dict[str, Any]:
    checks = sorted(report.checks.values(), key=lambda c: c.id)
    index = {c.id: i for i, c in enumerate(checks)}
    rules = [{
        "id": c.id,
        "name": c.spec.name,
        "shortDescription": {"text": c.spec.title},
        "fullDescription": {"text": c.spec.rationale},
        "help": {"text": c.spec.remediation},
        "defaultConfiguration": {"level": LEVEL[c.spec.severity]},
        "properties": {"security-severity": SECURITY_SEVERITY[c.spec.severity], "severity": c.spec.severity.value,
                       "tags": ["security", c.spec.scope],
                       "references": [ref.source + (f" ({ref.id})" if ref.id else "") for ref in c.spec.references]},
    } for c in checks]
    results = []
    for r in report.results:
        if r.status not in (Status.failed, Status.waived):
            continue
        res: dict[str, Any] = {
            "ruleId": r.check, "ruleIndex": index[r.check], "level": LEVEL[r.severity],
            "message": {"text": f"{r.subject}: {report.checks[r.check].spec.title} — not met: {r.message}"},
            "locations": [_location(r)],
            "properties": {"severity": r.severity.value, "security-severity": SECURITY_SEVERITY[r.severity]},
        }
        if r.status is Status.waived:
            res["suppressions"] = [{"kind": "external", "status": "accepted", "justification": r.waiver or ""}]
        results.append(res)
    notes = [{"level": "error", "message": {"text": f"{e.source}: {e.message}"}} for e in report.errors]
    notes += [{"level": "warning", "message": {"text": f"expired waiver for {w.check} ({w.where}, expired {w.expires}):"
                                                       f" {w.justification}"}} for w in report.expired_waivers]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": TOOL, "version": version, "informationUri": INFO_URI, "rules": rules}},
            "invocations": [{"executionSuccessful": not report.errors, "toolExecutionNotifications": notes}],
            "results": results,
        }],
    }


# What XML 1.0 cannot carry (most C0 controls, lone surrogates, U+FFFE/U+FFFF) and C1 controls (a
# terminal may act on them when the report goes to stdout): shown as \xNN / \uNNNN instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _xml_text(value: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", value)


def to_junit(report: Report) -> str:
    """JUnit XML. Every string in it comes through `_xml_text`: the document is well-formed whatever
    the guests' XML held, and carries no control character."""
    suites = ET.Element("testsuites", name="guestward audit")
    by_subject: dict[str, list[Result]] = {}
    for r in report.results:
        by_subject.setdefault(r.subject, []).append(r)
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for subject, rs in by_subject.items():
        suite = ET.SubElement(suites, "testsuite", name=_xml_text(subject))
        n = {"tests": len(rs), "failures": 0, "errors": 0, "skipped": 0}
        for r in rs:
            title = report.checks[r.check].spec.title if r.check in report.checks else r.check
            case = ET.SubElement(suite, "testcase", name=f"{r.check} {title}", classname=_xml_text(subject))
            if r.status is Status.failed:
                n["failures"] += 1
                ET.SubElement(case, "failure", message=_xml_text(r.message), type=r.severity.value).text = (
                    report.checks[r.check].spec.remediation if r.check in report.checks else "")
            elif r.status is Status.error:
                n["errors"] += 1
                ET.SubElement(case, "error", message=_xml_text(r.message))
            elif r.status in (Status.waived, Status.not_applicable):
                n["skipped"] += 1
                ET.SubElement(case, "skipped", message=_xml_text(f"waived: {r.waiver}" if r.waiver else r.message))
        for k, v in n.items():
            suite.set(k, str(v))
            total[k] += v
    if report.errors:
        suite = ET.SubElement(suites, "testsuite", name="inputs", tests=str(len(report.errors)),
                              errors=str(len(report.errors)), failures="0", skipped="0")
        for e in report.errors:
            case = ET.SubElement(suite, "testcase", name=_xml_text(e.source), classname="inputs")
            ET.SubElement(case, "error", message=_xml_text(e.message))
        total["tests"] += len(report.errors)
        total["errors"] += len(report.errors)
    for k, v in total.items():
        suites.set(k, str(v))
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)
