"""Which repairs the agent records as `drift` events (reconcile/agent.py `_repair`), with the full
repair's result given: a fast repair is always recorded, a declined change only when the full repair
had something to put back (else it was a legitimate change, made under the lock)."""

from __future__ import annotations

from pathlib import Path

from guestward.dataplane.monitor import Change
from guestward.reconcile.agent import Agent, Drift
from guestward.reconcile.drift import Outcome
from guestward.store.config import Config, HostConfig


def agent(tmp_path: Path, commands: int) -> Agent:
    a = Agent(Config(state_dir=tmp_path, hosts=[HostConfig(name="h1", uri="test:///default")]))
    a.controller.store.put_guests([], a.controller.store.tick())  # seeded
    a.controller.enforce_snapshot = lambda host: commands  # type: ignore[method-assign]  # the full repair's result
    return a


def change(pid: int) -> Change:
    return Change(7, pid, "nft", ("flush table inet guestward",), (("delete rule inet guestward", 3),), 1.0, 1.002)


def drift_events(a: Agent) -> list[dict[str, object]]:
    return a.controller.store.events("drift")


def test_a_fast_repair_is_recorded_with_who_what_and_how_long(tmp_path: Path) -> None:
    a = agent(tmp_path, 0)
    a._repair("h1", [Drift("pid 42 (nft)", change(42), Outcome(True, restored_at=1.030))])
    (e,) = drift_events(a)
    assert (e["subject"], e["pid"], e["process"], e["path"], e["commands"]) == ("h1", 42, "nft", "fast", 0)
    assert e["changed"] == ["delete rule inet guestward x3"]
    assert (e["detect_ms"], e["repair_ms"], e["exposure_ms"]) == (2.0, 28.0, 30.0)


def test_a_declined_change_is_drift_only_when_something_had_to_be_put_back(tmp_path: Path) -> None:
    legit = agent(tmp_path / "a", 0)
    legit._repair("h1", [Drift("pid 43 (nft)", change(43), Outcome(False, "enforcement lock busy"))])
    assert drift_events(legit) == []
    attack = agent(tmp_path / "b", 5)
    attack._repair("h1", [Drift("pid 44 (nft)", change(44), Outcome(False, "enforcement lock busy"))])
    (e,) = drift_events(attack)
    assert (e["pid"], e["path"], e["fast_declined"], e["commands"]) == (44, "full", "enforcement lock busy", 5)


def test_every_change_gets_its_event_and_unexplained_differences_one_more(tmp_path: Path) -> None:
    a = agent(tmp_path, 2)
    a._repair("h1", [Drift("pid 45 (nft)", change(45), Outcome(True, restored_at=1.01)),
                     Drift("pid 46 (nft)", change(46), Outcome(True, restored_at=1.02)),
                     Drift("unknown (periodic check)")])
    events = drift_events(a)
    assert sorted(str(e["by"]) for e in events) == ["pid 45 (nft)", "pid 46 (nft)", "unknown (periodic check)"]
    quiet = agent(tmp_path / "q", 0)
    quiet._repair("h1", [Drift("unknown (periodic check)")])
    assert drift_events(quiet) == []


def test_a_declined_change_that_the_agent_s_own_sync_undid_is_still_drift(tmp_path: Path) -> None:
    # The attack landed while this agent's sync held the lock (so the guard declined); the sync's diff
    # put the tables back, and the full repair after it found nothing left to do.
    a = agent(tmp_path, 0)
    a._changed_by_sync["h1"] = 1.5  # after the change was seen (first_seen 1.0)
    a._repair("h1", [Drift("pid 47 (nft)", change(47), Outcome(False, "enforcement lock busy"))])
    (e,) = drift_events(a)
    assert (e["pid"], e["path"], e["commands"]) == (47, "sync", 0)
    before = agent(tmp_path / "b", 0)
    before._changed_by_sync["h1"] = 0.5  # a sync that ended before the change: it cannot have undone it
    before._repair("h1", [Drift("pid 48 (nft)", change(48), Outcome(False, "enforcement lock busy"))])
    assert drift_events(before) == []
