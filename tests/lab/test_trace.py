"""`explain --trace` on the real lab: for every flow of the scenario, one real packet, traced on every
host, meets the rule that compiled policy names, with the same verdict."""

from __future__ import annotations

import subprocess

import pytest

from guestward.cli.policy_cmd import FlowJudge, decision_label
from guestward.lab import hosts
from guestward.lab.lab import Lab
from tests.conftest import guestward

pytestmark = pytest.mark.lab


def trace_tables() -> list[str]:
    out = []
    for ns in (hosts.netns_name("hv1"), hosts.netns_name("hv2")):
        tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                                text=True, check=True).stdout
        out += [line for line in tables.splitlines() if "gwtrace" in line]
    return out


def test_every_flow_traced_meets_the_compiled_rule(lab: Lab) -> None:
    flows = lab.all_flows()
    judge = FlowJudge(lab.controller())
    traced = lab.trace(flows)
    assert not trace_tables(), "a trace table outlived its session"
    wrong, roles = [], set()
    for f in flows:
        decision = judge.decide(f.src, f.dst, f.port)
        ft, echoed = traced[f]
        roles |= {h.role for h in ft.hops}
        if not ft.agrees(decision.allowed, decision_label(decision)) or echoed != decision.allowed:
            wrong.append(f"{f}: compiled {decision.allowed} ({decision_label(decision)}), traced {ft.verdict} "
                         f"by {ft.decided_by}, echo {echoed}: {[line for h in ft.hops for line in h.lines()]}")
    assert len(flows) > 100
    assert not wrong, f"{len(wrong)} of {len(flows)} flows disagree:\n" + "\n".join(wrong)
    # both kinds of path were exercised: two hosts (egress on one, ingress on the other) and one host
    assert {"source", "destination", "source and destination"} <= roles, roles
    allowed = sum(1 for f in flows if traced[f][0].verdict == "allowed")
    print(f"{len(flows)} flows traced, {allowed} allowed, all agree with compiled policy")


def test_the_cli_prints_the_trace_after_the_compiled_answer(lab: Lab) -> None:
    r = guestward("explain", "web1", "db1", "tcp/5432", "--trace", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "web1 -> db1 tcp/5432: allowed"
    assert "  trace: allowed by application/shop/web-to-db (agrees with the compiled answer)" in lines
    egress = "hv1 (source): passed: egress rule application/shop/web-to-db"
    assert any(line.strip().startswith(egress) for line in lines)
    assert any(line.strip().startswith("hv2 (destination): passed") for line in lines)
    r = guestward("explain", "web2", "db1", "tcp/5432", "--trace", timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[0] == "web2 -> db1 tcp/5432: blocked"
    assert "  trace: blocked by platform/platform-guards/no-dev-to-db (agrees with the compiled answer)" in r.stdout
    assert not trace_tables()
