"""Policy follows a guest through live migration, with the agent up and with the agent killed.

Probe loops run inside the migrating guest and towards it for the whole time; a packet counter at
`external` counts every forbidden packet that arrives there. Not one forbidden probe may pass, not one
forbidden packet may arrive, and allowed flows must come back within the migration's downtime plus 1 s
(plus the probe loop's own period, the resolution of the measurement).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from guestward.lab.lab import Lab
from tests.conftest import guestward
from tests.lab.lifecycle_helpers import ExternalCounter, Watch, assert_matrix, longest_outage, wait_for

pytestmark = pytest.mark.lab

LB1, WEB1, DB1, EXTERNAL = "10.77.0.10", "10.77.0.11", "10.77.0.13", "10.77.0.250"
INTERVAL_MS = 200


def start_watches(lab: Lab) -> dict[str, Watch]:
    return {
        # forbidden: web1 to the outside (web-not-outside), web2 (dev) to web1
        "web1->external tcp/80": Watch.start(lab, "web1", "fx", "tcp", EXTERNAL, 80, interval=INTERVAL_MS),
        "web2->web1 tcp/80": Watch.start(lab, "web2", "fw", "tcp", WEB1, 80, interval=INTERVAL_MS),
        # allowed: from inside the migrating guest, and towards it
        "web1->db1 tcp/5432": Watch.start(lab, "web1", "ad", "tcp", DB1, 5432, interval=INTERVAL_MS),
        "lb1->web1 tcp/443": Watch.start(lab, "lb1", "al", "tcp", WEB1, 443, interval=INTERVAL_MS),
    }


def check_watches(watches: dict[str, Watch], downtime_ms: int) -> dict[str, int]:
    results = {name: w.stop() for name, w in watches.items()}
    outages = {}
    for name, rs in results.items():
        assert len(rs) > 20, f"{name}: only {len(rs)} probes ran"
        if name.startswith(("web1->external", "web2->web1")):
            leaked = [t for t, ok in rs if ok]
            assert not leaked, f"forbidden flow {name} got through at {leaked} ms"
        else:
            outages[name] = longest_outage(rs)
            bound = downtime_ms + 1000 + 2 * INTERVAL_MS + 300  # + the probe period and its timeout
            assert outages[name] <= bound, f"allowed flow {name} was out for {outages[name]} ms (bound {bound})"
    return outages


def test_policy_follows_three_round_trips_of_live_migration(lab: Lab) -> None:
    counter = ExternalCounter(WEB1, 80)
    control = ExternalCounter(LB1, 80)  # lb1 -> external tcp/80 is allowed: the counter does count
    try:
        assert lab.exec("lb1", [f"gw-net probe tcp {EXTERNAL} 80 2000"]).output.strip() == "allowed"
        assert control.packets() > 0
        watches = start_watches(lab)
        time.sleep(2)
        downtimes = []
        for _ in range(3):
            for dest in ("hv2", "hv1"):
                stats = lab.migrate("web1", dest)
                assert lab.where("web1") == dest
                downtimes.append(stats.get("downtime", 0))
                time.sleep(1.5)
        outages = check_watches(watches, max(downtimes))
        assert counter.packets() == 0, "forbidden packets from web1 reached external"
    finally:
        counter.remove()
        control.remove()
    print(f"downtimes {downtimes} ms; longest allowed outages {outages}")
    assert_matrix(lab, step="six live migrations")


def test_hook_enforces_while_the_agent_is_dead_and_the_restart_opens_nothing(lab: Lab) -> None:
    pid = lab.agent_pid()
    assert pid is not None, "the lab runs an agent"
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: lab.agent_pid() is None, 10) is not None
    counter = ExternalCounter(WEB1, 80)
    try:
        watches = start_watches(lab)
        # guests start and migrate with nobody but the hook to bind them
        lab.stop("dns1")
        lab.start("dns1")
        downtimes = [lab.migrate("web1", "hv2").get("downtime", 0)]
        assert_matrix(lab, step="a restart of dns1 and a migration of web1 without an agent")
        downtimes.append(lab.migrate("web1", "hv1").get("downtime", 0))
        # the agent comes back while the probes run: it converges without opening anything
        started = time.time()
        lab.start_agent()
        assert wait_for(lambda: any(e["kind"] == "reconcile" for e in events_since(started)), 60) is not None
        time.sleep(2)
        check_watches(watches, max(downtimes))
        assert counter.packets() == 0
    finally:
        counter.remove()
        lab.start_agent()
    assert_matrix(lab, step="the agent's restart")


def events_since(since: float) -> list[dict[str, object]]:
    import json

    r = guestward("events", "--json", "--limit", "200")
    assert r.returncode == 0, r.stderr
    return [e for e in json.loads(r.stdout) if float(e["at"]) >= since]  # type: ignore[arg-type]
