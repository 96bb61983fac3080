"""Data-plane benchmark: what guestward's compiled state costs real packets.

Topology per configuration (TESTBED.md 4.3): a host netns `gwb-dp-<cfg>` with bridge `br0` and
br_netfilter on (`bridge-nf-call-iptables=1`), two guest netns attached by veth. The two guests are
guests 0 and 1 of the synthetic fleet (bench/workload.py: app-0000 -> app-0001 is allowed on
tcp/udp 5201 and icmp by the last rule of app-0000's policy), so their traffic walks guestward's
real chains: the bridge guards, then the inet stateful chains (the sender's egress chain up to its
last rule, the receiver's ingress chain).

Configurations, all measured side by side in interleaved rounds:
- `none`: no filtering at all (no tables; br_netfilter still on);
- `linear`: the same 10k-rule policy as one bridge forward chain, one rule per (source prefix,
  destination prefix, port) with the test flow's rules (both directions: no bridge conntrack) last,
  so the test traffic walks all of it (iptables / nwfilter style);
- `gw-1k`, `gw-10k`, `gw-100k`: guestward's state for 1k / 10k / 100k guests (all on this host)
  and the 1k-policy / 10k-rule set, loaded with `Enforcer.sync`;
- two partial configurations that split guestward's cost: `conntrack` (an inet forward chain with only
  `ct state established,related accept`: the price of stateful filtering of bridged traffic) and
  `guards-1k` (guestward's 1k-guest state without its inet table: the bridge guards alone; no conntrack).

Metrics: `iperf3 -u -l 64 -b 0` received packets/s, with the client on CPU 0 and the server on CPU 1
(`-A 0,1`: the sender's CPU runs the whole kernel path, filtering included, and is the bottleneck)
and with both on CPU 0 (`-A 0,0`: the receiver competes for the same CPU); `ping -c 200 -i 0.005`
average RTT (established flow), and the RTT of 50 single pings (each a new conntrack flow).

Usage: .venv/bin/python bench/data_plane.py [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import median, summary, table, timed, write_result
from netns import Testbed, daemon, in_ns, make_testbed, nft, remove_all, remove_run_dir, remove_testbed, sh
from workload import (
    TEST_PORT,
    Shape,
    app_prefix,
    guest_address,
    guest_labels,
    guest_mac,
    host_name,
    make_guests,
    make_hosts,
    make_policies,
    peer_apps,
)

from guestward.compile import compile_state
from guestward.compile.plan import identity_id
from guestward.dataplane import render_plan
from guestward.enforce import Enforcer, NftRunner
from guestward.model import Inventory
from guestward.policy import Policy

NS_PREFIX = "gwb-dp-"
RUN_DIR = Path("/var/tmp/guestward-bench/data_plane")
GOAL_WITHIN = 0.10  # guestward within 10% of no filtering


def guest_end(k: int, shape: Shape) -> tuple[str, str, str]:
    """(port, mac, address) of fleet guest k, as the inventory declares them (default port names)."""
    return f"v{k:07d}", guest_mac(k), guest_address(k, shape.apps)


def load_guestward(tb: Testbed, n: int, policies: list[Policy], families: tuple[str, ...] = ("bridge", "inet"),
                   ) -> dict[str, Any]:
    """Compile the fleet of n guests (all on this host) and load it with one Enforcer.sync; keep only
    the tables of `families` (the others are deleted again)."""
    shape = Shape(n, hosts=1)
    compile_s, state = timed(lambda: compile_state(Inventory(make_hosts(shape), tuple(make_guests(shape))), policies))
    plan = state.hosts[host_name(0)]
    sync_s, result = timed(lambda: Enforcer(NftRunner(tb.host)).sync(plan))
    for family in {"bridge", "inet"} - set(families):
        nft(tb.host, "delete", "table", family, "guestward")
    objects = render_plan(plan)
    return {"guests": n, "compile_s": compile_s, "sync_s": sync_s, "commands": result.commands,
            "families": list(families),
            "rules": sum(len(c.rules) for (f, _), c in objects.chains.items() if f in families),
            "elements": sum(len(e) for (f, _), e in objects.elements.items() if f in families)}


CONNTRACK_ONLY = """table inet gwbct {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ct state established,related accept
    accept
  }
}
"""


def load_conntrack_only(tb: Testbed) -> dict[str, Any]:
    seconds, _ = timed(lambda: nft(tb.host, "-f", "-", input=CONNTRACK_ONLY))
    return {"rules": 2, "load_s": seconds}


def linear_ruleset(shape: Shape) -> tuple[str, int]:
    """The policy as one linear bridge forward chain; the test flow's rules come last. (text, rules)."""
    lines: list[str] = []
    test_rules: list[str] = []
    for a in range(shape.apps):
        for b, ports in peer_apps(a, shape):
            for port in ports:
                proto, _, num = port.partition("/")
                match = "icmp type echo-request" if proto == "icmp" else f"{proto} dport {num}"
                rule = f"ip saddr {app_prefix(a)} ip daddr {app_prefix(b)} {match} accept"
                (test_rules if (a, b) == (0, 1) else lines).append(rule)
    reverse = [f"ip saddr {app_prefix(1)} ip daddr {app_prefix(0)} {m} accept"
               for m in (f"tcp sport {TEST_PORT}", f"udp sport {TEST_PORT}", "icmp type echo-reply")]
    body = "\n".join(f"    {r}" for r in [*lines, *test_rules, *reverse])
    text = ("table bridge linear {\n  chain forward {\n    type filter hook forward priority 0; policy drop;\n"
            f"    ether type arp accept\n{body}\n  }}\n}}\n")
    return text, len(lines) + len(test_rules) + len(reverse)


