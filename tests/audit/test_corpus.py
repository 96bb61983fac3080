"""Every document of the shared virt-manager corpus gets results or a precise per-file error, never a
traceback; and some checks are known to fire on it."""

from __future__ import annotations

import datetime as dt

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import audit, parse_domains
from guestward.audit.model import Status
from guestward.hypervisor.audit_facts import read_domain_files
from tests.hypervisor.test_domain_xml import CORPUS

CHECKS = load_catalogue()


def test_the_whole_corpus_is_audited_without_crash() -> None:
    files = sorted(CORPUS.glob("*.xml"))
    assert len(files) >= 200, f"the shared corpus is required: {CORPUS}"
    docs, read_errors = read_domain_files(files)
    assert not read_errors
    domains, errors = parse_domains(docs)
    report = audit(CHECKS, domains, today=dt.date(2026, 12, 1), errors=errors)
    sources = {d.source.split("#")[0] for d in domains} | {e.source for e in errors}
    assert sources == {str(f) for f in files}  # every file: results or an error
    for e in errors:
        assert e.message.startswith(e.source + ": ") and len(e.message) > len(e.source) + 10
    assert not [r for r in report.results if r.status is Status.error], "a check raised on real-world XML"
    assert len(domains) >= 250
    per = {(r.subject, r.check) for r in report.results}
    assert len(per) == len(report.results) == len(domains) * len([c for c in CHECKS if c.spec.scope != "host"])
    fired = {r.check for r in report.results if r.status is Status.failed}
    assert {"LVD-006", "LVD-020", "LVD-040", "LVD-087", "LVD-120", "LVD-065"} <= fired
