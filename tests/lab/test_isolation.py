"""Guests cannot hurt each other: anti-spoofing on every vNIC, and fail closed for unknown vNICs.

A guest that changes its own address or MAC from inside can no longer send; a guest whose vNIC
guestward does not know gets no traffic at all, until guestward learns it. Each test first shows the
flow passing, so that "blocked" means guestward blocked it, not that the flow never worked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from guestward.hypervisor import domains
from guestward.lab import console
from guestward.lab.domain import command_socket, domain_xml
from guestward.lab.lab import Lab
from guestward.lab.scenario import GuestSpec
from tests.conftest import guestward

pytestmark = pytest.mark.lab

LB1, WEB1, DB1, MON1 = "10.77.0.10", "10.77.0.11", "10.77.0.13", "10.77.0.14"


def pings(lab: Lab, guest: str, address: str) -> bool:
    return lab.exec(guest, [f"ping -c 1 -W 2 {address} >/dev/null 2>&1"]).status == 0


def restore(lab: Lab, guest: str, command: str) -> None:
    """Undo a change inside a guest; a guest starved by a busy host gets time, not a lost lab."""
    for _ in range(3):
        try:
            if lab.exec(guest, [command], timeout=120).status == 0:
                return
        except RuntimeError:
            continue
    raise AssertionError(f"{guest}: could not restore with {command!r}")


def pings_eventually(lab: Lab, guest: str, address: str, tries: int = 3) -> bool:
    """A flow that should pass: a TCG guest under load may miss one 2 s deadline."""
    return any(pings(lab, guest, address) for _ in range(tries))


def test_guest_that_changes_its_address_cannot_send(lab: Lab) -> None:
    assert pings_eventually(lab, "mon1", LB1)  # monitoring-everywhere: icmp to anything
    change = f"ip addr add 10.77.0.99/24 dev eth0 && ip addr del {MON1}/24 dev eth0"
    assert lab.exec("mon1", [change]).status == 0
    try:
        assert not pings(lab, "mon1", LB1)
        assert not pings(lab, "mon1", WEB1)
    finally:
        restore(lab, "mon1", f"ip addr add {MON1}/24 dev eth0; ip addr del 10.77.0.99/24 dev eth0; true")
    assert pings_eventually(lab, "mon1", LB1)


def test_guest_that_takes_another_guests_address_gets_nothing_of_its_rights(lab: Lab) -> None:
    # web1 may reach db1 on tcp/5432; mon1 may not. mon1 claiming web1's address gains nothing.
    probe = f"gw-net probe tcp {DB1} 5432 2000"
    assert lab.exec("web1", [probe]).output.strip() == "allowed"
    assert lab.exec("mon1", [probe]).output.strip() == "blocked"
    change = f"ip addr add {WEB1}/24 dev eth0 && ip addr del {MON1}/24 dev eth0"
    assert lab.exec("mon1", [change]).status == 0
    try:
        assert lab.exec("mon1", [probe]).output.strip() == "blocked"
    finally:
        restore(lab, "mon1", f"ip addr add {MON1}/24 dev eth0; ip addr del {WEB1}/24 dev eth0; true")
    assert pings_eventually(lab, "mon1", LB1)


def test_guest_that_changes_its_mac_cannot_send(lab: Lab) -> None:
    mac = lab.exec("mon1", ["cat /sys/class/net/eth0/address"]).output.strip()
    assert pings_eventually(lab, "mon1", LB1)
    assert lab.exec("mon1", ["ip link set eth0 address 52:54:00:de:ad:01"]).status == 0
    try:
        assert not pings(lab, "mon1", LB1)
    finally:
        restore(lab, "mon1", f"ip link set eth0 address {mac}")
    assert pings_eventually(lab, "mon1", LB1)


@pytest.fixture
def rogue(lab: Lab) -> Iterator[GuestSpec]:
    """A guest started on hv1 behind guestward's back: defined and started straight through libvirt."""
    spec = GuestSpec(name="rogue", host="hv1", labels={"env": "prod"}, address=IPv4Address("10.77.0.40"),
                     listen=["tcp/80"])
    uri = lab.uri("hv1")
    domains.define(uri, domain_xml(lab.dir, lab.scenario(), spec))
    domains.start(uri, "rogue")
    try:
        yield spec
    finally:
        domains.destroy(uri, "rogue", undefine=True)
        assert guestward("sync").returncode == 0


