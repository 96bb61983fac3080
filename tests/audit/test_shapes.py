"""Shapes the corpus lacks (tests/audit/data/domains/): status XML, TDX/s390-pv, two documents in
one file, non-UTF-8 and BOM input, unknown elements, and a guest with thousands of devices."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import audit, parse_domains
from guestward.audit.model import Status
from guestward.hypervisor.audit_facts import read_domain_files

DATA = Path(__file__).parent / "data" / "domains"
CHECKS = load_catalogue()


def test_odd_shapes_are_audited_without_errors() -> None:
    docs, read_errors = read_domain_files([DATA])
    domains, errors = parse_domains(docs)
    assert not read_errors and not errors
    assert sorted(d.name for d in domains) == ["bom", "latin-été", "s390pv", "status-web1", "tdx1"]
    report = audit(CHECKS, domains, today=dt.date(2026, 12, 1))
    assert not [r for r in report.results if r.status is Status.error]
    failed = {(r.subject.split(" ")[1], r.check) for r in report.results if r.status is Status.failed}
    assert ("status-web1", "LVD-006") in failed          # qemu:env inside <domstatus>
    assert ("bom", "LVD-090") in failed                  # UDP console
    assert ("s390pv", "LVD-100") not in failed           # no UEFI Secure Boot on s390x: not applicable


def test_a_guest_with_thousands_of_devices() -> None:
    disks = "".join(f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/libvirt/"
                    f"images/d{i}.img'/><target dev='vd{i}' bus='virtio'/></disk>" for i in range(3000))
    domains, errors = parse_domains([("many.xml", f"<domain><name>many</name><devices>{disks}</devices></domain>",
                                      "file")])
    report = audit(CHECKS, domains, today=dt.date(2026, 12, 1))
    assert not errors and not [r for r in report.results if r.status is Status.error]
