"""Domain XML -> guestward's view of a guest (POLICY.md section 1), safely, on real-world documents too."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from ipaddress import ip_address
from pathlib import Path

import pytest
from defusedxml import DefusedXmlException

from guestward.hypervisor.domain_xml import MAX_XML_BYTES, NS, guest_from_xml, metadata_xml, parse_metadata
from guestward.model import Labels

REPO = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    """GUESTWARD_CORPUS (the shared corpus root, or its virt-manager-domains/ itself), else ../shared/corpus."""
    base = Path(os.environ.get("GUESTWARD_CORPUS", REPO.parent / "shared" / "corpus"))
    return base if any(base.glob("*.xml")) else base / "virt-manager-domains"


CORPUS = corpus_dir()

POLICY_MD_METADATA = """\
<metadata>
  <gw:guest xmlns:gw="https://guestward.dev/xmlns/1">
    <gw:label key="zone">web</gw:label>
    <gw:label key="env">prod</gw:label>
    <gw:address mac="52:54:00:aa:00:11">10.77.0.11</gw:address>
    <gw:address mac="52:54:00:aa:00:11">fd00:77::11</gw:address>
  </gw:guest>
</metadata>"""


def domain(metadata: str = POLICY_MD_METADATA, devices: str = "", name: str = "web1",
           uuid: str = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0") -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  {metadata}
  <memory unit='KiB'>65536</memory>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:AA:00:11'/>
      <source bridge='br0'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
    </interface>
    {devices}
  </devices>
</domain>"""


def test_labels_and_addresses_of_the_policy_md_example() -> None:
    g = guest_from_xml(domain(), "hv1", True)
    assert (g.name, g.uuid, g.host, g.active) == ("web1", "4dea22b3-1d52-d8f3-2516-782e98ab3fa0", "hv1", True)
    assert g.labels == Labels({"zone": "web", "env": "prod"})
    [nic] = g.interfaces
    assert (nic.mac, nic.port) == ("52:54:00:aa:00:11", "vnet3")  # MACs compare case-insensitively
    assert nic.addresses == (ip_address("10.77.0.11"), ip_address("fd00:77::11"))
    assert guest_from_xml(domain(), "hv2", False).active is False


def test_metadata_written_by_metadata_xml_reads_back() -> None:
    labels = {"zone": "web", "example.com/team": "a-b", "empty": ""}
    addresses = [("52:54:00:aa:00:11", "10.0.0.1"), ("52:54:00:aa:00:11", "fd00::1")]
    text = metadata_xml(labels, addresses)
    meta = parse_metadata(ET.fromstring(text))
    assert meta.labels == labels and meta.addresses == {"52:54:00:aa:00:11": ["10.0.0.1", "fd00::1"]}
    assert meta.problems == ()
    g = guest_from_xml(domain(f"<metadata>{text}</metadata>"), "h", True)
    assert g.labels == Labels(labels)


def test_metadata_values_are_escaped() -> None:
    text = metadata_xml({"zone": "<web & \"db\">"}, [])
    assert parse_metadata(ET.fromstring(text)).labels == {}  # escaped, parsed, then refused as a value
    assert "<web" not in text and "&lt;web &amp;" in text


def test_no_metadata_means_no_labels_and_no_addresses() -> None:
    g = guest_from_xml(domain(metadata=""), "h", True)
    assert g.labels == Labels() and g.interfaces[0].addresses == ()
    other_ns = ("<metadata><x:guest xmlns:x='https://example.com/1'><x:label key='zone'>web</x:label></x:guest>"
                "</metadata>")
    assert guest_from_xml(domain(other_ns), "h", True).labels == Labels()
    assert parse_metadata(None).labels == {} and parse_metadata(None).problems == ()


