"""The drop log on the real lab: a probe the policy blocks shows up in `guestward flows` with the rule
that blocked it, `guestward stats` counts it, and the agent's metrics endpoint reports it."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest

from guestward.lab.lab import Lab
from tests.conftest import guestward

pytestmark = pytest.mark.lab

RULE = "platform/platform-guards/no-dev-to-db"  # web2 is env=dev, db1 is zone=db


def blocked_records(guest: str, dport: int, dst: str, timeout: float = 20.0,
                    since: float = 0.0) -> list[dict[str, object]]:
    """The drop records of `guest` to dst:dport logged at or after `since` (earlier lab tests leave
    theirs: an apply that denied web1 -> db1 for a while, say)."""
    deadline = time.monotonic() + timeout
    while True:
        r = guestward("flows", "--guest", guest, "--verdict", "blocked", "--json", "--limit", "500")
        assert r.returncode == 0, r.stderr
        hits = [x for x in map(json.loads, r.stdout.splitlines())
                if x["dport"] == dport and x["dst"] == dst and float(x["at"]) >= since]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(0.5)


def test_a_blocked_probe_is_in_the_drop_log_with_its_rule(lab: Lab) -> None:
    probe = guestward("lab", "probe", "web2", "db1", "tcp/5432")
    assert probe.returncode == 1, probe.stdout + probe.stderr
    hits = blocked_records("web2", 5432, "10.77.0.13")
    assert hits, "the blocked probe is not in the drop log"
    h = hits[-1]
    assert (h["host"], h["guest"], h["reason"], h["rule"], h["direction"], h["proto"], h["src"]) == (
        "hv2", "web2", "deny", RULE, "egress", "tcp", "10.77.0.12")
    assert (h["tier"], h["policy"], h["rule_name"]) == ("platform", "platform-guards", "no-dev-to-db")
    assert "S" in str(h["tcpflags"])
    text = guestward("flows", "--guest", "web2", "--verdict", "blocked")
    assert RULE in text.stdout and "web2 egress tcp 10.77.0.12:" in text.stdout

    # An allowed probe leaves no record.
    since = time.time()
    assert guestward("lab", "probe", "web1", "db1", "tcp/5432").returncode == 0
    time.sleep(2)
    assert not blocked_records("web1", 5432, "10.77.0.13", timeout=0, since=since)

    stats = json.loads(guestward("stats", "--guest", "web2", "--json").stdout)
    rows = [c for c in stats["hv2"]["counters"] if c["rule"] == RULE and c["direction"] == "egress"]
    assert rows and sum(int(c["packets"]) for c in rows) >= 1 and sum(int(c["logged"]) for c in rows) >= 1

    body = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=30).read().decode()
    assert 'guestward_dropped_packets_total{host="hv2",reason="deny"}' in body
    assert 'guestward_guests{host="hv1"} 3.0' in body and 'guestward_guests{host="hv2"} 3.0' in body


def test_a_flood_is_logged_within_the_per_guest_limit_and_the_host_s_other_traffic_flows(lab: Lab) -> None:
    """web2 floods db1's udp/5432 (forbidden by no-dev-to-db) at full speed for 8 s, on the host where
    db1 and dns1 live. The drop log names the flow and the rule, at no more than the configured rate
    (20/s per guest, burst 20) while the kernel counts every dropped packet; a TCP stream from web1 to
    db1 (allowed) keeps flowing through the flood."""
    since = time.time()
    stream = "gw-net stream 10.77.0.13 5432 14 >/tmp/flood-stream.s 2>&1 &"
    assert lab.exec("web1", [stream]).status == 0
    before = _rule_packets("web2")
    time.sleep(1)
    flood = lab.exec("web2", ["gw-net flood udp 10.77.0.13 5432 8"], timeout=120).output
    m = re.search(r"flood sent=(\d+) ms=(\d+)", flood)
    assert m, flood
    sent, ms = int(m.group(1)), int(m.group(2))
    time.sleep(6)  # the stream ends (14 s in all)
    out = lab.exec("web1", ["cat /tmp/flood-stream.s"]).output
    s = re.search(r"stream sent=(\d+) echoed=(\d+) max_gap_ms=(\d+)", out)
    assert s, f"the allowed stream broke during the flood: {out}"
    assert int(s.group(2)) >= int(s.group(1)) - 2 and int(s.group(3)) < 1000, out

    dropped = _rule_packets("web2") - before
    records = [r for r in blocked_records("web2", 5432, "10.77.0.13")
               if r["proto"] == "udp" and float(str(r["at"])) >= since]
    assert records and all(r["rule"] == RULE and r["guest"] == "web2" for r in records), records[:3]
    limit = 20 * (ms / 1000 + 1) + 20  # rate over the flood (plus a second of slack), plus the burst
    assert len(records) <= limit, f"{len(records)} drops logged in {ms} ms (limit {limit:.0f})"
    assert dropped > 10 * len(records), f"the flood was not a flood: {dropped} dropped, {sent} sent"
    print(f"flood: {sent} sent in {ms} ms, {dropped} dropped by {RULE}, {len(records)} logged; stream {s.group(0)}")


def _rule_packets(guest: str) -> int:
    stats = json.loads(guestward("stats", "--guest", guest, "--json").stdout)
    return sum(int(c["packets"]) for h in stats.values() for c in h["counters"]
               if c["rule"] == RULE and c["direction"] == "egress")