def load_linear(tb: Testbed, shape: Shape) -> dict[str, Any]:
    text, rules = linear_ruleset(shape)
    seconds, _ = timed(lambda: nft(tb.host, "-f", "-", input=text))
    return {"rules": rules, "load_s": seconds}


def udp_pps(tb: Testbed, seconds: int, affinity: str) -> float:
    """Received 64-byte UDP packets per second, client in guest a, server in guest b, on CPUs `affinity`
    (iperf3 -A client,server)."""
    out = sh(*in_ns(tb.a.ns, "iperf3", "-c", tb.b.address, "-u", "-l", "64", "-b", "0", "-t", str(seconds),
                    "-A", affinity, "-J"), timeout=seconds + 30)
    s = json.loads(out)["end"]["sum"]
    return (s["packets"] - s["lost_packets"]) / s["seconds"]


def ping_rtt(tb: Testbed, src: str = "a", count: int = 200) -> dict[str, float]:
    """ping -c count -i 0.005 from guest `src` to the other guest: received count and avg/mdev RTT in ms."""
    g, dst = (tb.a, tb.b) if src == "a" else (tb.b, tb.a)
    proc = sh(*in_ns(g.ns, "ping", "-q", "-c", str(count), "-i", "0.005", "-W", "1", dst.address), check=False,
              timeout=60)
    received = 0
    avg = mdev = float("nan")
    for line in proc.splitlines():
        if "received" in line:
            received = int(line.split(",")[1].split()[0])
        if line.startswith("rtt"):
            _mn, avg, _mx, mdev = (float(x) for x in line.split("=")[1].split()[0].split("/"))
    return {"received": received, "avg_ms": avg, "mdev_ms": mdev}


def new_flow_rtt(tb: Testbed, count: int = 50) -> float:
    """Median RTT (ms) of `count` single pings, each its own ICMP id, so each is a new conntrack flow:
    its echo request walks the sender's egress and the receiver's ingress chain (replies are established)."""
    loop = f"for i in $(seq {count}); do ping -q -c 1 -W 1 {tb.b.address}; done"
    out = sh(*in_ns(tb.a.ns, "sh", "-c", loop), check=False, timeout=120)
    rtts = [float(line.split("=")[1].split("/")[1]) for line in out.splitlines() if line.startswith("rtt")]
    return median(rtts)


