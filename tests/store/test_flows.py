"""The drop log in the store: batched inserts, filters, newest-N reads oldest first, a hard cap."""

from __future__ import annotations

from pathlib import Path

from guestward.dataplane.flowlog import FlowRecord
from guestward.store.sqlite import Store


def rec(i: int, guest: str = "a", host: str = "hv1") -> FlowRecord:
    return FlowRecord(float(i), host, guest, "egress", "blocked", "deny", "eg-x", "application/p/r", "udp",
                      "10.0.0.1", 1000 + i, "10.0.0.2", 9999, None, "vnet1", i % 3, f"52:54:00:00:00:{i:02x}")


def test_records_round_trip_and_filter(tmp_path: Path) -> None:
    s = Store(tmp_path / "g.db")
    s.put_flows([rec(i, "a" if i % 2 else "b", "hv1" if i < 5 else "hv2") for i in range(10)], keep=1000)
    assert [r for _, r in s.flows(limit=100)] == [rec(i, "a" if i % 2 else "b", "hv1" if i < 5 else "hv2")
                                                 for i in range(10)]
    assert [r.sport for _, r in s.flows(guest="a", limit=100)] == [1001, 1003, 1005, 1007, 1009]
    assert [r.sport for _, r in s.flows(guest="a", host="hv2", limit=100)] == [1005, 1007, 1009]
    assert s.flows(verdict="allowed", limit=100) == []
    newest = s.flows(limit=3)
    assert [r.sport for _, r in newest] == [1007, 1008, 1009], "the newest N, oldest first"
    assert [r.sport for _, r in s.flows(after_id=newest[0][0], limit=100)] == [1008, 1009]
    s.put_flows([], keep=1)  # nothing to add: nothing pruned either
    assert len(s.flows(limit=100)) == 10


def test_the_cap_prunes_the_oldest_in_the_same_transaction(tmp_path: Path) -> None:
    s = Store(tmp_path / "g.db")
    for batch in range(5):
        s.put_flows([rec(batch * 100 + i) for i in range(100)], keep=250)
        kept = s.flows(limit=10_000)
        assert len(kept) == min(250, (batch + 1) * 100)
        assert kept[-1][1].at == batch * 100 + 99, "the newest is always kept"
    assert [r.at for _, r in s.flows(limit=10_000)] == [float(i) for i in range(250, 500)]


def test_event_sums_for_metrics(tmp_path: Path) -> None:
    s = Store(tmp_path / "g.db")
    s.record("conntrack", "hv1", moved=5)
    s.record("conntrack", "hv1", moved=7)
    s.record("conntrack", "hv2", moved="3")
    s.record("conntrack", "hv2")  # no count: adds nothing
    s.record("drift", "hv1", by="pid 1 (nft)")
    assert s.event_counts("conntrack", "moved") == {"hv1": 12.0, "hv2": 3.0}
    assert s.event_counts("drift") == {"hv1": 1.0}
    s.record("reconcile", "agent", ms=12.5)
    s.record("reconcile", "agent")
    assert s.event_values("reconcile", "ms") == [12.5]


def test_a_store_from_before_the_mac_column_gains_it(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "g.db")
    db.execute("CREATE TABLE flow (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, host TEXT NOT NULL, "
               "guest TEXT, direction TEXT, verdict TEXT NOT NULL, reason TEXT NOT NULL, chain TEXT NOT NULL, "
               "rule TEXT NOT NULL, proto TEXT, src TEXT, sport INTEGER, dst TEXT, dport INTEGER, tcpflags TEXT, "
               "port TEXT, lost INTEGER NOT NULL DEFAULT 0)")
    db.commit()
    db.close()
    s = Store(tmp_path / "g.db")
    s.put_flows([rec(1)], keep=10)
    assert s.flows(limit=1)[0][1].mac == "52:54:00:00:00:01"
