"""The catalogue loads whole, every check has its metadata and fixtures, and every check passes its
pass fixtures and fails its fail fixtures."""

from __future__ import annotations

import datetime as dt

import pytest

from guestward.audit.catalogue import load_benchmarks, load_catalogue
from guestward.audit.engine import audit
from guestward.audit.model import Status
from tests.audit.fixtures import fixture_facts

CHECKS = load_catalogue()
TODAY = dt.date(2026, 12, 1)


def test_the_catalogue_has_at_least_100_checks_with_unique_ids() -> None:
    ids = [c.id for c in CHECKS]
    assert len(ids) == len(set(ids)) >= 100


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.id)
def test_metadata_and_fixtures_present(check) -> None:  # type: ignore[no-untyped-def]
    s = check.spec
    assert s.title and s.rationale and s.remediation and s.references
    for sub in ("pass", "fail"):
        folder = check.folder / sub
        assert folder.is_dir() and any(f.name.endswith((".xml", ".yaml")) for f in folder.iterdir()), \
            f"{check.id}: no {sub}/ fixtures"


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.id)
@pytest.mark.parametrize("expect", ["pass", "fail"])
def test_fixture(check, expect: str) -> None:  # type: ignore[no-untyped-def]
    domains, hosts = fixture_facts(check.folder / expect)
    report = audit([check], domains, hosts, today=TODAY)
    mine = [r for r in report.results if r.check == check.id]
    if check.spec.scope == "host":
        mine = [r for r in mine if r.kind == "host"]
    assert mine, f"{check.id}: no results for {expect} fixtures"
    want = Status.passed if expect == "pass" else Status.failed
    assert all(r.status is want for r in mine), [(r.subject, r.status.value, r.message) for r in mine]


def test_benchmarks_map_only_known_checks() -> None:
    benches = load_benchmarks()
    assert "vsphere-vm-stig" in benches
    assert all(ctl.checks or ctl.note for b in benches.values() for ctl in b.controls)
