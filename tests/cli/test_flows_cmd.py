"""`guestward stats` and `guestward flows`, run as the real command against a host namespace with real
tables (counters moved by real packets) and a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from guestward.dataplane import Settings
from guestward.dataplane.flowlog import FlowRecord
from guestward.store.sqlite import Store
from tests.conftest import GUESTWARD, guestward
from tests.enforce.topology import Topology, guestless_host, host_sends

pytestmark = pytest.mark.nft

POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  tier: application
  rules:
    - {name: no-db-admin, action: deny, from: {cidr: [10.88.0.0/24]}, to: {guests: {zone: b}}, ports: [udp/9999]}
    - {name: dns, action: allow, from: {cidr: [10.88.0.0/24]}, to: {guests: {zone: b}}, ports: [udp/53]}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Path, Store]]:
    assert os.geteuid() == 0, "these tests need root (CI runs them as root)"
    t = guestless_host(POLICY, Settings(log_group=7))
    try:
        d = tmp_path_factory.mktemp("cli")
        cfg = d / "config.yaml"
        cfg.write_text(yaml.safe_dump({"state_dir": str(d / "state"), "hosts": [
            {"name": "hv1", "uri": "test:///default", "netns": t.host_ns}]}))
        store = Store(d / "state" / "guestward.db")
        store.put_guests(list(t.guests.values()), 1)
        assert host_sends(t, "10.88.0.2", 9999, 7) == 7  # the explicit deny
        assert host_sends(t, "10.88.0.1", 80, 3) == 3  # a's default deny
        assert host_sends(t, "10.88.0.2", 53, 4) == 0  # allowed
        yield t, cfg, store
    finally:
        t.close()


def test_stats_json_has_every_rule_with_its_guests_and_real_counts(world: tuple[Topology, Path, Store]) -> None:
    _, cfg, _ = world
    r = guestward("stats", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    hv1 = json.loads(r.stdout)["hv1"]
    assert hv1["rules"] >= len(hv1["counters"]) > 20 and hv1["sets"] > 10
    rows = {(tuple(c["guests"]), c["direction"], c["rule"], c["verdict"]): c for c in hv1["counters"]}
    deny = rows[(("b",), "ingress", "application/shop/no-db-admin", "drop")]
    assert (deny["packets"], deny["logged"], deny["reason"]) == (7, 7, "deny")
    assert rows[(("b",), "ingress", "application/shop/dns", "accept")]["packets"] == 4
    assert rows[(("a",), "ingress", "default deny", "drop")]["packets"] == 3
    assert hv1["drops"]["deny"]["packets"] == 7 and hv1["drops"]["default-deny"]["packets"] == 3
    assert hv1["drops"]["deny"]["bytes"] == 7 * 29  # 20 IP + 8 UDP + 1 byte of data
    assert hv1["missing_tables"] == []


def test_stats_text_for_one_guest(world: tuple[Topology, Path, Store]) -> None:
    _, cfg, _ = world
    r = guestward("stats", "--config", str(cfg), "--guest", "b")
    assert r.returncode == 0, r.stderr
    assert "hv1:" in r.stdout and "deny 7" in r.stdout and "default-deny 3" in r.stdout
    lines = [x for x in r.stdout.splitlines() if "no-db-admin" in x and "b ingress" in x]
    assert len(lines) == 1 and " 7 " in lines[0]
    assert "spoof" not in r.stdout.split("\n", 1)[1], "only b's identity chains"
    assert guestward("stats", "--config", str(cfg), "--guest", "nobody").returncode == 2
    assert guestward("stats", "--config", str(cfg), "--host", "hv9").returncode == 2


def test_flows_filters_and_formats(world: tuple[Topology, Path, Store]) -> None:
    _, cfg, store = world
    store.put_flows([FlowRecord(1_700_000_000.0 + i, "hv1", "a" if i % 2 else "b", "egress", "blocked", "deny",
                                "eg-x", "application/shop/no-db-admin", "tcp", "10.88.0.1", 40000 + i, "10.88.0.2",
                                5432, "S", "vnet1", 2 if i == 3 else 0) for i in range(6)], keep=1000)
    r = guestward("flows", "--config", str(cfg), "--guest", "a", "--verdict", "blocked")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(" hv1 blocked a egress tcp 10.88.0.1:" in x for x in lines)
    assert "-> 10.88.0.2:5432 [S] deny application/shop/no-db-admin (eg-x)" in lines[0]
    assert "(2 lost before)" in lines[1]
    j = [json.loads(x) for x in guestward("flows", "--config", str(cfg), "--json", "--limit", "2").stdout.splitlines()]
    assert [x["sport"] for x in j] == [40004, 40005]
    assert (j[0]["tier"], j[0]["policy"], j[0]["rule_name"]) == ("application", "shop", "no-db-admin")
    assert guestward("flows", "--config", str(cfg), "--verdict", "allowed").stdout == ""
    assert guestward("flows", "--config", str(cfg), "--verdict", "maybe").returncode == 2


def test_flows_follow_streams_new_records(world: tuple[Topology, Path, Store]) -> None:
    _, cfg, store = world
    proc = subprocess.Popen([str(GUESTWARD), "flows", "--config", str(cfg), "--follow", "--json", "--guest", "c",
                             "--limit", "0"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        store.put_flows([FlowRecord(time.time(), "hv1", "c", "ingress", "blocked", "default-deny", "in-y",
                                    "default deny", "udp", "10.88.0.254", 1, "10.88.0.3", 2)], keep=1000)
        assert proc.stdout is not None
        got = json.loads(proc.stdout.readline())
        assert (got["guest"], got["reason"], got["dst"]) == ("c", "default-deny", "10.88.0.3")
    finally:
        proc.terminate()
        proc.wait(10)
    assert sys.executable
