"""The agent's metrics, read at scrape time from real tables (counters moved by real packets) and a
real store, exposed in the Prometheus text format, over HTTP too."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guestward.dataplane import Settings
from guestward.enforce import NftRunner
from guestward.enforce.counters import read_tables
from guestward.reconcile.metrics import GuestwardCollector, parse_listen, serve
from guestward.store.sqlite import Store
from tests.enforce.topology import Topology, guestless_host, host_sends

pytestmark = pytest.mark.nft

POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  tier: application
  rules:
    - {name: no-9999, action: deny, from: {cidr: [10.88.0.0/24]}, to: {guests: {zone: b}}, ports: [udp/9999]}
"""


@pytest.fixture(scope="module")
def host() -> Iterator[Topology]:
    assert os.geteuid() == 0, "these tests need root (CI runs them as root)"
    t = guestless_host(POLICY, Settings(log_group=7))
    try:
        assert host_sends(t, "10.88.0.2", 9999, 5) == 5
        assert host_sends(t, "10.88.0.1", 80, 2) == 2
        yield t
    finally:
        t.close()


def samples(collector: GuestwardCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_from_the_tables_and_the_store(host: Topology, tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    store.put_guests(list(host.guests.values()), 1)
    store.record("drift", "hv1", by="pid 1 (nft)", commands=3)
    store.record("drift", "hv1", by="pid 2 (nft)", commands=1)
    store.record("conntrack", "hv1", moved=5)
    store.record("conntrack", "hv1", moved=7)
    store.record("reconcile", "agent", ms=12.0)
    store.record("reconcile", "agent", ms=300.0)
    store.record("hook", "web1", ms=40.0)
    runners = {"hv1": NftRunner(host.host_ns), "hv9": NftRunner("gwf-no-such-netns")}
    got = samples(GuestwardCollector(runners, store.path))
    tables = read_tables(runners["hv1"])
    h1 = (("host", "hv1"),)
    assert got[("guestward_rules", h1)] == tables.rules > 0
    assert got[("guestward_sets", h1)] == tables.sets > 0
    assert got[("guestward_guests", h1)] == 3
    assert got[("guestward_host_up", h1)] == 1 and got[("guestward_host_up", (("host", "hv9"),))] == 0
    assert got[("guestward_dropped_packets_total", (("host", "hv1"), ("reason", "deny")))] == 5
    assert got[("guestward_dropped_packets_total", (("host", "hv1"), ("reason", "default-deny")))] == 2
    assert got[("guestward_logged_drops_total", (("host", "hv1"), ("reason", "deny")))] == 5
    assert got[("guestward_drift_repairs_total", h1)] == 2
    assert got[("guestward_conntrack_entries_moved_total", h1)] == 12
    agent = (("source", "agent"),)
    assert got[("guestward_enforcement_latency_seconds_count", agent)] == 2
    assert got[("guestward_enforcement_latency_seconds_sum", agent)] == pytest.approx(0.312)
    assert got[("guestward_enforcement_latency_seconds_bucket", (("le", "0.025"), ("source", "agent")))] == 1
    assert got[("guestward_enforcement_latency_seconds_bucket", (("le", "0.5"), ("source", "agent")))] == 2
    assert got[("guestward_enforcement_latency_seconds_count", (("source", "hook"),))] == 1
    # a later scrape sees later state: nothing was cached
    host_sends(host, "10.88.0.2", 9999, 1)
    store.record("drift", "hv1", by="x")
    again = samples(GuestwardCollector(runners, store.path))
    assert again[("guestward_dropped_packets_total", (("host", "hv1"), ("reason", "deny")))] == 6
    assert again[("guestward_drift_repairs_total", h1)] == 3


def test_served_over_http(host: Topology, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = Store(tmp_path / "g.db")
    serve(GuestwardCollector({"hv1": NftRunner(host.host_ns)}, store.path), ("127.0.0.1", port))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'guestward_rules{host="hv1"}' in body
    assert 'guestward_dropped_packets_total{host="hv1",reason="deny"}' in body


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen("OFF") is None
    for bad in ("9464", "host:", "h:0", "h:70000", "h:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)
