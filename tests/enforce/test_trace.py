"""TraceSession (enforce/trace.py) on real nftables: its table lives exactly as long as the session,
whatever happens inside, and a packet sent after entry is traced."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from guestward.dataplane.trace import parse_traces
from guestward.enforce import NftRunner
from guestward.enforce.trace import TracedFlow, TraceSession

pytestmark = pytest.mark.nft


@pytest.fixture
def bridged() -> Iterator[tuple[str, str]]:
    """(host netns with bridge br0 at 10.9.0.1, guest netns at 10.9.0.2 behind port `p1`)."""
    assert os.geteuid() == 0, "nft tests need root (CI runs them as root)"
    host, guest = f"gwd-{os.getpid()}-eh", f"gwd-{os.getpid()}-eg"
    for ns in (host, guest):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for argv in (["-n", host, "link", "add", "br0", "type", "bridge"],
                     ["-n", host, "addr", "add", "10.9.0.1/24", "dev", "br0"], ["-n", host, "link", "set", "br0", "up"],
                     ["-n", host, "link", "add", "p1", "type", "veth", "peer", "name", "eth0", "netns", guest],
                     ["-n", host, "link", "set", "p1", "master", "br0", "up"],
                     ["-n", guest, "addr", "add", "10.9.0.2/24", "dev", "eth0"],
                     ["-n", guest, "link", "set", "eth0", "up"]):
            subprocess.run(["ip", *argv], check=True)
        yield host, guest
    finally:
        for ns in (host, guest):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def tables(ns: str) -> str:
    return NftRunner(ns).run("nft", "list", "tables").stdout


def test_a_packet_sent_in_the_session_is_traced_and_the_table_goes_with_it(bridged: tuple[str, str]) -> None:
    host, guest = bridged
    flow = TracedFlow(ip_address("10.9.0.2"), ip_address("10.9.0.1"), "icmp")
    with TraceSession(NftRunner(host), [flow]) as session:
        assert session.table in tables(host)
        subprocess.run(["ip", "netns", "exec", guest, "ping", "-c", "1", "-W", "2", "10.9.0.1"], check=True,
                       capture_output=True)
    assert "gwtrace" not in tables(host)
    (trace,) = parse_traces(session.lines())
    assert trace.packet["iif"] == "p1" and trace.packet["icmp type"] == "echo-request"
    assert trace.decided_by == "not seen by guestward's tables"  # no guestward tables in this netns


def test_the_table_is_removed_when_the_body_fails(bridged: tuple[str, str]) -> None:
    host, _ = bridged
    flow = TracedFlow(None, ip_address("10.9.0.1"), "tcp", 22)
    with pytest.raises(RuntimeError), TraceSession(NftRunner(host), [flow]):
        assert "gwtrace" in tables(host)
        raise RuntimeError("boom")
    assert "gwtrace" not in tables(host)
    assert flow.rule() == "ip daddr 10.9.0.1 tcp dport 22 tcp flags & (syn | ack) == syn meta nftrace set 1"
    with pytest.raises(ValueError):
        TracedFlow(None, ip_address("10.9.0.1"), "sctp", 1).rule()


def test_a_session_left_by_a_dead_process_is_removed_by_the_next(bridged: tuple[str, str]) -> None:
    host, _ = bridged
    dead = subprocess.Popen(["true"])
    dead.wait()
    runner = NftRunner(host)
    for name in (f"gwtrace{dead.pid}x1", f"gwtrace{os.getpid()}x999"):  # a dead one, and a live one's
        runner.run("nft", "add", "table", "bridge", name)
    with TraceSession(runner, [TracedFlow(None, ip_address("10.9.0.1"), "icmp")]):
        pass
    left = tables(host)
    assert f"gwtrace{dead.pid}x1" not in left and f"gwtrace{os.getpid()}x999" in left
