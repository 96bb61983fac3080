"""Quarantine (POLICY.md 2.5): a label in the domain XML, set and removed by `guestward quarantine` /
`guestward release`; while it is set only quarantine-tier policies allow the guest's traffic."""

from __future__ import annotations

import json
import time

import pytest

from guestward.hypervisor import domains
from guestward.lab.lab import Flow, Lab
from guestward.policy import parse_port
from tests.conftest import guestward

pytestmark = pytest.mark.lab

FLOWS = [Flow("lb1", "web1", parse_port("tcp/443")), Flow("web1", "db1", parse_port("tcp/5432")),
         Flow("web1", "dns1", parse_port("udp/53")), Flow("web1", "dns1", parse_port("tcp/53"))]


def verdicts(lab: Lab) -> list[bool]:
    results = lab.probe(FLOWS)
    return [results[f] for f in FLOWS]


def test_quarantine_cuts_all_but_quarantine_tier_and_release_restores(lab: Lab) -> None:
    assert verdicts(lab) == [True, True, True, True]
    r = guestward("quarantine", "web1")
    assert r.returncode == 0, r.stderr
    try:
        assert 'key="guestward.dev/quarantine">true<' in domains.live_xml(lab.uri("hv1"), "web1")
        # Only the quarantine tier's remediate rule (udp/53 to dns) is left.
        assert verdicts(lab) == [False, False, True, False]
        ex = guestward("explain", "lb1", "web1", "tcp/443")
        assert ex.returncode == 1 and "quarantined" in ex.stdout
        ex = guestward("explain", "web1", "dns1", "udp/53")
        assert ex.returncode == 0 and "tier: quarantine" in ex.stdout
    finally:
        r = guestward("release", "web1")
        assert r.returncode == 0, r.stderr
    assert "guestward.dev/quarantine" not in domains.live_xml(lab.uri("hv1"), "web1")
    assert verdicts(lab) == [True, True, True, True]


def test_label_command_rejects_bad_labels_and_unknown_guests(lab: Lab) -> None:
    r = guestward("label", "web1", "Bad Key=x")
    assert r.returncode == 2 and "invalid label key" in r.stderr
    r = guestward("label", "nosuch", "zone=web")
    assert r.returncode == 2 and "nosuch" in r.stderr


def test_quarantine_cuts_connections_that_are_already_open_within_a_second(lab: Lab) -> None:
    # lb1 -> web1 tcp/443 is allowed; hold a connection open, echoing a line every 50 ms for 20 s;
    # the stream prints one "e" line per echo as it arrives.
    assert lab.exec("lb1", ["gw-net stream 10.77.0.11 443 20 v >/tmp/held.out 2>&1 &"]).status == 0
    time.sleep(3)

    def echoes() -> int:
        return int(lab.exec("lb1", ["grep -c '^e$' /tmp/held.out"]).output.strip() or 0)

    assert echoes() > 20, "the held connection does not flow before the quarantine"
    r = guestward("quarantine", "web1", "--reason", "test: cut open connections")
    done = time.monotonic()
    assert r.returncode == 0, r.stderr
    try:
        time.sleep(max(0.0, 1.0 - (time.monotonic() - done)))
        at_one_second = echoes()
        time.sleep(3)
        later = echoes()
    finally:
        assert guestward("release", "web1").returncode == 0
    # Nothing came back once a second had passed after the quarantine: the connection was dead.
    assert later == at_one_second, f"{later - at_one_second} echoes more than 1 s after the quarantine"
    labels = [e for e in json.loads(guestward("events", "--kind", "label", "--json").stdout)
              if e["subject"] == "web1"]
    assert labels[1]["reason"] == "test: cut open connections"  # [0] is the release
