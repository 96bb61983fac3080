"""Every command that prints data, run as the real `guestward` command on hostile data: guest names,
event subjects, flow records, domain XML (names, labels, waivers, file names with undecodable bytes)
and an inspection report. The output shows each value's visible text escaped, carries no control or
invisible character from it, takes no style from it, and the command does not crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.audit.facts import parse_domain
from guestward.dataplane.flowlog import FlowRecord
from guestward.store.sqlite import Store
from tests.cli.hostile import CLASSES, SGR, hostile, shown, unsafe_chars
from tests.conftest import GUESTWARD

VALID = st.sampled_from([c for c in CLASSES if c != "invalid_utf8"])  # sqlite keeps valid text only
RUNS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ENV = {**os.environ, "COLUMNS": "100000"}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(GUESTWARD), *args], capture_output=True, timeout=120, check=False, env=env or ENV)


def _text(b: bytes) -> str:
    return b.decode("utf-8")  # strict: the output itself is always valid UTF-8


def _config(tmp: Path) -> Path:
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp / "state"), "hosts": []}))
    return cfg


@given(values=st.lists(VALID.flatmap(hostile), min_size=3, max_size=6))
@RUNS
def test_events_show_hostile_subjects_and_kinds_escaped(tmp_path_factory, values: list[str]) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("ev")
    cfg = _config(tmp)
    store = Store(tmp / "state" / "guestward.db")
    for v in values:
        store.record("label", v, guest=v)
    store.close()
    r = _run("events", "--config", str(cfg), "--limit", "100")
    assert r.returncode == 0, r.stderr
    out = _text(r.stdout)
    assert unsafe_chars(out) == []
    for v in values:
        assert f" label {shown(v)} " in out
    j = _run("events", "--config", str(cfg), "--limit", "100", "--json")
    assert sorted(e["subject"] for e in json.loads(j.stdout)) == sorted(values)  # JSON keeps the exact value
    assert all(b < 0x80 and (b >= 0x20 or b == 0x0A) for b in j.stdout)  # ...escaped by json.dumps


@given(values=st.lists(VALID.flatmap(hostile), min_size=2, max_size=5))
@RUNS
def test_flows_show_hostile_guests_and_rules_escaped(tmp_path_factory, values: list[str]) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fl")
    cfg = _config(tmp)
    store = Store(tmp / "state" / "guestward.db")
    store.put_flows([FlowRecord(at=1.0 + i, host="hv1", guest=v, direction="ingress", verdict="blocked",
                                reason="policy", chain="in-x", rule=f"app/{v}/r", proto="tcp", src="10.0.0.1",
                                sport=1, dst="10.0.0.2", dport=2, tcpflags=v) for i, v in enumerate(values)], 1000)
    store.close()
    r = _run("flows", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    out = _text(r.stdout)
    assert unsafe_chars(out) == []
    lines = out.splitlines()
    assert len(lines) == len(values)  # a newline in a value does not forge a record
    for ln, v in zip(lines, values, strict=True):
        assert f" blocked {shown(v)} ingress " in ln and f"app/{shown(v)}/r" in ln and f"[{shown(v)}]" in ln


DOMAIN = """<domain type='kvm'><name>{name}</name>
<metadata><gw:guest xmlns:gw="https://guestward.dev/xmlns/1"><gw:label key="app">{label}</gw:label>
</gw:guest></metadata>
<devices><graphics type='vnc' listen='0.0.0.0'/></devices></domain>"""


def _xml_text(v: str) -> str:
    """`v` as XML character data: XML 1.0 cannot carry most C0 controls or undecodable bytes, so those
    become their visible escapes already (what a hostile file can hold is the rest)."""
    from xml.sax.saxutils import escape as xml_escape
    ok = "".join(c if (c in "\t\n\r" or 0x20 <= ord(c) < 0xD800 or 0xE000 <= ord(c) < 0xFFFE) else "?" for c in v)
    return xml_escape(ok)


@given(name=hostile(), fname=hostile())
@RUNS
def test_audit_table_shows_hostile_names_files_and_xml_escaped(tmp_path_factory, name: str, fname: str) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("au")
    raw_name = os.fsencode(fname.replace("/", "_").replace("\x00", "_"))[:150] + b".xml"
    path = os.path.join(os.fsencode(tmp), raw_name)
    with open(path, "wb") as f:
        f.write(DOMAIN.format(name=_xml_text(name), label=_xml_text(name)).encode("utf-8"))
    with open(os.path.join(os.fsencode(tmp), b"\x1b]0;x\x07[x]\x9b.xml"), "wb") as f:
        f.write(b"<domain><name>\xff\xfe</name></domain>")  # invalid UTF-8: an input error, shown escaped
    r = _run("audit", os.fsdecode(os.fsencode(tmp)), "--fail-on", "critical")
    out = _text(r.stdout)
    assert r.returncode == 1, r.stderr  # an input error fails --fail-on; nothing crashed
    assert b"Traceback" not in r.stderr
    assert unsafe_chars(out) == []
    parsed = parse_domain(DOMAIN.format(name=_xml_text(name), label=_xml_text(name)), "x").name  # as parsed
    assert f"domain {shown(parsed)} (file {shown(os.fsdecode(path))})" in out
    assert "LVD-" in out  # the findings are there, the graphics one among them
    assert "input error: " + shown(os.fsdecode(os.path.join(os.fsencode(tmp), b"\x1b]0;x\x07[x]\x9b.xml"))) in out


INSPECT = """
import json, sys
from guestward.cli import inspect_cmd
rep = json.loads(sys.stdin.read())
inspect_cmd.render(rep, {"since": 0, "added": {"user": [rep["subject"]]}, "removed": {}})
"""


def _report(v: str) -> dict[str, object]:
    return {
        "subject": f"image:/x/{v}", "method": "read-only (image file)", "partial": False, "notes": [v],
        "inventory": {"os": {"pretty_name": v}, "hostname": v, "packages": [{}], "users": [{"name": v}],
                      "kernels": [{"version": v}], "authorized_keys": [{"user": v, "type": "ssh-ed25519",
                      "fingerprint": "SHA256:x", "comment": v}], "errors": [{"section": "users", "error": v}]},
        "findings": [{"type": "config", "severity": "high", "id": "CFG-1", "title": "Title", "detail": v},
                     {"type": "vulnerability", "severity": "critical", "id": "CVE-2026-0001", "package": v,
                      "source": v, "installed": "1", "fixed": None, "feed": "debian"}],
    }


def _inspect(rep: dict[str, object]) -> tuple[str, str]:
    env = {**ENV, "FORCE_COLOR": "1", "COLORTERM": "truecolor", "TERM": "xterm-256color"}
    p = subprocess.run([sys.executable, "-c", INSPECT], input=json.dumps(rep).encode(), capture_output=True,
                       timeout=60, check=False, env=env)
    assert p.returncode == 0, p.stderr
    return _text(p.stdout), _text(p.stderr)


BASE_OUT, BASE_ERR = _inspect(_report("benign"))


@given(value=hostile())
@RUNS
def test_inspect_report_shows_image_text_escaped_and_hides_no_finding(value: str) -> None:
    out, err = _inspect(_report(value))
    for stream, base in ((out, BASE_OUT), (err, BASE_ERR)):
        assert unsafe_chars(stream) == []
        assert set(SGR.findall(stream)) <= set(SGR.findall(base))  # no style (conceal, black on black) from data
    bare = SGR.sub("", out)
    assert "CVE-2026-0001" in bare and "CFG-1" in bare
    for needle in (f"image:/x/{shown(value)}", f"  {shown(value)}  hostname {shown(value)}", f"Title: {shown(value)}"):
        assert needle in bare
    assert f"note: {shown(value)}" in SGR.sub("", err) and f"users: {shown(value)}" in SGR.sub("", err)


@given(fname=hostile())
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_audit_json_sarif_and_junit_carry_hostile_text_as_escapes(tmp_path_factory, fname: str) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fmt")
    path = os.path.join(os.fsencode(tmp), os.fsencode(fname.replace("/", "_").replace("\x00", "_"))[:150] + b".xml")
    with open(path, "wb") as f:
        f.write(DOMAIN.format(name="g", label="x").encode())
    for fmt in ("json", "sarif", "junit"):
        r = _run("audit", os.fsdecode(path), "-f", fmt)
        assert r.returncode == 0, r.stderr
        assert all(b == 0x0A or 0x20 <= b < 0x7F for b in r.stdout) or fmt == "junit", fmt  # json.dumps: ASCII
        out = _text(r.stdout)
        if fmt == "junit":  # for programs: no control character (XML 1.0 cannot hold them), the rest as is
            assert [c for c in out if c != "\n" and unicodedata.category(c) in ("Cc", "Cs")] == []
            suites = ET.fromstring(r.stdout)  # well-formed whatever the file name held
            assert suites.get("failures") != "0"
        else:
            # the exact path survives, as JSON escapes (undecodable bytes as \udcNN, what os.fsdecode makes)
            assert any(os.fsdecode(path) in s for s in _strings(json.loads(r.stdout))), fmt


def _strings(doc: object) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return []
