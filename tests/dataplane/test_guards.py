"""Uplink anti-spoofing and IPv6 neighbour discovery checks, with real packets through real nft.

A private host namespace holds a bridge with two guests (`a`, `b`: IPv4 and IPv6, bound), an uplink
port to an `outside` namespace, and a bound vNIC of a guest in live migration (`m`: also live on
another host). Frames are crafted with scapy and sent from `outside` (through the uplink) or from
guest `a`; a capture in guest `b` tells which arrived, byte for byte. Each variant asserts the
precise outcome: a spoofed frame never arrives, and the frame that differs only in being legitimate
does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from guestward.compile import compile_state
from guestward.dataplane.render import link_local
from guestward.enforce import Enforcer, NftRunner
from guestward.model import Guest, Host, Interface, Inventory, Labels
from guestward.policy import parse_policies

pytestmark = pytest.mark.nft
scapy_all = pytest.importorskip("scapy.all")  # a dev dependency (pyproject.toml): present in CI

TAG = f"gwg-{os.getpid()}"
HOST = Host("hv1", "test:///default", (f"gu{os.getpid()}"[:15],))
UPLINK = HOST.uplinks[0]
MAC = {"a": "52:54:00:77:00:01", "b": "52:54:00:77:00:02", "out": "52:54:00:99:00:01", "m": "52:54:00:77:00:03"}
V4 = {"a": "10.77.7.1", "b": "10.77.7.2", "m": "10.77.7.3", "remote": "10.77.7.50"}
V6 = {"a": "fd77::1", "b": "fd77::2", "m": "fd77::3", "remote": "fd77::50"}
LL = {n: str(link_local(m)) for n, m in MAC.items()}
POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: open}
spec:
  tier: application
  rules:
    - {name: any-guest, action: allow, from: {guests: {}}, to: {guests: {}}}
    - {name: outside-v4, action: allow, from: {cidr: [0.0.0.0/0]}, to: {guests: {}}}
    - {name: outside-v6, action: allow, from: {cidr: ["::/0"]}, to: {guests: {}}}
"""
CAPTURE = r"""
import sys, time
from scapy.all import AsyncSniffer
s = AsyncSniffer(iface="eth0", store=True)
s.start()
time.sleep(0.5)
print("ready", flush=True)
sys.stdin.readline()
time.sleep(0.5)
for p in s.stop():
    print(bytes(p).hex(), flush=True)
"""
SEND = r"""
import sys
from scapy.all import Ether, sendp
for h in sys.argv[1:]:
    sendp(Ether(bytes.fromhex(h)), iface="eth0", verbose=False)
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def port(name: str) -> str:
    return f"gg{os.getpid()}{name}"[:15]


@dataclass
class Bed:
    host_ns: str

    def ns(self, name: str) -> str:
        return f"{TAG}-{name}"

    def sent_and_seen(self, sender: str, frames: list[bytes]) -> set[bytes]:
        """Send `frames` from `sender`'s eth0; return those of them that guest b received."""
        cap = subprocess.Popen(["ip", "netns", "exec", self.ns("b"), sys.executable, "-c", CAPTURE],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert cap.stdout is not None and cap.stdin is not None
        assert cap.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", self.ns(sender), sys.executable, "-c", SEND, *(f.hex() for f in frames)],
                       check=True)
        cap.stdin.write("\n")
        cap.stdin.flush()
        out, _ = cap.communicate(timeout=60)
        seen = {bytes.fromhex(line) for line in out.split() if line}
        return {f for f in frames if f in seen}


