"""Counters read from the kernel by the netlink dump agree with `nft -j list table`, rule for rule,
after real packets moved them; a missing table or namespace is reported, never read as "all quiet"."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guestward.dataplane import Settings
from guestward.enforce import EnforceError, Enforcer, NftRunner
from guestward.enforce.counters import read_tables, read_tables_json
from tests.enforce.test_enforcer import guest, plan_of

pytestmark = pytest.mark.nft


def test_netlink_dump_equals_the_json_listing(netns: str) -> None:
    runner = NftRunner(netns)
    assert read_tables(runner).missing == ["bridge", "inet"]
    Enforcer(runner, Settings(log_group=7)).sync(plan_of([guest(1, "web"), guest(2, "db")]))
    assert runner.run("ip", "link", "set", "lo", "up").returncode == 0
    assert runner.run("ip", "addr", "add", "10.0.0.9/24", "dev", "lo").returncode == 0
    send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(5):\n  try: s.sendto(b'x', ('10.0.0.2', 9))\n  except OSError: pass")
    subprocess.run(runner.command(sys.executable, "-c", send), check=True)
    fast, slow = read_tables(runner), read_tables_json(runner)
    assert fast.counters == slow.counters
    assert (fast.rules, fast.sets, fast.missing) == (slow.rules, slow.sets, []) and fast.rules > 40
    drops = [c for c in fast.counters if c.reason == "default-deny" and not c.logged and c.packets]
    assert sum(c.packets for c in drops) == 5, "the host's own packets to db hit db's default deny"
    assert {c.verdict for c in fast.counters} >= {"accept", "drop", "vmap", "goto:ingress"}


def test_a_missing_namespace_is_an_error() -> None:
    with pytest.raises(EnforceError):
        read_tables(NftRunner("gwf-no-such-netns"))
    with pytest.raises(EnforceError):
        read_tables_json(NftRunner("gwf-no-such-netns"))
