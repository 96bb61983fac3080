"""A host network namespace with a bridge and guest namespaces on veths: real packets through real nft.

Names are private to this test process (`gwf-<pid>-...`; ports `gf<pid><x>`), and `Topology.close`
deletes every namespace it made (the veths and the bridge go with them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

from guestward.compile import HostPlan, compile_state
from guestward.model import Guest, Host, Interface, Inventory, Labels
from guestward.policy import parse_policies

HOST = Host("hv1", "test:///default", ())


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class Topology:
    tag: str = field(default_factory=lambda: f"gwf-{os.getpid()}")
    guests: dict[str, Guest] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)

    @property
    def host_ns(self) -> str:
        return f"{self.tag}-h"

    def ns(self, guest: str) -> str:
        return f"{self.tag}-{guest}"

    def port(self, guest: str) -> str:
        return f"gf{os.getpid()}{guest}"[:15]

    def up(self) -> None:
        sh("ip", "netns", "add", self.host_ns)
        self.made.append(self.host_ns)
        h = self.host_ns
        sh("ip", "-n", h, "link", "set", "lo", "up")
        sh("ip", "-n", h, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", h, "link", "set", "br0", "up")

    def add_guest(self, name: str, index: int, labels: dict[str, str], bound: bool = True) -> Guest:
        """A guest namespace with eth0 (MAC 52:54:00:88:00:<index>, 10.88.0.<index>/24) on a bridge port."""
        ns, port, mac, addr = self.ns(name), self.port(name), f"52:54:00:88:00:{index:02x}", f"10.88.0.{index}"
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.host_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.host_ns, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        g = Guest(name, f"uuid-{name}", HOST.name, Labels(labels), (Interface.of(mac, port, [addr]),))
        if bound:
            self.guests[name] = g
        return g

    def plan(self, policy_yaml: str) -> HostPlan:
        state = compile_state(Inventory((HOST,), tuple(self.guests.values())),
                              parse_policies([("p.yaml", policy_yaml)]))
        return state.hosts[HOST.name]

    def python(self, guest: str, code: str, *args: str) -> subprocess.Popen[str]:
        """`python -c code args` inside the guest's namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(guest), sys.executable, "-c",
                                 textwrap.dedent(code), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def close(self) -> None:
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        self.made.clear()


# Programs run inside guests. Each prints one line of JSON when it ends.
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048); s.sendto(data, peer)
"""

UDP_FLOOD = """
import json, socket, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 4:
    s.bind((sys.argv[4], 0))
payload, n, errors = b"x" * 18, 0, 0
start = time.monotonic(); end = start + seconds
while True:
    for _ in range(256):
        try:
            s.sendto(payload, (dst, port)); n += 1
        except OSError:
            errors += 1
    if time.monotonic() >= end:
        break
print(json.dumps({"sent": n, "errors": errors, "seconds": time.monotonic() - start}), flush=True)
"""

UDP_PROBE = """
import json, socket, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)
sent = answered = 0; worst = 0.0
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.monotonic(); sent += 1
    s.sendto(b"ping %d" % sent, (dst, port))
    try:
        while s.recv(2048) != b"ping %d" % sent:
            pass
        answered += 1; worst = max(worst, time.monotonic() - t)
    except socket.timeout:
        pass
    time.sleep(0.02)
print(json.dumps({"sent": sent, "answered": answered, "worst": worst}), flush=True)
"""


HOST_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
refused = 0
for _ in range(int(sys.argv[3])):
    try:
        s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    except OSError:
        refused += 1
print(refused)
"""


def host_sends(t: Topology, dst: str, port: int, n: int) -> int:
    """Send n UDP datagrams from the host namespace itself (its output hook: the receiver's ingress
    chain decides); returns how many the local policy refused."""
    proc = subprocess.run(["ip", "netns", "exec", t.host_ns, sys.executable, "-c", HOST_SEND, dst, str(port), str(n)],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def guestless_host(policy_yaml: str, settings: object) -> Topology:
    """A host namespace whose bridge has an address (10.88.0.254/24), with the plan of three guests
    a (zone a), b (zone b), c (zone c) applied but no guest namespaces: enough for counters that
    the host's own packets move."""
    from guestward.enforce import Enforcer, NftRunner

    t = Topology()
    t.up()
    sh("ip", "-n", t.host_ns, "addr", "add", "10.88.0.254/24", "dev", "br0")
    for i, zone in enumerate(("a", "b", "c"), start=1):
        mac, addr = f"52:54:00:88:00:{i:02x}", f"10.88.0.{i}"
        t.guests[zone] = Guest(zone, f"uuid-{zone}", HOST.name, Labels({"zone": zone}),
                               (Interface.of(mac, t.port(zone), [addr]),))
        sh("ip", "-n", t.host_ns, "neigh", "add", addr, "lladdr", mac, "dev", "br0")
    Enforcer(NftRunner(t.host_ns), settings).sync(t.plan(policy_yaml))  # type: ignore[arg-type]
    return t