def test_malformed_labels_and_addresses_are_dropped_and_reported() -> None:
    meta_xml = f"""<gw:guest xmlns:gw="{NS}">
      <gw:label key="zone">web</gw:label>
      <gw:label key="bad key">x</gw:label>
      <gw:label key="zone&#10;">newline</gw:label>
      <gw:label>no key</gw:label>
      <gw:label key="env">not ok!</gw:label>
      <gw:label key="tier">{"v" * 64}</gw:label>
      <gw:address mac="52:54:00:aa:00:11">10.77.0.11</gw:address>
      <gw:address mac="52:54:00:aa:00:11">10.77.0.300</gw:address>
      <gw:address mac="52:54:00:aa:00:11">db.example.com</gw:address>
      <gw:address mac="52:54:00:aa:00:11"></gw:address>
      <gw:address mac="52:54:00:aa:00:11">fe80::1%eth0</gw:address>
      <gw:address>10.77.0.12</gw:address>
    </gw:guest>"""
    meta = parse_metadata(ET.fromstring(meta_xml))
    assert meta.labels == {"zone": "web"}
    assert meta.addresses == {"52:54:00:aa:00:11": ["10.77.0.11"]}
    assert len(meta.problems) == 10, meta.problems  # five labels, five addresses
    for needle in ("bad key", "'zone\\n'", "''", "not ok!", "v" * 64, "10.77.0.300", "db.example.com",
                   "fe80::1%eth0", "10.77.0.12"):
        assert any(needle in p for p in meta.problems), (needle, meta.problems)
    g = guest_from_xml(domain(f"<metadata>{meta_xml}</metadata>"), "h", True)
    assert g.labels == Labels({"zone": "web"}) and g.interfaces[0].addresses == (ip_address("10.77.0.11"),)
    # dropping only the bad entries would fail open for NotIn/DoesNotExist: the guest is refused
    assert g.refusal is not None and g.refusal.startswith("malformed guestward metadata: invalid label key 'bad key'")


def test_a_label_given_twice_is_reported() -> None:
    meta_xml = f'<gw:guest xmlns:gw="{NS}"><gw:label key="zone">web</gw:label><gw:label key="zone">db</gw:label>' \
               "</gw:guest>"
    meta = parse_metadata(ET.fromstring(meta_xml))
    assert len(meta.labels) == 1 and any("zone" in p and "twice" in p for p in meta.problems), meta.problems


def test_interfaces_without_mac_are_skipped_and_without_target_have_no_port() -> None:
    extra = """<interface type='network'><source network='default'/></interface>
    <interface type='network'><mac address='52:54:00:00:00:02'/><source network='default'/></interface>"""
    g = guest_from_xml(domain(devices=extra), "h", True)
    assert [(i.mac, i.port) for i in g.interfaces] == [("52:54:00:aa:00:11", "vnet3"), ("52:54:00:00:00:02", None)]


def test_uuid_defaults_to_the_name() -> None:
    text = "<domain type='kvm'><name>only-name</name><devices/></domain>"
    g = guest_from_xml(text, "h", True)
    assert (g.name, g.uuid, g.interfaces) == ("only-name", "only-name", ())


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE domain [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<domain><name>&lol9;</name></domain>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<domain><name>&xxe;</name><metadata><gw:guest xmlns:gw="https://guestward.dev/xmlns/1">
<gw:label key="zone">&xxe;</gw:label></gw:guest></metadata></domain>"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>
<domain><name>x</name></domain>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY],
                         ids=["billion-laughs", "external-entity", "parameter-entity"])
def test_entities_are_refused_never_expanded(text: str) -> None:
    with pytest.raises((DefusedXmlException, ValueError)) as info:
        guest_from_xml(text, "h", True)
    assert isinstance(info.value, ValueError)  # callers catch ValueError for every malformed document


def test_oversized_xml_is_refused_before_parsing() -> None:
    padding = "<!--" + "x" * MAX_XML_BYTES + "-->"
    with pytest.raises(ValueError, match="larger than"):
        guest_from_xml(domain(devices=padding), "h", True)
    assert guest_from_xml(domain(devices="<!--" + "x" * 1000 + "-->"), "h", True).name == "web1"


# -- the real-world corpus ---------------------------------------------------------------------------------

_DOMAIN = re.compile(r"^<domain[\s>].*?^</domain>", re.S | re.M)