@pytest.fixture
def unknown_port(lab: Lab) -> Iterator[str]:
    """A port on hv1's bridge that no libvirt guest owns: a veth to a namespace at 10.77.0.41."""
    ns, host_ns = "gwl-stranger", "gwl-hv1"
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", host_ns, "link", "add", "gwt-stranger", "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", host_ns, "link", "set", "gwt-stranger", "master", "gwbr0", "up")
        run("ip", "-n", ns, "addr", "add", "10.77.0.41/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "-n", host_ns, "link", "del", "gwt-stranger"], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_a_port_guestward_does_not_know_gets_no_traffic(lab: Lab, unknown_port: str) -> None:
    stranger_pings = subprocess.run(["ip", "netns", "exec", unknown_port, "ping", "-c", "2", "-W", "1", WEB1],
                                    capture_output=True, check=False)
    assert stranger_pings.returncode != 0
    assert not pings(lab, "mon1", "10.77.0.41")  # mon1 may ping anything the policy knows
    assert guestward("sync").returncode == 0     # still nobody guestward knows: still nothing
    assert not pings(lab, "mon1", "10.77.0.41")


def test_a_guest_started_behind_guestwards_back_gets_its_policy_from_the_first_packet(
        lab: Lab, rogue: GuestSpec) -> None:
    # No sync: the libvirt hook bound its vNIC from the labels in its domain XML before it ran.
    sock = command_socket(lab.dir, "hv1", "rogue")
    console.wait_ready(sock, timeout=240)

    def rogue_pings(address: str) -> bool:
        return console.run(sock, f"ping -c 1 -W 2 {address} >/dev/null 2>&1").status == 0

    assert any(rogue_pings(WEB1) for _ in range(3))   # baseline ping-within-prod
    assert pings_eventually(lab, "mon1", "10.77.0.40")
    assert lab.exec("web1", ["gw-net probe tcp 10.77.0.40 80 2000"]).output.strip() == "blocked"
    assert not rogue_pings("10.77.0.250")             # env=prod alone: nothing to the outside


def host_probe(lab: Lab, host: str, address: str, port: str) -> bool:
    """A probe from the hypervisor itself (its own network namespace, its address on the bridge)."""
    proto, number = port.split("/")
    argv = ["ip", "netns", "exec", f"gwl-{host}", str(lab.dir / "bin" / "gw-net"), "probe", proto, address,
            number, "2000"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    assert out in ("allowed", "blocked"), out
    return out == "allowed"


@pytest.mark.parametrize(("host", "guest", "address", "port"), [
    ("hv1", "web1", WEB1, "tcp/80"),          # local guest, no rule for the host: blocked
    ("hv2", "db1", DB1, "tcp/5432"),          # local guest, blocked
    ("hv2", "dns1", "10.77.0.15", "udp/53"),  # local guest, quarantine-tier remediate: from anything
    ("hv1", "dns1", "10.77.0.15", "udp/53"),  # a guest on the other host, through the uplinks
])
def test_the_hypervisor_itself_gets_the_guests_ingress_policy(
        lab: Lab, host: str, guest: str, address: str, port: str) -> None:
    host_address = str(lab.scenario().host_address(host))
    r = guestward("explain", host_address, guest, port, "--json")
    assert r.returncode in (0, 1), r.stderr
    expected = r.returncode == 0
    measured = host_probe(lab, host, address, port)
    if expected and not measured:
        measured = host_probe(lab, host, address, port)  # a busy TCG guest may miss one deadline
    assert measured == expected, f"{host} -> {guest} {port}: explain says {'allowed' if expected else 'blocked'}"
