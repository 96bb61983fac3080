"""Fast drift repair (reconcile/drift.py) on real nftables, in a private network namespace.

Contract: the guard rebuilds our tables after a foreign change only when nobody held the enforcement
lock since it was armed; it leaves our own commits alone; it never raises.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestward.dataplane import diff_objects, render_plan
from guestward.dataplane.monitor import Change, MonitorParser
from guestward.enforce import Enforcer, NftRunner
from guestward.reconcile.drift import OURS, DriftGuard
from guestward.store.lock import enforcement_lock
from tests.enforce.conftest import netns  # noqa: F401  (the fixture)
from tests.enforce.test_enforcer import guest, plan_of

pytestmark = pytest.mark.nft
PLAN = plan_of([guest(1, "web"), guest(2, "db"), guest(3, "web")])


def attack(ns: str, *argv: str) -> Change:
    """Another process changes our tables; the Change the monitor would report for it."""
    proc = subprocess.Popen(NftRunner(ns).command("nft", *argv))
    assert proc.wait() == 0
    now = time.monotonic()
    return Change(0, proc.pid, "nft", (" ".join(argv),), ((" ".join(argv), 1),), now, now)


ENFORCED: dict[str, int] = {}  # what the controller would say: the generation the host was enforced at


def armed_guard(ns: str, state: Path) -> tuple[DriftGuard, Enforcer]:
    enforcer = Enforcer(NftRunner(ns))
    guard = DriftGuard(NftRunner(ns), state, lambda: ENFORCED.get(ns))
    with enforcement_lock(state) as generation:
        enforcer.sync(PLAN)
        ENFORCED[ns] = generation
        guard.arm(PLAN, generation)
    return guard, enforcer


def hold_lock_in_another_process(state: Path) -> None:
    code = ("import sys, pathlib\nfrom guestward.store.lock import enforcement_lock\n"
            "with enforcement_lock(pathlib.Path(sys.argv[1])): pass")
    subprocess.run([sys.executable, "-c", code, str(state)], check=True)


def holds_plan(enforcer: Enforcer) -> bool:
    current, missing = enforcer.read()
    desired = render_plan(PLAN)
    return not missing and not diff_objects(current, desired) and not diff_objects(desired, current)


@pytest.mark.parametrize("argv", [
    ("flush", "table", "bridge", "guestward"), ("flush", "table", "inet", "guestward"),
    ("delete", "table", "inet", "guestward"), ("flush", "ruleset"),
    ("delete", "chain", "inet", "guestward", "output"),
])
def test_a_foreign_change_is_undone_whole(netns: str, tmp_path: Path, argv: tuple[str, ...]) -> None:  # noqa: F811
    guard, enforcer = armed_guard(netns, tmp_path)
    subprocess.run(NftRunner(netns).command("nft", "add", "table", "inet", "other"), check=True)
    if argv[0] == "delete" and argv[1] == "chain":
        subprocess.run(NftRunner(netns).command("nft", "flush", "chain", "inet", "guestward", "output"), check=True)
    change = attack(netns, *argv)
    assert not holds_plan(enforcer)
    outcome = guard.on_change(change)
    assert outcome.repaired and outcome.restored_at is not None, outcome
    assert holds_plan(enforcer)
    other = NftRunner(netns).run("nft", "list", "table", "inet", "other").returncode
    assert other == (1 if argv == ("flush", "ruleset") else 0), "another table was touched"
    # and again: the guard stays armed after its own repair
    assert guard.on_change(attack(netns, "flush", "table", "inet", "guestward")).repaired
    assert holds_plan(enforcer)


def test_a_flushed_bridge_table_fails_closed(netns: str, tmp_path: Path) -> None:  # noqa: F811
    armed_guard(netns, tmp_path)
    attack(netns, "flush", "table", "bridge", "guestward")
    text = NftRunner(netns).run("nft", "list", "table", "bridge", "guestward").stdout
    assert text.count("policy drop;") == 2 and "vmap" not in text


def test_no_repair_when_another_process_held_the_lock_since(netns: str, tmp_path: Path) -> None:  # noqa: F811
    guard, enforcer = armed_guard(netns, tmp_path)
    hold_lock_in_another_process(tmp_path)  # e.g. `guestward apply`, which changes the tables legitimately
    outcome = guard.on_change(attack(netns, "flush", "table", "inet", "guestward"))
    assert not outcome.repaired and "another process" in outcome.reason
    assert not holds_plan(enforcer), "the guard overwrote what it could not know was wrong"
    assert guard.armed is None
    assert not guard.on_change(attack(netns, "flush", "table", "bridge", "guestward")).repaired


def test_our_own_holds_for_other_hosts_do_not_stop_it_but_enforcing_this_host_anew_does(
        netns: str, tmp_path: Path) -> None:  # noqa: F811
    guard, enforcer = armed_guard(netns, tmp_path)
    for _ in range(3):
        with enforcement_lock(tmp_path):
            pass  # this process enforcing another host, or a periodic check that changed nothing
    assert guard.on_change(attack(netns, "flush", "table", "inet", "guestward")).repaired
    assert holds_plan(enforcer)
    with enforcement_lock(tmp_path) as generation:
        ENFORCED[netns] = generation  # this host enforced anew (its guard not yet re-armed)
    outcome = guard.on_change(attack(netns, "flush", "table", "inet", "guestward"))
    assert not outcome.repaired and "anew" in outcome.reason
    assert not holds_plan(enforcer)


def test_no_repair_while_the_lock_is_held(netns: str, tmp_path: Path) -> None:  # noqa: F811
    guard, enforcer = armed_guard(netns, tmp_path)
    with enforcement_lock(tmp_path):
        outcome = guard.on_change(attack(netns, "flush", "table", "inet", "guestward"))
    assert not outcome.repaired and "busy" in outcome.reason
    assert not holds_plan(enforcer)
    unarmed = DriftGuard(NftRunner(netns), tmp_path, lambda: None)
    assert not unarmed.on_change(attack(netns, "flush", "ruleset")).repaired


def test_our_own_commits_are_left_alone(netns: str, tmp_path: Path) -> None:  # noqa: F811
    guard, enforcer = armed_guard(netns, tmp_path)
    monitor = subprocess.Popen(NftRunner(netns).command("nft", "monitor"), stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        other = plan_of([guest(1, "web"), guest(2, "db")])
        assert enforcer.sync(other).commands > 0
        parser = MonitorParser()
        assert monitor.stdout is not None
        change = None
        while change is None:
            change = parser.feed(monitor.stdout.readline(), time.monotonic())
    finally:
        monitor.kill()
        monitor.wait()
    assert guard.on_change(change) is OURS
    current, _ = enforcer.read()
    assert not diff_objects(current, render_plan(other)), "our own change was undone"