def corpus_documents() -> list[tuple[str, str]]:
    """Every document of the corpus whose root is <domain> (files may hold several, one after another)."""
    docs = []
    for f in sorted(CORPUS.glob("*.xml")):
        for i, m in enumerate(_DOMAIN.finditer(f.read_text(errors="replace"))):
            docs.append((f"{f.name}#{i}", m.group(0)))
    return docs


def test_corpus_of_real_domain_xml() -> None:
    # The shared corpus lies beside the repository (../shared/corpus), in CI as here: no skip.
    assert CORPUS.is_dir(), f"corpus not found at {CORPUS} (set GUESTWARD_CORPUS to the shared corpus directory)"
    docs = corpus_documents()
    assert len(docs) >= 250, len(docs)  # 280-odd <domain> documents in 200-odd files
    nics_seen = 0
    for where, text in docs:
        root = ET.fromstring(text)  # trusted test data: the plain parser is the reference here
        assert root.tag == "domain", where
        want = [(m.get("address", "").lower(), (i.find("target").get("dev") if i.find("target") is not None
                                                 else None))
                for i in root.findall("devices/interface") for m in [i.find("mac")]
                if m is not None and m.get("address")]
        g = guest_from_xml(text, "hv1", True)
        assert [(n.mac, n.port) for n in g.interfaces] == want, where
        assert g.name == (root.findtext("name") or ""), where
        assert g.labels == Labels() and all(n.addresses == () for n in g.interfaces), where
        nics_seen += len(want)
    assert nics_seen >= 50


@pytest.mark.parametrize("text, reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("::ffff:10.77.0.1", "IPv4-mapped IPv6"),
])
def test_special_addresses_in_the_xml_are_kept_as_refused_never_bound(text: str, reason: str) -> None:
    meta = f"""<metadata><gw:guest xmlns:gw="{NS}">
      <gw:address mac="52:54:00:aa:00:11">10.77.0.11</gw:address>
      <gw:address mac="52:54:00:aa:00:11">{text}</gw:address></gw:guest></metadata>"""
    (nic,) = guest_from_xml(domain(meta), "h", True).interfaces
    assert nic.addresses == (ip_address("10.77.0.11"),)
    assert nic.refused == ((ip_address(text), reason),)


BOUNDED = r"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
from guestward.compile import compile_state
from guestward.compile.address_trust import AddressTrust, Network, vet
from guestward.hypervisor.domain_xml import MAX_XML_BYTES, NS, guest_from_xml
from guestward.model import Host, Inventory
from ipaddress import ip_network
entry = '<gw:address mac="52:54:00:aa:00:11">{}</gw:address>'
addrs = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(77 << 16, (77 << 16) + 200_000)]
body, size = [], 0
for a in addrs:
    e = entry.format(a)
    if size + len(e) > MAX_XML_BYTES - 2000:
        break
    body.append(e)
    size += len(e)
xml = (f"<domain><name>w</name><uuid>u</uuid><metadata><gw:guest xmlns:gw='{NS}'>{''.join(body)}</gw:guest>"
       "</metadata><devices><interface type='bridge'><mac address='52:54:00:aa:00:11'/><target dev='vnet0'/>"
       "</interface></devices></domain>")
start = time.monotonic()
g = vet(guest_from_xml(xml, "h", True), AddressTrust((Network("lab", (ip_network("10.77.0.0/24"),)),)))
state = compile_state(Inventory((Host("h", "x"),), (g,)), [])
print(len(body), len(g.interfaces[0].refused), len(g.interfaces[0].addresses), round(time.monotonic() - start, 2))
"""


def test_a_4_mib_xml_of_addresses_is_vetted_in_bounded_time_and_memory() -> None:
    """Hostile input: as many declared addresses as 4 MiB of XML holds, under a 768 MiB address space."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", BOUNDED], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    declared, refused, bound, seconds = r.stdout.split()
    assert int(declared) > 60_000 and int(refused) + int(bound) == int(declared)
    assert int(bound) == 256 - 2  # only the lab range's ordinary addresses: 10.77.0.1 - 10.77.0.254
    assert float(seconds) < 60
