"""Reading a host root: links resolved inside the root only, loops and escapes reported, huge files
not read, and the rest of the host audited."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import audit
from guestward.audit.model import Status
from guestward.hypervisor.audit_facts import RootEscape, read_domain_files, read_host_root, resolve_in_root

CHECKS = load_catalogue()
TODAY = dt.date(2026, 12, 1)


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "etc/libvirt/qemu").mkdir(parents=True)
    (root / "etc/libvirt/qemu.conf").write_text('user = "root"\nseccomp_sandbox = 0\n')
    (root / "var/lib/libvirt/images").mkdir(parents=True)
    img = root / "var/lib/libvirt/images/web1.qcow2"
    img.write_text("x")
    img.chmod(0o644)
    return root


def result(report, check: str):  # type: ignore[no-untyped-def]
    return next(r for r in report.results if r.check == check)


def test_a_host_root_is_audited(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    host = read_host_root(root, CHECKS)
    report = audit(CHECKS, [], [host], today=TODAY)
    assert result(report, "LVH-004").status is Status.failed
    assert result(report, "LVH-006").status is Status.failed
    r = result(report, "LVH-075")
    assert r.status is Status.failed and "/var/lib/libvirt/images/web1.qcow2" in r.message
    assert result(report, "LVH-002").status is Status.passed  # absent key: libvirt's default


def test_absolute_symlink_is_resolved_inside_the_root_never_outside(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    outside = tmp_path / "outside.conf"
    outside.write_text('user = "root"\n')
    (root / "etc/libvirt/libvirtd.conf").symlink_to("/etc/libvirt/qemu.conf")  # absolute: means root's own
    (root / "etc/libvirt/virtqemud.conf").symlink_to("../../../outside.conf")   # climbs: clamped at the root
    assert resolve_in_root(root, "/etc/libvirt/libvirtd.conf") == root / "etc/libvirt/qemu.conf"
    assert resolve_in_root(root, "/etc/libvirt/virtqemud.conf") == root / "outside.conf"
    host = read_host_root(root, CHECKS)
    assert host.files["/etc/libvirt/libvirtd.conf"] == (root / "etc/libvirt/qemu.conf").read_text()
    assert "/etc/libvirt/virtqemud.conf" not in host.files  # root/outside.conf does not exist; the real one is not read


def test_symlink_to_a_host_file_outside_reads_the_roots_copy(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc/passwd").symlink_to("/etc/passwd")  # on a copied /etc: the root's, never this machine's
    host = read_host_root(root, CHECKS)
    assert "/etc/passwd" not in host.files


def test_symlink_loop_is_an_error_for_that_path_only(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc/libvirt/libvirtd.conf").symlink_to("virtqemud.conf")
    (root / "etc/libvirt/virtqemud.conf").symlink_to("libvirtd.conf")
    (root / "etc/libvirt/hooks").symlink_to("hooks")
    with pytest.raises(RootEscape, match="symlink loop"):
        resolve_in_root(root, "/etc/libvirt/libvirtd.conf")
    host = read_host_root(root, CHECKS)
    problems = dict(host.problems)
    assert "symlink loop" in problems["/etc/libvirt/libvirtd.conf"]
    report = audit(CHECKS, [], [host], today=TODAY)
    assert any("symlink loop" in e.message for e in report.errors)
    assert result(report, "LVH-004").status is Status.failed  # the rest of the host is still audited


def test_huge_sparse_config_file_is_not_read(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    big = root / "etc/libvirt/libvirtd.conf"
    with open(big, "wb") as f:
        f.truncate(3 * 1024**3)  # 3 GiB, sparse: reading it would take seconds and gigabytes
    host = read_host_root(root, CHECKS)
    assert "larger than" in dict(host.problems)["/etc/libvirt/libvirtd.conf"]
    assert "/etc/libvirt/qemu.conf" in host.files


def test_huge_sparse_domain_file_and_fifo_are_errors_without_reading(tmp_path: Path) -> None:
    d = tmp_path / "domains"
    d.mkdir()
    with open(d / "huge.xml", "wb") as f:
        f.truncate(5 * 1024**3)
    os.mkfifo(d / "pipe.xml")  # a reader that opened it blocking would hang forever
    (d / "ok.xml").write_text("<domain><name>ok</name></domain>")
    docs, errors = read_domain_files([d, tmp_path / "missing.xml"])
    assert [Path(s).name for s, _, _ in docs] == ["ok.xml"]
    msgs = {Path(e.source).name: e.message for e in errors}
    assert "larger than 4 MiB" in msgs["huge.xml"] and "not a regular file" in msgs["pipe.xml"]
    assert "no such file" in msgs["missing.xml"]


def test_huge_qemu_log_only_its_tail_is_read(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    logs = root / "var/log/libvirt/qemu"
    logs.mkdir(parents=True)
    with open(logs / "web1.log", "wb") as f:
        f.truncate(2 * 1024**3)
        f.seek(0, os.SEEK_END)
        f.write(b"\n2026-11-30T10:00:00Z qemu-system-x86_64: Domain id=3 is tainted: high-privileges\n")
    host = read_host_root(root, CHECKS)
    assert len(host.files["/var/log/libvirt/qemu/web1.log"]) <= 256 * 1024
    r = result(audit(CHECKS, [], [host], today=TODAY), "LVH-079")
    assert r.status is Status.failed and "high-privileges" in r.message and r.severity.value == "high"
