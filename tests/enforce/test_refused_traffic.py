"""Real packets: a guest with a hostile port name on the bridge gets no traffic at all, and the
guests beside it get exactly what the policy allows (finding 3 of issue 11).

The hostile guest is read from domain XML like any other (refused there), carries the same labels
as an allowed sender, and its veth on the bridge has the very name its XML gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from xml.sax.saxutils import quoteattr

import pytest

from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor.domain_xml import guest_from_xml, metadata_xml
from tests.enforce.topology import HOST, UDP_ECHO, UDP_PROBE, Topology, sh

pytestmark = pytest.mark.nft

POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: p}
spec:
  tier: application
  rules:
    - {name: lb-to-web, action: allow, from: {guests: {zone: lb}}, to: {guests: {zone: web}}, ports: [udp/7]}
"""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.up()
        t.add_guest("web", 1, {"zone": "web"})
        t.add_guest("lb", 2, {"zone": "lb"})
        yield t
    finally:
        t.close()


def add_hostile(t: Topology, port: str, index: int) -> str | None:
    """A guest namespace whose bridge port is named `port`, declared in domain XML as zone lb."""
    ns, mac, addr = t.ns(f"x{index}"), f"52:54:00:88:00:{index:02x}", f"10.88.0.{index}"
    sh("ip", "netns", "add", ns)
    t.made.append(ns)
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", t.host_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", t.host_ns, "link", "set", port, "master", "br0", "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
    sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
    xml = (f"<domain><name>x{index}</name><uuid>uuid-x{index}</uuid>"
           f"<metadata>{metadata_xml({'zone': 'lb'}, [(mac, addr)])}</metadata><devices>"
           f"<interface type='bridge'><mac address='{mac}'/><target dev={quoteattr(port)}/>"
           "</interface></devices></domain>")
    g = guest_from_xml(xml, HOST.name, True)
    t.guests[f"x{index}"] = g
    return g.refusal


def answered(t: Topology, src: str, dst: str) -> tuple[int, int]:
    proc = t.python(src, UDP_PROBE, dst, "7", "1.5")
    out, _ = proc.communicate(timeout=30)
    r = json.loads(out)
    return r["sent"], r["answered"]


@pytest.mark.parametrize("index,port", [(10, "@x"), (11, "a*"), (12, "*"), (13, "$x"), (14, "g{1}"), (15, "-x")])
def test_the_refused_guest_gets_nothing_and_the_others_exactly_the_policy(topo: Topology, index: int,
                                                                           port: str) -> None:
    refusal = add_hostile(topo, port, index)
    assert refusal is not None and refusal.startswith(f"vNIC 52:54:00:88:00:{index:02x}: port name ")
    enforcer = Enforcer(NftRunner(topo.host_ns))
    enforcer.sync(topo.plan(POLICY))  # one transaction, applied whole despite the name on the bridge
    objects, _ = enforcer.read()
    assert port not in objects.bound_ports() and {topo.port("web"), topo.port("lb")} <= objects.bound_ports()
    echo = topo.python("web", UDP_ECHO, "7")
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        sent, got = answered(topo, "lb", "10.88.0.1")
        assert sent > 5 and got == sent  # allowed, and still enforced for the others
        sent, got = answered(topo, f"x{index}", "10.88.0.1")
        assert sent >= 2 and got == 0  # same labels as lb, but refused: its port is unknown, dropped
        sent, got = answered(topo, "web", "10.88.0.2")
        assert sent >= 2 and got == 0  # and what the policy does not allow stays blocked
    finally:
        echo.kill()
        echo.wait()


def test_control_the_same_guest_with_a_plain_port_name_gets_what_lb_gets(topo: Topology) -> None:
    assert add_hostile(topo, "plain16", 16) is None
    Enforcer(NftRunner(topo.host_ns)).sync(topo.plan(POLICY))
    echo = topo.python("web", UDP_ECHO, "7")
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        sent, got = answered(topo, "x16", "10.88.0.1")
        assert sent > 5 and got == sent  # so the probe above would have seen traffic, had there been any
    finally:
        echo.kill()
        echo.wait()
