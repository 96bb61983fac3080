"""`guestward explain --trace` outside the lab: it waits (up to --timeout) for the flow's next real
packet on the hosts of both ends, reports what the packet met after the compiled answer, and removes
its trace table. A host netns with two guest netns on a bridge, no libvirtd (the controller keeps the
stored snapshot for a host it cannot reach)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestward.reconcile.controller import Controller
from guestward.store.config import Config, HostConfig, save_config
from guestward.store.sqlite import StoredPolicy
from tests.conftest import guestward
from tests.enforce.test_enforcer import POLICY, guest

pytestmark = pytest.mark.nft
HOST, G1, G2 = (f"gwd-{os.getpid()}-{x}" for x in ("th", "t1", "t2"))


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "nft tests need root (CI runs them as root)"
    for ns in (HOST, G1, G2):
        ip("netns", "add", ns)
    try:
        ip("-n", HOST, "link", "add", "br0", "type", "bridge")
        ip("-n", HOST, "link", "set", "br0", "up")
        for i, ns in ((1, G1), (2, G2)):
            ip("-n", HOST, "link", "add", f"gwt-g{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", HOST, "link", "set", f"gwt-g{i}", "master", "br0", "up")
            ip("-n", ns, "link", "set", "eth0", "address", f"52:54:00:00:00:0{i}", "up")
            ip("-n", ns, "addr", "add", f"10.0.0.{i}/24", "dev", "eth0")
        cfg = Config(state_dir=tmp_path / "state", hosts=[HostConfig(
            name="hv1", uri=f"qemu+unix:///system?socket={tmp_path}/no-libvirtd", netns=HOST, uplinks=["uplink0"])])
        ctl = Controller(cfg)
        ctl.store.put_policies([StoredPolicy("shop", "p.yaml", 1, POLICY)])
        ctl.store.put_guests([guest(1, "web"), guest(2, "db")], ctl.store.tick())
        ctl.enforce_snapshot("hv1")
        save_config(cfg, tmp_path / "config.yaml")
        yield tmp_path / "config.yaml"
    finally:
        for ns in (HOST, G1, G2):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def explain_while_sending(config: Path, args: list[str], sender: str | None, dst: str, port: int,
                          timeout: str = "15") -> subprocess.CompletedProcess[str]:
    """Run `explain --trace`; meanwhile `sender` (a guest netns) sends a SYN every 0.3 s until it ends."""
    done = threading.Event()

    def send() -> None:
        code = (f"import socket\ns = socket.socket()\ns.settimeout(0.2)\n"
                f"try: s.connect(('{dst}', {port}))\nexcept OSError: pass")
        while not done.wait(0.3):
            subprocess.run(["ip", "netns", "exec", str(sender), "python3", "-c", code], check=False)

    if sender:
        threading.Thread(target=send, daemon=True).start()
    try:
        return guestward("explain", *args, "--trace", "--timeout", timeout, "--config", str(config), timeout=60)
    finally:
        done.set()


def trace_tables() -> str:
    out = subprocess.run(["ip", "netns", "exec", HOST, "nft", "list", "tables"], capture_output=True, text=True,
                         check=True).stdout
    return "\n".join(line for line in out.splitlines() if "gwtrace" in line)


def test_an_allowed_flow_is_traced_on_its_next_packet(config: Path) -> None:
    r = explain_while_sending(config, ["g1", "g2", "tcp/5432"], G1, "10.0.0.2", 5432)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == ["g1 -> g2 tcp/5432: allowed", "  tier: application", "  policy: shop", "  rule: web-to-db"]
    assert lines[4] == "  trace: allowed by application/shop/web-to-db (agrees with the compiled answer)"
    assert lines[5] == ("    hv1 (source and destination): passed: egress rule application/shop/web-to-db -> "
                        "goto ingress; ingress rule application/shop/web-to-db -> accept")
    assert not trace_tables()


def test_a_blocked_flow_names_the_dropping_rule(config: Path) -> None:
    r = explain_while_sending(config, ["g2", "g1", "tcp/80", "--json"], G2, "10.0.0.1", 80)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc["verdict"], doc["trace"]["verdict"], doc["trace"]["decided_by"], doc["trace"]["agrees"]) == (
        "blocked", "blocked", "default deny", True)
    assert doc["trace"]["hops"][0]["steps"][-1].endswith("default deny -> drop")


def test_no_packet_within_the_timeout_is_an_error_and_leaves_nothing_behind(config: Path) -> None:
    r = explain_while_sending(config, ["g1", "g2", "udp/53"], None, "10.0.0.2", 53, timeout="1")
    assert r.returncode == 2
    assert r.stdout.splitlines()[0] == "g1 -> g2 udp/53: blocked"
    assert "no packet of the flow was seen" in r.stderr
    assert not trace_tables()
