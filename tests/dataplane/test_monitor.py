"""`nft monitor` lines -> changes to our tables, on real output (captured/README.md)."""

from __future__ import annotations

from pathlib import Path

from guestward.dataplane.monitor import Change, MonitorParser

CAPTURED = Path(__file__).parent / "captured" / "nft_monitor_attacks.txt"
ATTACKERS = {29294: "flush table bridge", 29296: "flush table inet", 29299: "delete table inet",
             29304: "flush ruleset", 29307: "delete rule"}


def changes() -> list[Change]:
    parser = MonitorParser()
    out = []
    for i, line in enumerate(CAPTURED.read_text().splitlines(keepends=True)):
        change = parser.feed(line, float(i))
        if change is not None:
            out.append(change)
    return out


def test_every_transaction_on_our_tables_is_one_change_naming_its_committer() -> None:
    found = changes()
    attacks = [c for c in found if c.pid in ATTACKERS]
    assert [c.pid for c in attacks] == list(ATTACKERS)
    assert all(c.process == "nft" for c in found)
    # the restores between them are changes too (the agent tells its own apart by pid), and the
    # transaction that only added `table inet other` is none
    assert 29292 not in {c.pid for c in found}
    assert len(found) == 2 * len(ATTACKERS) + 1  # + the restore after `add table inet other`
    assert [c.generation for c in found] == sorted(c.generation for c in found)


def test_what_changed_is_counted_by_kind_and_first_lines_kept() -> None:
    by_pid = {c.pid: c for c in changes()}
    flush_bridge = by_pid[29294]
    assert flush_bridge.summary()[0] == "delete rule bridge guestward x16"
    assert all("inet" not in what for what in flush_bridge.summary())
    assert flush_bridge.lines[0].startswith("delete rule bridge guestward prerouting handle ")
    assert len(flush_bridge.lines) == 5
    assert "delete table inet guestward" in by_pid[29299].summary()
    whole = by_pid[29304].summary()  # flush ruleset: both our tables go (and `inet other`, not counted)
    assert "delete table bridge guestward" in whole and "delete table inet guestward" in whole
    assert not any("other" in what for what in whole)
    assert by_pid[29307].summary() == ["delete rule inet guestward"]
    assert by_pid[29307].lines == ("delete rule inet guestward forward handle 25",)


def test_timestamps_span_the_transaction_and_other_lines_are_ignored() -> None:
    parser = MonitorParser()
    assert parser.feed("trace id 1234 bridge gwtrace pre packet: iif \"x\"\n", 1.0) is None
    assert parser.feed("\n", 1.0) is None
    assert parser.feed("delete rule inet guestward forward handle 7\n", 2.0) is None
    assert parser.feed("delete rule inet guestward forward handle 8\n", 3.0) is None
    change = parser.feed("# new generation 9 by process 4321 (evil tool)\n", 5.0)
    assert change is not None
    assert (change.first_seen, change.committed_seen, change.who) == (2.0, 5.0, "pid 4321 (evil tool)")
    # a table merely named like ours is not ours
    assert parser.feed("add table inet guestward-trace\n", 6.0) is None
    assert parser.feed("# new generation 10 by process 1 (nft)\n", 6.0) is None
