"""The drop log end to end, on real nftables and real packets: a host namespace with a bridge and guest
namespaces on veths, a rendered plan applied by the enforcer, the NFLOG reader run in the host's
namespace by the agent's FlowLog, records in a real store.

What must hold (issue 6, "every drop explains itself"):
- a flood to a forbidden port is in the drop log with the rule that decided it and the reason;
- what is logged stays under the configured rate per guest, while every packet is still dropped and
  counted, and nothing the kernel logged is lost on the way (log-rule counter == records + lost);
- another guest's allowed traffic keeps getting answers during the flood;
- bridge drops (spoofed source, unknown vNIC) are logged per vNIC port, with their reason.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestward.dataplane import Settings
from guestward.dataplane.counters import by_rule
from guestward.enforce import Enforcer, NftRunner
from guestward.enforce.counters import read_counters
from guestward.reconcile.flowlog import FlowLog
from guestward.store.sqlite import Store
from tests.enforce.topology import UDP_ECHO, UDP_FLOOD, UDP_PROBE, Topology

pytestmark = pytest.mark.nft

RATE, BURST, GROUP = 20, 20, 7
POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  tier: application
  rules:
    - {name: no-flood-port, action: deny, from: {guests: {zone: a}}, to: {guests: {zone: b}}, ports: [udp/9999]}
    - {name: echo, action: allow, from: {guests: {}}, to: {guests: {zone: b}}, ports: [udp/7000]}
"""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    assert os.geteuid() == 0, "these tests need root (CI runs them as root)"
    t = Topology()
    try:
        t.up()
        t.add_guest("a", 1, {"zone": "a"})
        t.add_guest("b", 2, {"zone": "b"})
        t.add_guest("c", 3, {"zone": "c"})
        t.add_guest("d", 4, {"zone": "d"}, bound=False)  # a vNIC guestward does not know
        # First a much higher rate, with traffic that creates a's limiter element; then the rate under
        # test: it must be in force at once (stale per-guest limiter state would let the old rate on).
        Enforcer(NftRunner(t.host_ns), Settings(log_group=GROUP, log_rate=5000, log_burst=5000)).sync(t.plan(POLICY))
        finish(t.python("a", UDP_FLOOD, "10.88.0.2", "9999", "0.3"))
        Enforcer(NftRunner(t.host_ns), Settings(log_group=GROUP, log_rate=RATE, log_burst=BURST)).sync(
            t.plan(POLICY))
        yield t
    finally:
        t.close()


@pytest.fixture
def flowlog(topo: Topology, tmp_path: Path) -> Iterator[tuple[FlowLog, Store]]:
    store = Store(tmp_path / "guestward.db")
    store.put_guests(list(topo.guests.values()), 1)
    ready = threading.Event()
    fl = FlowLog({"hv1": NftRunner(topo.host_ns)}, store.path, GROUP, flush=0.1,
                 on_ready=lambda _: ready.set())
    fl.start()
    try:
        assert ready.wait(10), "the NFLOG reader did not bind"
        yield fl, store
    finally:
        fl.stop()
        store.close()


def finish(proc: object) -> dict[str, float]:
    out, err = proc.communicate(timeout=60)  # type: ignore[attr-defined]
    assert proc.returncode == 0, err  # type: ignore[attr-defined]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def counters_of(topo: Topology, label: str) -> tuple[int, int]:
    """(dropped, logged) packets of the rule with this label, over every nft rule it became."""
    rows = [r for r in by_rule(read_counters(NftRunner(topo.host_ns))) if r.label == label and r.verdict == "drop"]
    return sum(r.packets for r in rows), sum(r.logged for r in rows)


def test_a_flood_to_a_denied_port_is_logged_with_its_rule_under_the_rate_and_spares_other_guests(
        topo: Topology, flowlog: tuple[FlowLog, Store]) -> None:
    fl, store = flowlog
    dropped_before, logged_before = counters_of(topo, "application/shop/no-flood-port")
    echo = topo.python("b", UDP_ECHO, "7000")
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        probe = topo.python("c", UDP_PROBE, "10.88.0.2", "7000", "4")
        flood = topo.python("a", UDP_FLOOD, "10.88.0.2", "9999", "3")
        flooded, probed = finish(flood), finish(probe)
    finally:
        echo.kill()
        echo.wait()
    fl.stop()  # drains: every line the reader got is stored

    # The other guest's allowed traffic kept getting answers all through the flood.
    assert probed["sent"] >= 50
    assert probed["answered"] >= 0.95 * probed["sent"], probed

    dropped, logged = counters_of(topo, "application/shop/no-flood-port")
    dropped -= dropped_before
    logged -= logged_before
    assert dropped >= 0.9 * flooded["sent"] > 10_000, (dropped, flooded)  # every packet dropped and counted

    records = [r for _, r in store.flows(guest="a", limit=1_000_000)]
    assert records, "the flood is in the drop log"
    for r in records:
        assert (r.reason, r.rule, r.direction, r.verdict) == ("deny", "application/shop/no-flood-port", "egress",
                                                              "blocked")
        assert (r.proto, r.src, r.dst, r.dport, r.port) == ("udp", "10.88.0.1", "10.88.0.2", 9999, topo.port("a"))
        assert r.tier_policy_rule == ("application", "shop", "no-flood-port")
    # Under the limit: the burst, then RATE per second (one second of slack for the clocks).
    assert BURST <= len(records) <= BURST + RATE * (flooded["seconds"] + 1), (len(records), flooded)
    # Nothing the kernel logged went missing between it and the store.
    assert len(records) + sum(r.lost for r in records) == logged
    assert store.flows(guest="c", limit=10) == [], "allowed traffic is not in the drop log"


def test_bridge_drops_are_logged_per_port_with_their_reason(topo: Topology, flowlog: tuple[FlowLog, Store]) -> None:
    fl, store = flowlog
    # a sends from an address it was not given; d is on a port guestward never bound.
    for cmd in (["ip", "-n", topo.ns("a"), "addr", "add", "10.88.0.99/32", "dev", "eth0"],):
        assert os.system(" ".join(cmd)) == 0
    try:
        spoof = topo.python("a", UDP_FLOOD, "10.88.0.2", "7000", "1.5", "10.88.0.99")
        unknown = topo.python("d", UDP_FLOOD, "10.88.0.2", "7000", "1.5")
        spoofed, _ = finish(spoof), finish(unknown)
    finally:
        os.system(f"ip -n {topo.ns('a')} addr del 10.88.0.99/32 dev eth0")
    fl.stop()
    assert spoofed["sent"] > 1000

    by_reason: dict[str, list[object]] = {}
    for _, r in store.flows(limit=1_000_000):
        by_reason.setdefault(r.reason, []).append(r)
    spoofs = [r for r in by_reason.get("spoof", []) if r.src == "10.88.0.99"]  # type: ignore[attr-defined]
    assert spoofs, by_reason.keys()
    assert {(r.guest, r.port, r.chain, r.direction, r.mac) for r in spoofs} == {  # type: ignore[attr-defined]
        ("a", topo.port("a"), "src-guard", "egress", "52:54:00:88:00:01")}
    assert len(spoofs) <= BURST + RATE * 3
    unknowns = [r for r in by_reason.get("unknown-port", []) if r.port == topo.port("d")]  # type: ignore[attr-defined]
    assert unknowns and all(r.guest is None and r.chain == "prerouting" for r in unknowns)  # type: ignore[attr-defined]
    assert len(unknowns) <= BURST + RATE * 3
