"""Established connections survive live migration, in both directions, and the policy's stateful rules
keep holding after each move (issue 6, part 1).

Two TCP streams run for the whole test: one that web1 (the migrating guest) opened to db1's
database (web-to-db), and one that lb1 opened to web1's tcp/443 (lb-to-web). Each sends a line every
50 ms and measures the longest gap between echoes. web1 live-migrates three times; the streams must
not be reset and must not stall longer than the migration's downtime plus 1 s. Right after every move,
the reverse connections (db1 -> web1, web1 -> lb1), which the policy forbids, must stay blocked: the
copied entries belong to the connections that were open, they open nothing new.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest

from guestward.lab.lab import Lab
from tests.conftest import guestward
from tests.lab.lifecycle_helpers import assert_matrix, wait_for

pytestmark = pytest.mark.lab

LB1, WEB1, DB1 = "10.77.0.10", "10.77.0.11", "10.77.0.13"
SUMMARY = re.compile(r"stream sent=(\d+) echoed=(\d+) max_gap_ms=(\d+)")


@dataclass
class Stream:
    """`gw-net stream` in the background inside a guest; `stop` ends it (SIGTERM) and reads its summary."""

    lab: Lab
    src: str
    tag: str

    @staticmethod
    def start(lab: Lab, src: str, tag: str, address: str, port: int) -> Stream:
        cmd = f"gw-net stream {address} {port} 900 >/tmp/{tag}.s 2>&1 & echo $! >/tmp/{tag}.pid"
        assert lab.exec(src, [cmd]).status == 0
        return Stream(lab, src, tag)

    def stop(self) -> tuple[int, int, int, str]:
        out = self.lab.exec(self.src, [f"kill $(cat /tmp/{self.tag}.pid); sleep 1; cat /tmp/{self.tag}.s"]).output
        m = SUMMARY.search(out)
        assert m, f"stream from {self.src} ended without its summary (reset or failed):\n{out}"
        sent, echoed, gap = (int(x) for x in m.groups())
        return sent, echoed, gap, out


def blocked(lab: Lab, src: str, address: str, port: int) -> bool:
    return lab.exec(src, [f"gw-net probe tcp {address} {port} 1500"]).output.strip() == "blocked"


def test_connections_survive_three_live_migrations_and_reverse_stays_forbidden(lab: Lab) -> None:
    assert lab.where("web1") == "hv1"
    outbound = Stream.start(lab, "web1", "s-db", DB1, 5432)   # web1 opened it
    inbound = Stream.start(lab, "lb1", "s-web", WEB1, 443)    # towards web1's service
    reports = []
    try:
        time.sleep(2)
        for dest in ("hv2", "hv1", "hv2"):
            stats = lab.migrate("web1", dest)
            assert lab.where("web1") == dest
            reports.append(stats)
            # Both streams' entries went along (plus whatever else web1 had open).
            assert stats["conntrack_moved"] >= 2, stats
            assert stats["conntrack_missing"] == 0, stats
            assert blocked(lab, "db1", WEB1, 80), f"db1 -> web1 tcp/80 got through after the move to {dest}"
            assert blocked(lab, "web1", LB1, 443), f"web1 -> lb1 tcp/443 got through after the move to {dest}"
            time.sleep(2)
        results = {"web1->db1": outbound.stop(), "lb1->web1": inbound.stop()}
    finally:
        if lab.where("web1") != "hv1":
            lab.migrate("web1", "hv1")
    bound = max(r["downtime"] for r in reports) + 1000
    for name, (sent, echoed, gap, out) in results.items():
        assert sent > 100, f"{name}: {out}"
        assert echoed >= sent - 2, f"{name}: {sent - echoed} lines never came back: {out}"
        assert gap <= bound, f"{name}: stalled {gap} ms (bound: downtime + 1 s = {bound} ms)"
    print(f"migrations {reports}; streams {[(n, r[:3]) for n, r in results.items()]}")
    assert_matrix(lab, step="three migrations with connections")


def test_a_migration_guestward_did_not_run_gets_its_connections_from_the_agent(lab: Lab) -> None:
    """`virsh migrate` (plain libvirt, the guest resumes at once): the agent sees the guest resumed on
    the destination and copies its entries from the source right away."""
    assert lab.where("web1") == "hv1"
    since = time.time()
    inbound = Stream.start(lab, "lb1", "s-virsh", WEB1, 443)
    try:
        time.sleep(2)
        stats = lab.migrate("web1", "hv2", carry_connections=False)

        def copied() -> list[dict[str, object]]:
            events = json.loads(guestward("events", "--kind", "conntrack", "--json").stdout)
            return [e for e in events if e["at"] >= since and e.get("after_resume") and e["guest"] == "web1"]

        assert wait_for(lambda: copied(), timeout=10), "the agent did not copy web1's entries"
        event = copied()[0]
        assert (event["subject"], event["source"]) == ("hv2", "hv1")
        assert event["moved"] >= 1 and event["missing"] == 0, event
        assert blocked(lab, "web1", LB1, 443), "web1 -> lb1 tcp/443 got through after the move"
        time.sleep(2)
        sent, echoed, gap, out = inbound.stop()
    finally:
        if lab.where("web1") != "hv1":
            lab.migrate("web1", "hv1")
    assert sent > 50 and echoed >= sent - 2, out
    assert gap <= stats.get("downtime", 0) + 1000, f"stalled {gap} ms: {out}"
