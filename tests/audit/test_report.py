"""JSON, SARIF 2.1.0 (validated against the official schema) and JUnit XML of one report."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema

from guestward.audit.catalogue import load_benchmarks, load_catalogue
from guestward.audit.engine import InputError, audit
from guestward.audit.facts import parse_domain
from guestward.audit.report import benchmark_controls, to_json, to_junit, to_sarif

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-2.1.0-rtm.5.json").read_text())
CHECKS = load_catalogue()
WAIVED = ("<metadata><gw:guest xmlns:gw='https://guestward.dev/xmlns/1'>"
          "<gw:waiver check='LVD-040' expires='2027-01-31'>lab GPU</gw:waiver></gw:guest></metadata>")


def report():  # type: ignore[no-untyped-def]
    devices = "<hostdev mode='subsystem' type='pci'/><graphics type='vnc' listen='0.0.0.0'/>"
    ds = [parse_domain(f"<domain type='qemu'><name>g{i}</name>{WAIVED if i else ''}<devices>{devices}</devices>"
                       "</domain>", f"/srv/xml/g{i}.xml") for i in range(2)]
    ds.append(parse_domain("<domain><name>live</name></domain>", "qemu:///system#live", "live"))
    return audit(CHECKS, ds, today=dt.date(2026, 12, 1), errors=[InputError("/srv/xml/bad.xml", "malformed XML")])


def test_sarif_is_valid_against_the_2_1_0_schema_and_carries_suppressions() -> None:
    doc = to_sarif(report(), "0.1.0")
    jsonschema.validate(doc, SCHEMA)
    run = doc["runs"][0]
    assert len(run["tool"]["driver"]["rules"]) == len(CHECKS)
    assert all("security-severity" in r["properties"] for r in run["tool"]["driver"]["rules"])
    lvd040 = [r for r in run["results"] if r["ruleId"] == "LVD-040"]
    assert sorted("suppressions" in r for r in lvd040) == [False, True]
    assert run["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"].startswith("/srv/xml/bad.xml")
    json.dumps(doc)


def test_json_has_summary_results_errors() -> None:
    doc = to_json(report())
    assert doc["summary"]["status"]["waived"] == 1 and doc["summary"]["input_errors"] == 1
    assert {"check", "subject", "status", "severity", "message", "waiver", "source"} <= set(doc["results"][0])
    json.dumps(doc)


def test_junit_is_well_formed_with_counts() -> None:
    root = ET.fromstring(to_junit(report()))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert int(root.get("tests", "0")) == sum(int(s.get("tests", "0")) for s in suites)
    assert int(root.get("failures", "0")) > 0 and root.find(".//testcase/skipped") is not None
    assert root.find("testsuite[@name='inputs']/testcase/error") is not None


def test_benchmark_reports_per_control() -> None:
    bench = load_benchmarks()["vsphere-vm-stig"]
    rows = {r["control"].split(" ")[0]: r for r in benchmark_controls(report(), bench)}
    pci = rows["vm-9.pci-passthrough"]
    assert pci["status"] == "fail" and "LVD-040" in pci["failing_checks"]
    assert rows["vm-9.vmrc-lock"]["status"] == "not covered"
