"""Selection, label-dependent severity, waivers (file and in-XML), expiry, and the operator set."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import audit, select_checks, value_fails
from guestward.audit.facts import FactError, parse_domain
from guestward.audit.model import CheckSpec, Op, Severity, Status
from guestward.audit.waivers import parse_waivers

CHECKS = load_catalogue()
TODAY = dt.date(2026, 12, 1)


def guest(name: str, labels: dict[str, str] | None = None, waivers: str = "", devices: str = "") -> str:
    lab = "".join(f'<gw:label key="{k}">{v}</gw:label>' for k, v in (labels or {}).items())
    return (f"<domain type='kvm'><name>{name}</name><metadata><gw:guest xmlns:gw='https://guestward.dev/xmlns/1'>"
            f"{lab}{waivers}</gw:guest></metadata><devices>{devices}</devices></domain>")


HOSTDEV = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address bus='0x06'/></source></hostdev>"


def one(report, check: str, name: str):  # type: ignore[no-untyped-def]
    return next(r for r in report.results if r.check == check and f"domain {name} " in r.subject)


def test_hostdev_is_worse_for_untrusted_than_for_platform_guests() -> None:
    ds = [parse_domain(guest(n, {"trust": t}, devices=HOSTDEV), n) for n, t in
          (("u", "untrusted"), ("p", "platform"), ("x", "other"))]
    report = audit(select_checks(CHECKS, ["LVD-040"]), ds, today=TODAY)
    assert [one(report, "LVD-040", n).severity for n in "upx"] == [Severity.critical, Severity.medium, Severity.high]


def test_in_xml_waiver_applies_until_it_expires_then_is_reported() -> None:
    valid = '<gw:waiver check="LVD-040" expires="2027-01-31">GPU node, IOMMU verified</gw:waiver>'
    old = '<gw:waiver check="LVD-040" expires="2026-01-31">old exception</gw:waiver>'
    ds = [parse_domain(guest("a", waivers=valid, devices=HOSTDEV), "a.xml"),
          parse_domain(guest("b", waivers=old, devices=HOSTDEV), "b.xml")]
    report = audit(select_checks(CHECKS, ["LVD-04*"]), ds, today=TODAY)
    a, b = one(report, "LVD-040", "a"), one(report, "LVD-040", "b")
    assert a.status is Status.waived and "GPU node, IOMMU verified" in (a.waiver or "")
    assert b.status is Status.failed
    assert [(w.check, w.expires) for w in report.expired_waivers] == [("LVD-040", "2026-01-31")]
    assert one(report, "LVD-042", "a").status is Status.passed  # a waiver covers only its check


def test_waiver_file_for_guests_by_glob_and_for_the_host() -> None:
    ws = parse_waivers("""
waivers:
  - {check: LVD-040, guests: ["gpu-*"], justification: "GPU farm, IOMMU on", expires: 2027-06-30}
  - {check: "*", guests: [legacy], justification: "decommissioned in January", expires: 2026-06-30}
""", "waivers.yaml")
    ds = [parse_domain(guest(n, devices=HOSTDEV), n) for n in ("gpu-1", "web", "legacy")]
    report = audit(select_checks(CHECKS, ["LVD-040"]), ds, waivers=ws, today=TODAY)
    assert one(report, "LVD-040", "gpu-1").status is Status.waived
    assert "waivers.yaml" in (one(report, "LVD-040", "gpu-1").waiver or "")
    assert one(report, "LVD-040", "web").status is Status.failed
    assert one(report, "LVD-040", "legacy").status is Status.failed  # expired
    assert report.expired_waivers[0].justification == "decommissioned in January"


@pytest.mark.parametrize("bad", [
    "waivers: [{check: LVD-040, justification: x y z, expires: 2027-01-01}]",            # no scope
    "waivers: [{check: LVD-040, guests: [a], justification: why, expires: someday}]",     # bad date
    "waivers: [{check: NOPE, guests: [a], justification: why, expires: 2027-01-01}]",     # bad id
    "waivers: [{check: LVD-040, guests: [a], justification: why, expires: 2027-01-01, x: 1}]",
    "waivers: [",
])
def test_bad_waiver_files_are_errors(bad: str) -> None:
    with pytest.raises(FactError, match=r"w\.yaml"):
        parse_waivers(bad, "w.yaml")


def test_check_and_skip_selection() -> None:
    assert [c.id for c in select_checks(CHECKS, ["lvd-00[12]"])] == ["LVD-001", "LVD-002"]
    assert "LVD-001" not in {c.id for c in select_checks(CHECKS, skip=["LVD-001"])}
    with pytest.raises(ValueError, match="no such check"):
        select_checks(CHECKS, ["LVX-999"])


def test_check_metadata_is_validated() -> None:
    base = CHECKS[0].spec.model_dump(mode="json")
    for change in ({"severity": "urgent"}, {"rule": {**base["rule"], "fail_if": "sort_of"}},
                   {"rule": {"kind": "domain", "select": ["x"], "fail_if": "in", "operand": "notalist"}},
                   {"rule": {"kind": "domain", "select": ["x"], "fail_if": "matches", "operand": "("}},
                   {"title": ""}, {"references": []}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            CheckSpec.model_validate({**base, **change})


@pytest.mark.parametrize(("op", "value", "operand", "fails"), [
    (Op.equals, 0, 0, True), (Op.equals, "0", 0, True), (Op.equals, "None", "none", True),
    (Op.not_equals, 1, 1, False), (Op.in_, "0.0.0.0", ["0.0.0.0", "::"], True), (Op.not_in, "lockd", ["lockd"], False),
    (Op.matches, "NORMAL:+VERS-TLS1.0", r"VERS-TLS1\.0", True), (Op.not_matches, "x", "^x$", False),
    (Op.lt, "56", 112, True), (Op.gt, 3, 5, False), (Op.lt, "abc", 3, False),
    (Op.contains, ["mount"], "mount", True), (Op.lacks, [], "mount", True), (Op.lacks, "mount", "mount", False),
])
def test_operators(op: Op, value: object, operand: object, fails: bool) -> None:
    assert value_fails(op, value, operand) is fails  # type: ignore[arg-type]


def test_audit_needs_a_date() -> None:
    with pytest.raises(ValueError, match="today"):
        audit(CHECKS, [])


def test_the_tag_shortcut_agrees_with_a_full_search() -> None:
    """_select skips a search when the path's last tag is absent; it must never change a verdict."""
    import guestward.audit.engine as engine
    from tests.audit.test_corpus import CORPUS

    docs = [(str(f), f.read_bytes(), "file") for f in sorted(CORPUS.glob("*.xml"))[:60]]
    domains, _ = engine.parse_domains(docs)
    fast = audit(CHECKS, domains, today=TODAY).results
    real_tag = engine._last_tag
    try:
        engine._last_tag = lambda path: None  # type: ignore[assignment]  # never skip
        slow = audit(CHECKS, domains, today=TODAY).results
    finally:
        engine._last_tag = real_tag
    assert fast == slow