def test_rule_packets(tb: Testbed) -> int:
    """Packets counted by the allowing rule in guest a's egress chain (proves the traffic walked it)."""
    chain = f"eg-{identity_id(guest_labels(0))}"
    doc = json.loads(nft(tb.host, "-j", "list", "chain", "inet", "guestward", chain))
    total = 0
    for item in doc["nftables"]:
        rule = item.get("rule")
        if rule and "to-app-0001-9" in rule.get("comment", ""):
            total += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return total


def run_rounds(beds: dict[str, Testbed], rounds: int, seconds: int) -> dict[str, list[dict[str, float]]]:
    """Every configuration once per round, the order rotated each round, so drift hits all alike."""
    names = list(beds)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            pps = udp_pps(beds[name], seconds, "0,1")
            same = udp_pps(beds[name], seconds, "0,0")
            rtt = ping_rtt(beds[name])
            new = new_flow_rtt(beds[name])
            samples[name].append({"round": r, "pps": pps, "pps_same_cpu": same, "rtt_ms": rtt["avg_ms"],
                                  "ping_received": rtt["received"], "new_flow_rtt_ms": new})
            print(f"  round {r} {name:8s} {pps:8.0f} pkt/s (same CPU {same:8.0f})  rtt {rtt['avg_ms']:.3f} ms  "
                  f"new-flow rtt {new:.3f} ms", flush=True)
    return samples


