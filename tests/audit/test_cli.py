"""`guestward audit` end to end: formats, --fail-on, --check/--skip, --benchmark, waivers, errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import guestward

BAD = """<domain type='kvm'><name>bad</name><devices>
<graphics type='vnc' port='5900' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>
<hostdev mode='subsystem' type='pci'/></devices></domain>"""


def write(tmp_path: Path) -> Path:
    d = tmp_path / "xml"
    d.mkdir()
    (d / "bad.xml").write_text(BAD)
    (d / "broken.xml").write_text("<domain>")
    return d


def test_table_json_sarif_junit_and_exit_status(tmp_path: Path) -> None:
    d = write(tmp_path)
    t = guestward("audit", str(d))
    assert t.returncode == 0, t.stderr
    assert "LVD-081" in t.stdout and "failed" in t.stdout and "input error" in t.stdout
    j = guestward("audit", str(d), "-f", "json")
    doc = json.loads(j.stdout)
    assert doc["summary"]["input_errors"] == 1
    assert guestward("audit", str(d / "bad.xml"), "--fail-on", "critical").returncode == 1
    assert guestward("audit", str(d / "bad.xml"), "--check", "LVD-02*", "--fail-on", "critical").returncode == 0
    s = guestward("audit", str(d / "bad.xml"), "-f", "sarif", "-o", str(tmp_path / "out.sarif"))
    assert s.returncode == 0 and json.loads((tmp_path / "out.sarif").read_text())["version"] == "2.1.0"
    u = guestward("audit", str(d / "bad.xml"), "-f", "junit")
    assert u.stdout.startswith("<?xml") and "<testsuites" in u.stdout


def test_skip_and_waivers_file_and_benchmark(tmp_path: Path) -> None:
    d = write(tmp_path)
    w = tmp_path / "w.yaml"
    w.write_text("waivers:\n  - {check: LVD-081, guests: [bad], justification: lab only, expires: 2099-01-01}\n")
    j = json.loads(guestward("audit", str(d / "bad.xml"), "-f", "json", "--waivers", str(w),
                             "--skip", "LVD-040").stdout)
    by = {r["check"]: r for r in j["results"]}
    assert "LVD-040" not in by and by["LVD-081"]["status"] == "waived" and "lab only" in by["LVD-081"]["waiver"]
    b = json.loads(guestward("audit", str(d / "bad.xml"), "-f", "json", "--benchmark", "vsphere-vm-stig").stdout)
    assert any(c["status"] == "fail" for c in b["benchmark"]["controls"])
    t = guestward("audit", str(d / "bad.xml"), "--benchmark", "vsphere-vm-stig")
    assert "vm-9.pci-passthrough" in t.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["audit"], ["audit", str(tmp_path), "--check", "LVX-1"], ["audit", str(tmp_path), "--benchmark", "x"]):
        r = guestward(*args)
        assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    (tmp_path / "w.yaml").write_text("waivers: [{check: LVD-001}]")
    r = guestward("audit", str(tmp_path), "--waivers", str(tmp_path / "w.yaml"))
    assert r.returncode == 2 and "w.yaml" in r.stderr


def test_list_checks() -> None:
    r = guestward("audit", "--list-checks")
    assert r.returncode == 0 and "LVD-001" in r.stdout and "LVH-047" in r.stdout
