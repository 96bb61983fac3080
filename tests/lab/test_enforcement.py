"""Policy enforced on real guests across two hosts, measured with real packets (POLICY.md 2.3, 4).

The example policy (examples/lab/policy.yaml) uses every tier, allow/deny/pass, matchExpressions, a
cidr peer (the lab's `external` address), tcp, udp and icmp. The truth table below is what that policy
means, worked out by hand from POLICY.md 2.3; the test checks that real packets agree with it, and
that `guestward explain` agrees with both.
"""

from __future__ import annotations

import json

import pytest

from guestward.lab.lab import Flow, Lab
from guestward.policy import parse_port
from tests.conftest import guestward

pytestmark = pytest.mark.lab

# Every flow the policy allows, among the ports each destination listens on (and icmp). Every other
# ordered pair and port of the scenario must be blocked.
ALLOWED = {
    "lb1": {"web1": "tcp/80 tcp/443 icmp",       # application lb-to-web; baseline prod<->prod icmp
            "web2": "tcp/80 tcp/443",            # lb-to-web; web2 is dev: no icmp
            "db1": "icmp", "dns1": "udp/53 tcp/53", "external": "tcp/80"},
    "web1": {"db1": "tcp/5432 icmp",             # web-to-db (env NotIn dev); prod icmp
             "lb1": "icmp", "dns1": "udp/53 tcp/53"},   # web-not-outside: nothing to external
    "web2": {"dns1": "udp/53 tcp/53"},           # platform no-dev-to-db; dev gets no prod icmp
    "db1": {"lb1": "icmp", "web1": "icmp", "dns1": "udp/53 tcp/53", "external": "tcp/80"},
    "mon1": {"lb1": "icmp", "web1": "icmp", "web2": "icmp", "db1": "icmp",
             "dns1": "udp/53 tcp/53 icmp", "external": "icmp tcp/80"},
    "dns1": {"external": "tcp/80"},
    "external": {"lb1": "tcp/443 icmp",          # outside-to-lb (cidr)
                 "dns1": "udp/53"},              # quarantine-tier remediate: from anything
}


def expected(flow: Flow) -> bool:
    return str(flow.port) in ALLOWED.get(flow.src, {}).get(flow.dst, "").split()


def explain(src: str, dst: str, port: str) -> dict[str, object]:
    r = guestward("explain", src, dst, port, "--json")
    assert r.returncode in (0, 1), r.stderr
    verdict: dict[str, object] = json.loads(r.stdout)
    assert r.returncode == (0 if verdict["verdict"] == "allowed" else 1)
    return verdict


def test_probe_all_matches_truth_table_and_explain(lab: Lab) -> None:
    r = guestward("lab", "probe", "--all", "--json")
    assert r.returncode == 0, r.stderr
    measured = {(x["src"], x["dst"], x["port"]): x["verdict"] == "allowed" for x in json.loads(r.stdout)}
    flows = lab.all_flows()
    assert len(flows) == 108 and len(measured) == len(flows)
    wrong = [f"{f}: measured {'allowed' if measured[(f.src, f.dst, str(f.port))] else 'blocked'}"
             for f in flows if measured[(f.src, f.dst, str(f.port))] != expected(f)]
    assert not wrong, "real packets disagree with the truth table:\n" + "\n".join(wrong)
    disagree = [str(f) for f in flows
                if (explain(f.src, f.dst, str(f.port))["verdict"] == "allowed") != expected(f)]
    assert not disagree, "explain disagrees with real packets:\n" + "\n".join(disagree)


def test_explain_names_tier_policy_and_rule(lab: Lab) -> None:
    r = guestward("explain", "web1", "db1", "tcp/5432")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "web1 -> db1 tcp/5432: allowed"
    assert "tier: application" in r.stdout and "policy: shop" in r.stdout and "rule: web-to-db" in r.stdout
    r = guestward("explain", "web2", "db1", "tcp/5432")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "web2 -> db1 tcp/5432: blocked"
    assert "policy: platform-guards" in r.stdout and "rule: no-dev-to-db" in r.stdout
    r = guestward("explain", "dns1", "web1", "tcp/80")
    assert r.returncode == 1 and "no rule matched: default deny" in r.stdout


def test_single_probe_exit_status(lab: Lab) -> None:
    ok = guestward("lab", "probe", "lb1", "web1", "tcp/443")
    assert (ok.returncode, ok.stdout.strip()) == (0, "lb1 -> web1 tcp/443: allowed")
    no = guestward("lab", "probe", "web2", "db1", "tcp/5432")
    assert (no.returncode, no.stdout.strip()) == (1, "web2 -> db1 tcp/5432: blocked")


def test_replies_pass_but_reverse_connection_is_blocked(lab: Lab) -> None:
    # lb1 and web1 both listen on tcp/443: only lb1 -> web1 is allowed. The echo that makes the
    # forward probe "allowed" is the reply of that connection.
    forward = lab.probe([Flow("lb1", "web1", parse_port("tcp/443"))])
    reverse = lab.probe([Flow("web1", "lb1", parse_port("tcp/443"))])
    assert list(forward.values()) == [True] and list(reverse.values()) == [False]
    # A long-lived connection across hosts keeps flowing both ways (lb1 on hv1, web2 on hv2).
    r = lab.exec("lb1", ["gw-net stream 10.77.0.12 80 3"], timeout=60)
    assert r.status == 0, r.output
    fields = dict(kv.split("=") for kv in r.output.split()[1:])
    assert int(fields["sent"]) >= 20 and int(fields["max_gap_ms"]) < 2000, r.output
