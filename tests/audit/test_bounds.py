"""Finding 8: what hostile domain XML can make the audit hold and take is bounded, with a clear error
naming the file, and nothing else is lost.

The memory tests run the real `guestward audit` in a child under an address-space limit
(RLIMIT_AS), so an unbounded path fails the test with MemoryError instead of passing slowly; the
two reproductions of the issue took 4.4 GB / 63 s and 3.1 GB / 108 s before the caps."""

from __future__ import annotations

import datetime as dt
import json
import re
import resource
import subprocess
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import MAX_DOMAINS_PER_RUN, MAX_ELEMENTS_PER_RUN, MAX_MESSAGE, audit, parse_domains
from guestward.audit.facts import MAX_DOMAINS_PER_FILE, MAX_ELEMENTS_PER_FILE, parse_domain, parse_domain_file
from tests.conftest import GUESTWARD

CATALOGUE = load_catalogue()
AS_LIMIT = 1536 * 1024 * 1024  # the venv's Python, rich, pydantic and the catalogue need ~400 MB of address space
GOOD = "<domain type='kvm'><name>good</name><devices><graphics type='vnc' listen='0.0.0.0'/></devices></domain>"
LABEL = ("<domain><name>g{i}</name><seclabel type='static' model='selinux'>"
         "<label>system_u:system_r:svirt_t:s0:c1,c2</label></seclabel></domain>")


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _audit(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.monotonic()
    r = subprocess.run([str(GUESTWARD), "audit", *args], capture_output=True, text=True, timeout=120, check=False,
                       preexec_fn=_limited)
    return r, time.monotonic() - t


# Each variant is far over a cap; written out it stays under the 4 MiB file cap so the cap under test
# (domains or elements per file), not the size cap, is what refuses it.
HOSTILE_FILES = {
    "node of 20,000 empty domains (the issue's 180 KB)": "<node>" + "<domain/>" * 20_000 + "</node>",
    "20,000 concatenated documents": "<domain/>" * 20_000,
    "20,000 documents with XML declarations": "<?xml version='1.0'?>\n<domain/>\n" * 20_000,
    "one domain of 300,000 elements": "<domain><name>x</name><devices>" + "<a/>" * 300_000 + "</devices></domain>",
    "deep nesting": "<domain>" + "<a>" * 250_000 + "</a>" * 250_000 + "</domain>",
}


@pytest.mark.parametrize("variant", sorted(HOSTILE_FILES))
def test_a_file_over_a_cap_is_one_clear_error_in_bounded_memory_and_time(tmp_path: Path, variant: str) -> None:
    (tmp_path / "a-good.xml").write_text(GOOD)
    hostile = tmp_path / "hostile.xml"
    hostile.write_text(HOSTILE_FILES[variant])
    assert hostile.stat().st_size < 4 * 1024 * 1024
    (tmp_path / "z-good.xml").write_text(GOOD.replace("good", "good2"))
    r, took = _audit(str(tmp_path), "-f", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert [e["source"] for e in doc["input_errors"]] == [str(hostile)]
    msg = doc["input_errors"][0]["message"]
    assert msg.startswith(f"{hostile}: more than ") and ("domains in one file" in msg or "elements" in msg)
    subjects = {x["subject"] for x in doc["results"]}
    assert subjects == {f"domain good (file {tmp_path}/a-good.xml)", f"domain good2 (file {tmp_path}/z-good.xml)"}
    assert took < 30


def test_the_caps_are_exact() -> None:
    at = "<node>" + "<domain/>" * MAX_DOMAINS_PER_FILE + "</node>"
    assert len(parse_domain_file(at, "n.xml")[0]) == MAX_DOMAINS_PER_FILE
    with pytest.raises(ValueError, match=re.escape(f"n.xml: more than {MAX_DOMAINS_PER_FILE} domains")):
        parse_domain_file(at.replace("<node>", "<node><domain/>"), "n.xml")
    many = "<domain>" + "<a/>" * (MAX_ELEMENTS_PER_FILE - 1) + "</domain>"
    assert len(parse_domain_file(many, "e.xml")[0]) == 1
    with pytest.raises(ValueError, match=re.escape(f"e.xml: more than {MAX_ELEMENTS_PER_FILE} XML elements")):
        parse_domain_file(many.replace("<domain>", "<domain><a/>"), "e.xml")


def test_a_run_judges_at_most_max_domains_and_names_every_file_left_out() -> None:
    per = MAX_DOMAINS_PER_FILE
    node = "<node>" + "<domain/>" * per + "</node>"
    files = [(f"f{i}.xml", node, "file") for i in range(MAX_DOMAINS_PER_RUN // per + 2)]
    domains, errors = parse_domains(files)
    assert len(domains) == MAX_DOMAINS_PER_RUN
    full, partial = divmod(MAX_DOMAINS_PER_RUN, per)
    left = [e.source for e in errors]
    assert left == [f"f{i}.xml" for i in range(full, len(files))]
    assert f"{per - partial} of its domains not audited" in errors[0].message
    assert all("another run" in e.message for e in errors)


def test_shared_static_label_messages_are_bounded_and_linear(tmp_path: Path) -> None:
    n = 4 * MAX_DOMAINS_PER_FILE
    for f in range(4):
        (tmp_path / f"f{f}.xml").write_text("<node>" + "".join(
            LABEL.format(i=f * MAX_DOMAINS_PER_FILE + i) for i in range(MAX_DOMAINS_PER_FILE)) + "</node>")
    r, took = _audit(str(tmp_path), "-f", "json", "--check", "LVD-003")
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout)["results"]
    assert len(results) == n and all(x["status"] == "fail" for x in results)
    g0 = next(x for x in results if x["subject"].startswith("domain g0 "))
    assert g0["message"] == ("static label shared: system_u:system_r:svirt_t:s0:c1,c2 (shared with "
                             f"{n - 1} other guest(s): g1, g10, g100, g1000, g1001 and {n - 6} more)")
    assert max(len(x["message"]) for x in results) < 200
    assert len(r.stdout) < n * 1500  # the JSON grows with the guests, not with their square
    assert took < 30


@given(st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]),
               min_size=MAX_MESSAGE + 1, max_size=3 * MAX_MESSAGE))