def ratios(samples: dict[str, list[dict[str, float]]], metric: str) -> dict[str, float]:
    """Per configuration: median over rounds of (config / none) measured in the same round."""
    base = {s["round"]: s[metric] for s in samples["none"]}
    return {name: median([s[metric] / base[s["round"]] for s in rows]) for name, rows in samples.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=2, help="iperf3 duration per sample")
    ap.add_argument("--quick", action="store_true", help="sizes 1k and 10k only, 2 rounds (a smoke run)")
    args = ap.parse_args(argv)
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    rounds = 2 if args.quick else args.rounds
    remove_all(NS_PREFIX)
    shape = Shape(max(sizes))
    a, b = guest_end(0, shape), guest_end(1, shape)
    policies = make_policies(shape)
    beds: dict[str, Testbed] = {}
    loads: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    try:
        for name in ("none", "conntrack", "guards-1k", *(f"gw-{n // 1000}k" for n in sizes), "linear"):
            beds[name] = make_testbed(f"dp-{name}", a, b)
        loads["linear"] = load_linear(beds["linear"], shape)
        loads["conntrack"] = load_conntrack_only(beds["conntrack"])
        loads["guards-1k"] = load_guestward(beds["guards-1k"], 1_000, policies, families=("bridge",))
        for n in sizes:
            loads[f"gw-{n // 1000}k"] = load_guestward(beds[f"gw-{n // 1000}k"], n, policies)
            print(f"loaded gw-{n // 1000}k: {loads[f'gw-{n // 1000}k']}", flush=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with _servers(beds):
            for name, tb in beds.items():
                checks[name] = {"allowed_a_to_b": ping_rtt(tb, "a", 3)["received"],
                                "forbidden_b_to_a": ping_rtt(tb, "b", 3)["received"]}
            samples = run_rounds(beds, rounds, args.seconds)
        for name, tb in beds.items():
            if name.startswith("gw-"):
                checks[name]["egress_test_rule_packets"] = test_rule_packets(tb)
    finally:
        for tb in beds.values():
            remove_testbed(tb)
        remove_all(NS_PREFIX)
        remove_run_dir(RUN_DIR)
    res = summarise(samples, loads, checks)
    print(report(res))
    print(f"\nwritten: {write_result('data_plane', res)}")
    return 0


class _servers:
    """iperf3 servers in every guest b for the duration of the block (stopped by their pidfiles)."""

    def __init__(self, beds: dict[str, Testbed]) -> None:
        self.beds = beds
        self.stack: list[Any] = []

    def __enter__(self) -> None:
        for name, tb in self.beds.items():
            ctx = daemon(in_ns(tb.b.ns, "iperf3", "-s"), RUN_DIR / f"iperf3-{name}.pid")
            ctx.__enter__()
            self.stack.append(ctx)
        time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        while self.stack:
            self.stack.pop().__exit__(None, None, None)


def summarise(samples: dict[str, list[dict[str, float]]], loads: dict[str, Any],
              checks: dict[str, Any]) -> dict[str, Any]:
    pps_ratio, rtt_ratio = ratios(samples, "pps"), ratios(samples, "rtt_ms")
    new_ratio, same_ratio = ratios(samples, "new_flow_rtt_ms"), ratios(samples, "pps_same_cpu")
    configs = {}
    for name, rows in samples.items():
        configs[name] = {"pps": summary([s["pps"] for s in rows]), "rtt_ms": summary([s["rtt_ms"] for s in rows]),
                         "pps_same_cpu": summary([s["pps_same_cpu"] for s in rows]),
                         "pps_same_cpu_vs_none": same_ratio[name],
                         "new_flow_rtt_ms": summary([s["new_flow_rtt_ms"] for s in rows]),
                         "pps_vs_none": pps_ratio[name], "rtt_vs_none": rtt_ratio[name],
                         "new_flow_rtt_vs_none": new_ratio[name],
                         "load": loads.get(name), "checks": checks.get(name)}
        if name.startswith("gw-"):
            configs[name]["pps_met"] = pps_ratio[name] >= 1 - GOAL_WITHIN
            configs[name]["rtt_met"] = rtt_ratio[name] <= 1 + GOAL_WITHIN
    return {"configs": configs, "samples": samples,
            "goal": f"guestward pps >= {1 - GOAL_WITHIN:.2f} x none and RTT <= {1 + GOAL_WITHIN:.2f} x none"}


def report(res: dict[str, Any]) -> str:
    pps_rows, rtt_rows = [], []
    for name, c in res["configs"].items():
        load = c["load"] or {}
        state = (f"{load['rules']:,} rules" + (f", {load['elements']:,} elements" if "elements" in load else "")
                 if load else "-")
        met = "" if "pps_met" not in c else "/".join("met" if c[k] else "MISSED" for k in ("pps_met", "rtt_met"))
        pps_rows.append([name, state, c["pps"]["median"], c["pps"]["min"], c["pps"]["max"], c["pps_vs_none"],
                         c["pps_same_cpu"]["median"], c["pps_same_cpu_vs_none"], met])
        rtt_rows.append([name, c["rtt_ms"]["median"] * 1e3, c["rtt_ms"]["min"] * 1e3, c["rtt_ms"]["max"] * 1e3,
                         c["rtt_vs_none"], c["new_flow_rtt_ms"]["median"] * 1e3, c["new_flow_rtt_vs_none"]])
    out = [f"UDP 64 B received pkt/s (client CPU 0, server CPU 1; and both on CPU 0); ratios: median over rounds "
           f"of config / none in the same round; goal: {res['goal']}",
           table(["config", "state", "pps median", "min", "max", "/ none", "same-CPU pps", "/ none",
                  "goal pps/RTT"], pps_rows), "",
           "RTT in microseconds (ping -c 200 -i 0.005 average; new flow: median of 50 single pings)",
           table(["config", "RTT median", "min", "max", "/ none", "new-flow RTT", "/ none"], rtt_rows), ""]
    out.append("checks (ping a->b allowed, b->a forbidden; 3 pings each; packets on a's allowing egress rule):")
    for name, c in res["configs"].items():
        out.append(f"  {name}: {c['checks']}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
