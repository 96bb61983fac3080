"""Guests whose data guestward cannot enforce are refused (`Guest.refusal`), with the reason:
hostile port names, malformed guestward metadata, vNICs that bypass the bridge, unreadable MACs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.hypervisor.domain_xml import MAX_VNICS, NS, guest_from_xml, parse_metadata, unallowed_bypass
from guestward.model import Labels
from guestward.model.ifname import is_plain_ifname
from tests.model.test_ifname import KERNEL_BYTES, hostile_ifnames, kernel_ifnames

UUID = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
GOOD = ("<interface type='bridge'><mac address='52:54:00:aa:00:01'/><source bridge='br0'/>"
        "<target dev='vnet1'/></interface>")
# What XML 1.0 can carry of the kernel's bytes (the kernel refuses \t \n \r anyway).
XML_BYTES = [b for b in KERNEL_BYTES if b >= 0x20]


def doc(devices: str = GOOD, meta: str = "", uuid: str = UUID) -> str:
    return (f"<domain type='kvm'><name>g1</name><uuid>{uuid}</uuid><metadata>{meta}</metadata>"
            f"<devices>{devices}</devices></domain>")


def bridged(port: str, mac: str = "52:54:00:aa:00:02") -> str:
    return (f"<interface type='bridge'><mac address={quoteattr(mac)}/><source bridge='br0'/>"
            f"<target dev={quoteattr(port)}/></interface>")


@given(kernel_ifnames(XML_BYTES))
def test_a_port_name_is_kept_exactly_when_it_is_plain_else_the_guest_is_refused(port: str) -> None:
    g = guest_from_xml(doc(GOOD + bridged(port)), "hv1", True)
    good, other = g.interfaces
    assert (good.mac, good.port) == ("52:54:00:aa:00:01", "vnet1")
    if is_plain_ifname(port):
        assert (other.port, g.refusal) == (port, None)
    else:
        assert other.port is None  # the name goes no further than the refusal
        assert g.refusal is not None and g.refusal.startswith("vNIC 52:54:00:aa:00:02: port name ")
        assert g.refusal.isascii() and g.refusal.isprintable() and len(g.refusal) < 400


@given(hostile_ifnames(XML_BYTES))
def test_every_hostile_port_name_refuses_the_guest(port: str) -> None:
    if not all(c in "\t\n\r" or ord(c) >= 0x20 for c in port):
        port = port.replace("\x01", "\x7f")  # XML cannot carry control characters; DEL it can
    g = guest_from_xml(doc(bridged(port)), "hv1", True)
    assert g.refusal is not None and "not a plain interface name" in g.refusal
    assert [n.port for n in g.interfaces] == [None]


XML_CHAR = st.characters(codec="utf-8").filter(
    lambda c: c in "\t\n\r" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD or ord(c) >= 0x10000)
LABEL_KEYS = st.one_of(st.sampled_from(["zone", "env", "example.com/team", "guestward.dev/quarantine", "bad key",
                                        "", "-x", "a" * 64, "x/" * 130 + "y"]), st.text(XML_CHAR, max_size=20))
LABEL_VALUES = st.one_of(st.sampled_from(["web", "", "prod", "not ok!", "v" * 64, "true"]),
                         st.text(XML_CHAR, max_size=20))
ADDRESSES = st.one_of(st.sampled_from(["10.0.0.1", "fd00::1", "10.0.0.300", "fe80::1%eth0", "224.0.0.1", "::",
                                       "0.0.0.0", "db.example.com", ""]), st.text(XML_CHAR, max_size=12))


@st.composite
def metadata(draw: st.DrawFn) -> str:
    labels = draw(st.lists(st.tuples(LABEL_KEYS, LABEL_VALUES), max_size=5))
    addrs = draw(st.lists(st.tuples(st.sampled_from(["52:54:00:aa:00:01", ""]), ADDRESSES), max_size=4))
    parts = [f"<gw:label key={quoteattr(k)}>{escape(v)}</gw:label>" for k, v in labels]
    parts += [f"<gw:address{'' if not m else ' mac=' + quoteattr(m)}>{escape(a)}</gw:address>" for m, a in addrs]
    return f'<gw:guest xmlns:gw="{NS}">{"".join(parts)}</gw:guest>'


@settings(max_examples=300)
@given(metadata())
def test_any_metadata_problem_refuses_the_guest_and_says_which(meta: str) -> None:
    import defusedxml.ElementTree as SafeET

    parsed = parse_metadata(SafeET.fromstring(meta))
    g = guest_from_xml(doc(meta=meta), "hv1", True)
    if not parsed.problems:
        assert g.refusal is None and g.labels == Labels(parsed.labels)
    else:
        assert g.refusal is not None and g.refusal.startswith("malformed guestward metadata: ")
        first = parsed.problems[0]
        assert g.refusal.startswith(f"malformed guestward metadata: {first}"[:200])
        assert len(g.refusal) <= 5 * (30 + 203) + 40  # bounded, however much the XML holds


BYPASS = [
    "<interface type='direct'><mac address='52:54:00:aa:00:09'/><source dev='eth0' mode='bridge'/>"
    "<target dev='macvtap0'/></interface>",
    "<interface type='hostdev' managed='yes'><mac address='52:54:00:aa:00:09'/><source><address type='pci' "
    "domain='0x0000' bus='0x02' slot='0x07' function='0x0'/></source></interface>",
    "<interface type='vhostuser'><mac address='52:54:00:aa:00:09'/><source type='unix' path='/tmp/vhost1' "
    "mode='client'/></interface>",
    "<interface type='vdpa'><mac address='52:54:00:aa:00:09'/><source dev='/dev/vhost-vdpa-0'/></interface>",
    "<interface type='user'><mac address='52:54:00:aa:00:09'/></interface>",
    "<interface type='ethernet'><mac address='52:54:00:aa:00:09'/><target dev='tap9'/></interface>",
    "<interface type='mcast'><mac address='52:54:00:aa:00:09'/><source address='230.0.0.1' port='5558'/></interface>",
    "<interface type='udp'><source address='192.0.2.1' port='5511'><local address='0.0.0.0' port='5512'/>"
    "</source></interface>",  # no MAC: still found
    "<interface type='network'><mac address='52:54:00:aa:00:09'/><source network='macvtap-net'/>"
    "<actual type='direct'><source dev='eth0' mode='vepa'/></actual></interface>",
    "<interface><mac address='52:54:00:aa:00:09'/></interface>",  # no type at all
]


@pytest.mark.parametrize("nic", BYPASS)
def test_a_vnic_that_bypasses_the_bridge_refuses_the_guest_unless_the_operator_allows_it(nic: str) -> None:
    g = guest_from_xml(doc(GOOD + nic), "hv1", True)
    assert g.refusal is not None and "bypasses the bridge" in g.refusal and "bypass_allowed" in g.refusal
    assert unallowed_bypass(doc(GOOD + nic)) and not unallowed_bypass(doc(GOOD + nic), {UUID})
    allowed = guest_from_xml(doc(GOOD + nic), "hv1", True, bypass_allowed={UUID})
    assert allowed.refusal is None
    # the allowance is by UUID from the configuration: nothing the XML says can assert it
    meta = f'<gw:guest xmlns:gw="{NS}"><gw:label key="bypass_allowed">true</gw:label></gw:guest>'
    assert guest_from_xml(doc(GOOD + nic, meta), "hv1", True, {"00000000-0000-0000-0000-000000000000"}).refusal


def test_bridged_vnics_are_not_bypass() -> None:
    for nic in (GOOD, "<interface type='network'><mac address='52:54:00:aa:00:03'/><source network='default'/>"
                      "<target dev='vnet7'/></interface>"):
        assert guest_from_xml(doc(nic), "hv1", True).refusal is None and unallowed_bypass(doc(nic)) == []


@pytest.mark.parametrize("mac", ["@x", "52:54:00:aa:00", "52:54:00:aa:00:0g", "52-54-00-aa-00-01", "*"])
def test_a_vnic_whose_mac_is_not_a_mac_refuses_the_guest(mac: str) -> None:
    g = guest_from_xml(doc(GOOD + bridged("vnet2", mac)), "hv1", True)
    assert g.refusal is not None and "is not a MAC address" in g.refusal
    assert [n.mac for n in g.interfaces] == ["52:54:00:aa:00:01"]


BIG = textwrap.dedent("""
    import resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
    from guestward.hypervisor.domain_xml import guest_from_xml
    NS = "https://guestward.dev/xmlns/1"
    labels = "".join(f'<gw:label key="bad key {i}">x</gw:label>' for i in range(30000))
    nics = "".join(f"<interface type='bridge'><mac address='52:54:00:00:{i // 256:02x}:{i % 256:02x}'/>"
                   f"<target dev='@x{i}'/></interface>" for i in range(20000))
    xml = (f"<domain><name>g</name><uuid>u</uuid><metadata><gw:guest xmlns:gw='{NS}'>{labels}</gw:guest>"
           f"</metadata><devices>{nics}</devices></domain>")
    assert len(xml) < 4 * 1024 * 1024, len(xml)
    start = time.monotonic()
    g = guest_from_xml(xml, "hv1", True)
    print(len(xml), round(time.monotonic() - start, 2), len(g.refusal), len(g.interfaces),
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_a_huge_hostile_document_is_refused_in_bounded_time_and_memory() -> None:
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", BIG], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    size, seconds, refusal_len, nics, _rss = (float(x) for x in r.stdout.split())
    assert size > 3_000_000 and nics == 0  # over MAX_VNICS: refused whole, no vNIC parsed
    assert refusal_len < 1300 and seconds < 10, r.stdout
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("count", [MAX_VNICS, MAX_VNICS + 1, 20_000])
def test_a_guest_with_more_vnics_than_guestward_binds_is_refused_whole(count: int) -> None:
    nics = "".join(f"<interface type='bridge'><mac address='52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                   f"{i & 255:02x}'/><target dev='v{i}'/></interface>" for i in range(count))
    g = guest_from_xml(doc(nics), "h1", True)
    if count <= MAX_VNICS:
        assert g.refusal is None and len(g.interfaces) == count
    else:
        assert g.refusal == f"{count} vNICs: more than the {MAX_VNICS} guestward binds for one guest"
        assert g.interfaces == ()