@settings(max_examples=10, deadline=None)
def test_a_check_message_quoting_the_input_is_bounded(value: str) -> None:
    xml = (f"<domain><name>g</name><devices><graphics type='vnc' listen={quoteattr(value)}/>"
           f"<interface type={quoteattr(value)}/></devices></domain>")
    rep = audit(CATALOGUE, [parse_domain(xml, "g.xml")], today=dt.date(2026, 12, 1))
    assert all(len(x.message) <= MAX_MESSAGE + 40 for x in rep.results)
    assert any(x.message.endswith(" more characters)") for x in rep.results)  # some check quoted it, cut


BAD_BYTES = st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"])


@given(n=st.integers(2, 6), bad=st.data(), decl=st.booleans())
@settings(max_examples=60, deadline=None)
def test_invalid_utf8_in_one_document_loses_only_that_document(n: int, bad: st.DataObject, decl: bool) -> None:
    which = bad.draw(st.integers(1, n))
    junk = bad.draw(BAD_BYTES)
    head = b"<?xml version='1.0' encoding='UTF-8'?>\n" if decl else b""
    docs = [head + (b"<domain><name>g%d" % i + (junk if i == which else b"") + b"</name></domain>\n")
            for i in range(1, n + 1)]
    domains, errors = parse_domain_file(b"".join(docs), "many.xml")
    assert [d.name for d in domains] == [f"g{i}" for i in range(1, n + 1) if i != which]
    assert [d.source for d in domains] == [f"many.xml#{i}" for i in range(1, n + 1) if i != which]
    assert [str(e) for e in errors] == [str(errors[0])] and str(errors[0]).startswith(
        f"many.xml: document {which}: malformed XML: not well-formed (invalid token)")


def test_invalid_utf8_in_a_run_is_an_error_for_that_document_not_a_traceback(tmp_path: Path) -> None:
    f = tmp_path / "phases.xml"
    f.write_bytes(b"<domain><name>install</name></domain>\n<domain><name>bad\xff\xfe</name></domain>\n"
                  b"<domain><name>boot</name><seclabel type='none'/></domain>\n")
    (tmp_path / "other.xml").write_text(GOOD)
    r, _ = _audit(str(tmp_path), "-f", "json", "--fail-on", "critical")
    assert "Traceback" not in r.stderr
    assert r.returncode == 1  # the input error (and the critical finding) fail --fail-on
    doc = json.loads(r.stdout)
    assert [(e["source"], e["message"].split(": malformed")[0]) for e in doc["input_errors"]] == [
        (str(f), f"{f}: document 2")]
    subjects = {x["subject"].split(" (")[0] for x in doc["results"]}
    assert subjects == {"domain install", "domain boot", "domain good"}
    assert any(x["check"] == "LVD-001" and x["status"] == "fail" and "boot" in x["subject"] for x in doc["results"])


def test_a_run_holds_at_most_max_elements_and_names_every_file_left_out(tmp_path: Path) -> None:
    per = MAX_ELEMENTS_PER_FILE - 10_000  # each file under its own cap; together over the run's
    fits = MAX_ELEMENTS_PER_RUN // (per + 3)
    for i in range(fits + 2):
        (tmp_path / f"f{i:02d}.xml").write_text(f"<domain><name>g{i}</name><devices>" + "<a/>" * per
                                                 + "</devices></domain>")
    r, took = _audit(str(tmp_path), "-f", "json", "--check", "LVD-001")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert len(doc["results"]) == fits
    assert [e["source"] for e in doc["input_errors"]] == [str(tmp_path / f"f{i:02d}.xml") for i in (fits, fits + 1)]
    assert all(f"would take this run past {MAX_ELEMENTS_PER_RUN}" in e["message"] for e in doc["input_errors"])
    assert took < 60
