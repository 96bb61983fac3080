"""An `apply` that denies an open connection between two real guests stops it within 1 s, while an
open connection the new policy still allows keeps flowing (issue 11; dataplane/revision.py).

Two TCP streams (`gw-net stream`, one line every 50 ms, echoed): web1 (hv1) -> db1 (hv2) tcp/5432,
judged at web1's egress on hv1 and db1's ingress on hv2, and lb1 -> web1 tcp/443 on hv1. A platform
policy that denies web-prod -> db is applied: the first stream's echoes stop, the second's go on.
Times are read on web1's own clock (/proc/uptime) around the `apply` command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from guestward.lab.lab import Lab
from tests.conftest import guestward
from tests.lab.conftest import POLICY
from tests.lab.test_connections import WEB1, Stream

pytestmark = pytest.mark.lab

DB1 = "10.77.0.13"
DENY = """apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: cut-web-db}
spec:
  tier: platform
  order: 5
  rules:
    - name: no-prod-web-to-db
      action: deny
      from: {guests: {zone: web, env: prod}}
      to: {guests: {zone: db}}
      ports: [tcp/5432]
"""


def uptime(lab: Lab, guest: str) -> float:
    return float(lab.exec(guest, ["cut -d' ' -f1 /proc/uptime"]).output.split()[0])


def test_an_apply_that_denies_an_open_stream_stops_it_and_spares_the_other(lab: Lab, tmp_path: Path) -> None:
    assert lab.where("web1") == "hv1" and lab.where("db1") == "hv2"
    cmd = ("cut -d' ' -f1 /proc/uptime >/tmp/cut.t0; gw-net stream 10.77.0.13 5432 900 t >/tmp/cut.s 2>&1 & "
           "echo $! >/tmp/cut.pid")
    assert lab.exec("web1", [cmd]).status == 0
    kept = Stream.start(lab, "lb1", "s-kept", WEB1, 443)
    change = tmp_path / "cut.yaml"
    change.write_text(DENY)
    try:
        time.sleep(3)
        before = uptime(lab, "web1")
        since = time.time()
        started = time.monotonic()
        r = guestward("apply", "-f", str(change))
        took = time.monotonic() - started
        assert r.returncode == 0, r.stderr
        after = uptime(lab, "web1")
        time.sleep(3)
        out = lab.exec("web1", ["kill $(cat /tmp/cut.pid); sleep 1; cat /tmp/cut.t0; cat /tmp/cut.s"]).output
        sent, echoed, gap, kept_out = kept.stop()
    finally:
        lab.exec("web1", ["kill $(cat /tmp/cut.pid) 2>/dev/null; true"])
        restore = guestward("apply", "--replace", "-f", str(POLICY))
        assert restore.returncode == 0, restore.stderr
    lines = out.split("\n")
    t0 = float(next(x for x in lines if x.strip() and x.strip()[0].isdigit()).split()[0])
    echoes = [t0 + int(x.split()[1]) / 1000 for x in lines if x.startswith("e ")]
    assert len([e for e in echoes if e < before]) > 20, f"web1 -> db1 did not flow before the apply:\n{out}"
    last = max(echoes)
    print(f"web1->db1: last echo {last - before:.3f} s after the apply started (apply took {took:.3f} s; "
          f"web1 read its clock {after - before:.3f} s after the start); lb1->web1 sent={sent} echoed={echoed} "
          f"max_gap_ms={gap}")
    assert last <= after + 1.0, f"web1 -> db1 still echoed {last - after:.3f} s after the apply returned"
    assert not [e for e in echoes if e > after + 1.0]
    assert sent > 100 and echoed >= sent - 2, f"lb1 -> web1 lost lines: {kept_out}"
    assert gap < 1000, f"lb1 -> web1 stalled {gap} ms: {kept_out}"
    # and the apply deleted the denied connection's entries on both hosts it crosses (denied.py)
    events = json.loads(guestward("events", "--kind", "cut-denied", "--json").stdout)
    cut = {e["subject"]: e["connections"] for e in events if e["at"] >= since and e["at"] < since + took + 1}
    assert set(cut) == {"hv1", "hv2"} and all(n >= 1 for n in cut.values()), cut
