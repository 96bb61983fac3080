"""Quarantine (POLICY.md 2.5): a label in the domain XML, set and removed by `guestward quarantine` /
`guestward release`; while it is set only quarantine-tier policies allow the guest's traffic."""

from __future__ import annotations

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


def test_quarantine_cuts_connections_that_are_already_open(lab: Lab) -> None:
    # lb1 -> web1 tcp/443 is allowed; hold a connection open, echoing a line every 50 ms for 10 s.
    assert lab.exec("lb1", ["gw-net stream 10.77.0.11 443 10 >/tmp/held.out 2>&1 &"]).status == 0
    time.sleep(3)
    r = guestward("quarantine", "web1")
    assert r.returncode == 0, r.stderr
    try:
        time.sleep(9)
        out = lab.exec("lb1", ["cat /tmp/held.out"]).output
    finally:
        assert guestward("release", "web1").returncode == 0
    fields = dict(kv.split("=") for kv in out.split()[1:]) if out.startswith("stream ") else {}
    # The echoes stopped when the quarantine began (about 7 s before the end), not at the end.
    assert fields and int(fields["max_gap_ms"]) > 4000, out
