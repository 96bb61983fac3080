"""Finding 8: a guest's own XML cannot waive what the operator did not. In-XML waivers name one exact
check id, expire at most MAX_XML_WAIVER_DAYS ahead and never waive a critical finding; the operator's
waiver file keeps its power (`*`, any expiry, criticals)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import MAX_XML_WAIVER_DAYS, Report, audit
from guestward.audit.facts import parse_domain
from guestward.audit.model import Status
from guestward.audit.waivers import parse_waivers
from tests.conftest import guestward

CHECKS = load_catalogue()
TODAY = dt.date(2026, 12, 1)
# LVD-001 (seclabel none) is critical, LVD-040 (PCI hostdev) high, LVD-020 (floppy) medium or lower
DEVICES = "<seclabel type='none'/><devices><hostdev mode='subsystem' type='pci'/><disk device='floppy'/></devices>"


def guest(waivers: str) -> str:
    return (f"<domain><name>g</name><metadata><gw:guest xmlns:gw='https://guestward.dev/xmlns/1'>{waivers}"
            f"</gw:guest></metadata>{DEVICES}</domain>")


def waiver(check: str, expires: str = "2027-01-31", why: str = "accepted") -> str:
    return f"<gw:waiver check={quoteattr(check)} expires={quoteattr(expires)}>{why}</gw:waiver>"


def run(xml: str, file_waivers: str = "") -> Report:
    ws = parse_waivers(file_waivers, "w.yaml") if file_waivers else []
    return audit(CHECKS, [parse_domain(xml, "g.xml")], today=TODAY, waivers=ws)


def status(rep: Report, check: str) -> Status:
    return next(r.status for r in rep.results if r.check == check)


XML_CHARS = st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"])  # what an XML attribute can hold
NOT_AN_ID = st.one_of(
    st.sampled_from(["*", "LVD-*", "lvd-04?", "LVD-0[0-9][0-9]", "*-040", "LVD-040,LVD-001", "LVD-040 LVD-001",
                     "", " ", "LVD-40", "LVD-0400", "LVD-040*", ".*", "LVD-.*", "LVD-040\n*"]),
    st.text(XML_CHARS, max_size=12).filter(lambda s: not __import__("re").fullmatch(r"\s*[A-Za-z]{3}-\d{3}\s*", s)),
)


@given(check=NOT_AN_ID)
@settings(max_examples=80, deadline=None)
def test_an_in_xml_waiver_that_is_not_one_check_id_waives_nothing(check: str) -> None:
    rep = run(guest(waiver(check)))
    assert not [r for r in rep.results if r.status is Status.waived]
    assert {status(rep, c) for c in ("LVD-001", "LVD-040", "LVD-020")} == {Status.failed}
    assert len(rep.errors) == 1 and "never a wildcard" in rep.errors[0].message
    assert rep.errors[0].message.startswith("domain g (file g.xml): in-XML waiver for ")


@given(days=st.integers(-400, 4000))
@settings(max_examples=60, deadline=None)
def test_an_in_xml_waiver_expires_at_most_90_days_ahead(days: int) -> None:
    until = TODAY + dt.timedelta(days=days)
    rep = run(guest(waiver("LVD-040", until.isoformat())))
    if 0 <= days <= MAX_XML_WAIVER_DAYS:
        assert status(rep, "LVD-040") is Status.waived and not rep.errors
    elif days < 0:
        assert status(rep, "LVD-040") is Status.failed and [w.check for w in rep.expired_waivers] == ["LVD-040"]
    else:
        assert status(rep, "LVD-040") is Status.failed
        assert [e.message.split(": not applied: ")[1] for e in rep.errors] == [
            f"expires {until.isoformat()}, more than {MAX_XML_WAIVER_DAYS} days ahead (use the waiver file for longer)"]


@given(expires=st.sampled_from(["", "never", "2027-13-01", "2027-01-31T00:00", "9999-99-99"])
       | st.text(XML_CHARS, max_size=10))
@settings(max_examples=40, deadline=None)
def test_an_in_xml_waiver_without_a_valid_expiry_waives_nothing(expires: str) -> None:
    try:
        if dt.date.fromisoformat(expires) <= TODAY + dt.timedelta(days=MAX_XML_WAIVER_DAYS):
            return  # a valid near date: the other test
    except ValueError:
        pass
    rep = run(guest(waiver("LVD-040", expires)))
    assert status(rep, "LVD-040") is Status.failed and len(rep.errors) == 1


@given(check=st.sampled_from(["LVD-001", "lvd-001", " LVD-001 "]), days=st.integers(0, MAX_XML_WAIVER_DAYS))
@settings(max_examples=20, deadline=None)
def test_an_in_xml_waiver_never_waives_a_critical_finding(check: str, days: int) -> None:
    until = (TODAY + dt.timedelta(days=days)).isoformat()
    rep = run(guest(waiver(check, until) + waiver("LVD-040", until)))
    assert status(rep, "LVD-001") is Status.failed
    assert status(rep, "LVD-040") is Status.waived  # the same guest's non-critical waiver still applies
    assert [e.message for e in rep.errors] == [
        "domain g (file g.xml): in-XML waiver for LVD-001: not applied: a guest's own XML never waives a critical "
        "finding"]


def test_the_operator_waiver_file_keeps_its_power() -> None:
    rep = run(guest(""), "waivers:\n  - {check: '*', guests: [g], justification: lab, expires: 2099-01-01}\n")
    assert {status(rep, c) for c in ("LVD-001", "LVD-040", "LVD-020")} == {Status.waived}


def test_the_issue_reproduction_a_wildcard_in_the_guests_xml_does_not_pass_fail_on_critical(tmp_path: Path) -> None:
    f = tmp_path / "g.xml"
    f.write_text(guest('<gw:waiver check="*" expires="2099-01-01">everything</gw:waiver>'))
    r = guestward("audit", str(f), "--fail-on", "critical", "-f", "json", "--today", "2026-12-01")
    assert r.returncode == 1, r.stdout
    doc = json.loads(r.stdout)
    assert doc["summary"]["status"]["waived"] == 0 and doc["summary"]["failed_by_severity"]["critical"] >= 1
    assert "never a wildcard" in doc["input_errors"][0]["message"]
    exact = tmp_path / "exact.xml"
    exact.write_text(guest(waiver("LVD-001", "2027-01-31")))
    r = guestward("audit", str(exact), "--fail-on", "critical", "--today", "2026-12-01")
    assert r.returncode == 1 and "never waives a critical finding" in r.stdout
