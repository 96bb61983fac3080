"""Inventory through libvirt's Python binding, on libvirt's in-process test driver (no daemon).

Labels and addresses come from each domain's `<metadata>` (POLICY.md section 1), set the way any
tool would set them: in the defined XML, or later with `setMetadata`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from ipaddress import ip_address

import libvirt
import pytest

from guestward.hypervisor.domain_xml import NS, metadata_xml
from guestward.hypervisor.inventory import read_guests
from guestward.model import Host

HOST = Host("hv1", "test:///default")


def domain(name: str, mac: str, tap: str, meta: str = "") -> str:
    return f"""<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory>65536</memory>
  <metadata>{meta}</metadata>
  <os><type>hvm</type></os>
  <devices><interface type='bridge'><source bridge='br0'/><mac address='{mac}'/><target dev='{tap}'/></interface>
  </devices></domain>"""


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    c = libvirt.open("test:///default")
    names = []
    try:
        yield c
    finally:
        for d in c.listAllDomains():
            if d.name().startswith("gwt-"):
                names.append(d.name())
                if d.isActive():
                    d.destroy()
                d.undefine()
        c.close()


def test_labels_and_addresses_come_from_metadata(conn: libvirt.virConnect) -> None:
    meta = metadata_xml({"zone": "web", "env": "prod"},
                        [("52:54:00:aa:00:11", "10.77.0.11"), ("52:54:00:aa:00:11", "fd00:77::11")])
    conn.defineXML(domain("gwt-web1", "52:54:00:AA:00:11", "gwt-tap1", meta)).create()
    conn.defineXML(domain("gwt-bare", "52:54:00:aa:00:12", "gwt-tap2"))
    guests = {g.name: g for g in read_guests(HOST, conn) if g.name.startswith("gwt-")}
    web1, bare = guests["gwt-web1"], guests["gwt-bare"]
    assert dict(web1.labels) == {"zone": "web", "env": "prod"}
    assert web1.active and web1.host == "hv1"
    (nic,) = web1.interfaces
    assert (nic.mac, nic.port) == ("52:54:00:aa:00:11", "gwt-tap1")
    assert nic.addresses == (ip_address("10.77.0.11"), ip_address("fd00:77::11"))
    assert not bare.active and dict(bare.labels) == {} and bare.interfaces[0].addresses == ()


def test_set_metadata_changes_what_guestward_reads(conn: libvirt.virConnect) -> None:
    dom = conn.defineXML(domain("gwt-db1", "52:54:00:aa:00:13", "gwt-tap3"))
    dom.create()
    # setMetadata takes the element without its namespace declaration; libvirt adds it with the key.
    body = metadata_xml({"zone": "db"}, [("52:54:00:aa:00:13", "10.77.0.13")], for_set_metadata=True)
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, body, "gw", NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    (g,) = [g for g in read_guests(HOST, conn) if g.name == "gwt-db1"]
    assert dict(g.labels) == {"zone": "db"}
    assert g.addresses == (ip_address("10.77.0.13"),)


def test_an_address_for_another_mac_binds_nothing(conn: libvirt.virConnect) -> None:
    meta = metadata_xml({"zone": "web"}, [("52:54:00:ff:ff:ff", "10.77.0.66")])
    conn.defineXML(domain("gwt-odd", "52:54:00:aa:00:14", "gwt-tap4", meta))
    (g,) = [g for g in read_guests(HOST, conn) if g.name == "gwt-odd"]
    assert g.interfaces[0].addresses == ()


def test_set_label_rewrites_labels_and_keeps_addresses(conn: libvirt.virConnect) -> None:
    from guestward.hypervisor import domains

    meta = metadata_xml({"zone": "web"}, [("52:54:00:aa:00:15", "10.77.0.15")])
    conn.defineXML(domain("gwt-lbl", "52:54:00:aa:00:15", "gwt-tap5", meta)).create()
    # test:///default is one driver per process: the function's own connection sees our domain.
    assert domains.set_label("test:///default", "gwt-lbl", "guestward.dev/quarantine", "true")

    def read() -> object:
        (g,) = [g for g in read_guests(HOST, conn) if g.name == "gwt-lbl"]
        return g

    g = read()
    assert dict(g.labels) == {"zone": "web", "guestward.dev/quarantine": "true"} and g.labels.quarantined
    assert g.addresses == (ip_address("10.77.0.15"),)
    persistent = conn.lookupByName("gwt-lbl").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "guestward.dev/quarantine" in persistent
    assert domains.set_label("test:///default", "gwt-lbl", "guestward.dev/quarantine", None)
    assert dict(read().labels) == {"zone": "web"}
    assert domains.set_label("test:///default", "gwt-missing", "zone", "db") is False