def _guest_ns(ns: str, host_ns: str, name: str, bridge_port: str, mac: str, v4: str | None, v6: str | None) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", host_ns, "link", "add", bridge_port, "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", host_ns, "link", "set", bridge_port, "master", "br0", "up")
    # No router solicitations or DAD of its own: the capture must see only what the test sends.
    for key in ("accept_ra=0", "dad_transmits=0", "router_solicitations=0"):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.default.{key}")
    sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
    if v4:
        sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth0")
    if v6:
        sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    assert os.geteuid() == 0, "nft tests need root (CI runs them as root)"
    b = Bed(f"{TAG}-h")
    made = [b.host_ns]
    try:
        sh("ip", "netns", "add", b.host_ns)
        sh("ip", "-n", b.host_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", b.host_ns, "link", "set", "br0", "up")
        for name in ("a", "b"):
            made.append(b.ns(name))
            _guest_ns(b.ns(name), b.host_ns, name, port(name), MAC[name], V4[name], V6[name])
        made.append(b.ns("out"))
        _guest_ns(b.ns("out"), b.host_ns, "out", UPLINK, MAC["out"], V4["remote"], V6["remote"])
        guests = [Guest(n, f"uuid-{n}", HOST.name, Labels({"app": n}),
                        (Interface.of(MAC[n], port(n), [V4[n], V6[n]]),)) for n in ("a", "b", "m")]
        # m is in live migration: also live on hv2, so its addresses may arrive from the uplink
        guests[2] = replace(guests[2], also_on=("hv2",))
        state = compile_state(Inventory((HOST, Host("hv2", "test:///default")), tuple(guests)),
                              parse_policies([("p.yaml", POLICY)]))
        plan = state.hosts[HOST.name]
        assert not plan.vnics[port("m")].local_only and plan.vnics[port("a")].local_only
        Enforcer(NftRunner(b.host_ns)).sync(plan)
        time.sleep(0.2)
        yield b
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _udp4(src: str, dst_mac: str = MAC["b"], dst: str = V4["b"], smac: str = MAC["out"], tag: int = 0) -> bytes:
    s = scapy_all
    return bytes(s.Ether(src=smac, dst=dst_mac) / s.IP(src=src, dst=dst) / s.UDP(sport=40000 + tag, dport=9)
                 / b"guestward")


def _udp6(src: str, smac: str = MAC["out"], tag: int = 0) -> bytes:
    s = scapy_all
    return bytes(s.Ether(src=smac, dst=MAC["b"]) / s.IPv6(src=src, dst=V6["b"]) / s.UDP(sport=40000 + tag, dport=9)
                 / b"guestward")


def _arp(psrc: str, smac: str = MAC["out"]) -> bytes:
    s = scapy_all
    return bytes(s.Ether(src=smac, dst="ff:ff:ff:ff:ff:ff") / s.ARP(op=2, hwsrc=smac, psrc=psrc, pdst=V4["b"]))


def _na(target: str, src: str, smac: str, lladdr: str | None = None) -> bytes:
    s = scapy_all
    na = s.Ether(src=smac, dst="33:33:00:00:00:01") / s.IPv6(src=src, dst="ff02::1", hlim=255) / s.ICMPv6ND_NA(
        tgt=target, R=0, S=0, O=1)
    return bytes(na / s.ICMPv6NDOptDstLLAddr(lladdr=lladdr or smac))


def _ns(target: str, src: str, smac: str, lladdr: str | None = None) -> bytes:
    s = scapy_all
    ns = s.Ether(src=smac, dst=MAC["b"]) / s.IPv6(src=src, dst=V6["b"], hlim=255) / s.ICMPv6ND_NS(tgt=target)
    if src != "::":
        ns = ns / s.ICMPv6NDOptSrcLLAddr(lladdr=lladdr or smac)
    return bytes(ns)


def _rs(src: str, smac: str, lladdr: str) -> bytes:
    s = scapy_all
    return bytes(s.Ether(src=smac, dst="33:33:00:00:00:02") / s.IPv6(src=src, dst="ff02::2", hlim=255)
                 / s.ICMPv6ND_RS() / s.ICMPv6NDOptSrcLLAddr(lladdr=lladdr))


def _ra(src: str, smac: str) -> bytes:
    s = scapy_all
    return bytes(s.Ether(src=smac, dst="33:33:00:00:00:01") / s.IPv6(src=src, dst="ff02::1", hlim=255)
                 / s.ICMPv6ND_RA() / s.ICMPv6NDOptPrefixInfo(prefix="fd66::", prefixlen=64))


def _redirect(src: str, smac: str) -> bytes:
    s = scapy_all
    return bytes(s.Ether(src=smac, dst=MAC["b"]) / s.IPv6(src=src, dst=V6["b"], hlim=255)
                 / s.ICMPv6ND_Redirect(tgt=V6["a"], dst="fd66::9"))


def test_an_address_of_a_local_guest_never_arrives_from_an_uplink(bed: Bed) -> None:
    out = MAC["out"]
    spoofed = {
        "ipv4 source of a": _udp4(V4["a"]),
        "ipv4 source of a, to b's address via broadcast MAC": _udp4(V4["a"], dst_mac="ff:ff:ff:ff:ff:ff", tag=1),
        "arp sender a": _arp(V4["a"]),
        "ipv6 source of a": _udp6(V6["a"]),
        "ipv6 source: a's link-local": _udp6(LL["a"], tag=1),
        "advert for a's address": _na(V6["a"], LL["out"], out),
        "advert for a's link-local": _na(LL["a"], LL["out"], out),
        "advert for b's own address": _na(V6["b"], LL["out"], out),
    }
    legitimate = {
        "ipv4 from a remote address": _udp4(V4["remote"]),
        "ipv4 from the migrating guest m": _udp4(V4["m"], tag=2),
        "arp sender remote": _arp(V4["remote"]),
        "arp sender m (migrating)": _arp(V4["m"]),
        "ipv6 from a remote address": _udp6(V6["remote"]),
        "ipv6 from m (migrating)": _udp6(V6["m"], tag=2),
        "advert for a remote address": _na(V6["remote"], LL["out"], out),
        "advert for m's address (migrating)": _na(V6["m"], LL["out"], out),
    }
    arrived = bed.sent_and_seen("out", [*spoofed.values(), *legitimate.values()])
    assert [k for k, f in spoofed.items() if f in arrived] == [], "spoofed frames from the uplink arrived"
    assert [k for k, f in legitimate.items() if f not in arrived] == [], "legitimate frames from the uplink lost"


def test_neighbour_discovery_from_a_guest_is_only_for_its_own_addresses(bed: Bed) -> None:
    a, b = MAC["a"], MAC["b"]
    spoofed = {
        "advert for b's address": _na(V6["b"], V6["a"], a),
        "advert for a router's link-local": _na("fe80::1", LL["a"], a),
        "advert for a remote address": _na(V6["remote"], V6["a"], a),
        "advert for its own address, with b's MAC": _na(V6["a"], V6["a"], a, lladdr=b),
        "solicitation from another link-local": _ns(V6["b"], "fe80::1", a),
        "solicitation from b's address": _ns(V6["b"], V6["b"], a),
        "solicitation with b's MAC as its link-layer address": _ns(V6["b"], LL["a"], a, lladdr=b),
        "router solicitation with b's MAC": _rs(LL["a"], a, lladdr=b),
        "router advert": _ra(LL["a"], a),
        "redirect": _redirect(LL["a"], a),
    }
    legitimate = {
        "advert for its own address": _na(V6["a"], V6["a"], a),
        "advert for its own link-local": _na(LL["a"], LL["a"], a),
        "solicitation from its link-local": _ns(V6["b"], LL["a"], a),
        "solicitation from its address": _ns(V6["b"], V6["a"], a),
        "duplicate address detection": _ns(V6["a"], "::", a),
        "router solicitation": _rs(LL["a"], a, lladdr=a),
    }
    arrived = bed.sent_and_seen("a", [*spoofed.values(), *legitimate.values()])
    assert [k for k, f in spoofed.items() if f in arrived] == [], "spoofed ND from a guest arrived"
    assert [k for k, f in legitimate.items() if f not in arrived] == [], "legitimate ND from a guest lost"


def test_a_guest_still_reaches_the_other_over_ipv4_and_ipv6(bed: Bed) -> None:
    """The checks leave ordinary traffic alone: a's own packets to b arrive (the control)."""
    frames = [_udp4(V4["a"], smac=MAC["a"], tag=3), _udp6(V6["a"], smac=MAC["a"], tag=3)]
    assert bed.sent_and_seen("a", frames) == set(frames)
    # and a's packets with b's source do not
    frames = [_udp4(V4["b"], smac=MAC["a"], tag=4), _udp6(V6["b"], smac=MAC["a"], tag=4)]
    assert bed.sent_and_seen("a", frames) == set()
