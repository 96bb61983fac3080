"""Drop-log benchmark: what logging every drop costs the data path, what the reader keeps up with, and
what reading the counters back costs.

Topology: bench/netns.py's testbed `gwb-dl` (a host netns with bridge br0 and br_netfilter on, two
guest netns on veths). Guest a (10.0.0.1) floods guest b (10.0.0.2) on udp/9999, which the policy
denies (an explicit deny rule in a's egress chain), with a C sender (sendmmsg, 18-byte payloads =
64-byte frames) pinned to CPU 0: the veth's receive path, and so the whole bridge + nft path, runs on
the sender's CPU, which is the bottleneck. pkt/s is the drop rule's counter delta over the run.

1. Flood pkt/s, variants interleaved round by round (one run, side by side):
   `counted` (drop_log.group null: counted, not logged), `logged` (20/s per guest, nobody bound to the
   group), `logged+reader` (20/s, the agent's FlowLog reading and storing), `every+reader` (a rate of
   10M/s: every drop is logged to the reader, the cost without the per-guest limit).
2. Reader events/s loss-free: the per-guest rate set to R (1k .. 100k/s) with the flood over it, the
   reader (`python -m guestward.enforce.nflog_reader`, JSON lines) on CPU 1 and its lines counted;
   delivered = lines, lost = the reader's sequence gaps, logged = the log rule's counter.
3. Counter read-back of a host whose guest has 10k allow rules, and 10k deny rules (each with its log
   rule): `enforce.counters.read_tables` (the nf_tables netlink dump, what stats and metrics use)
   against `read_tables_json` (`nft -j list table` x 2 + json.loads), and `by_rule` on top.

Usage: .venv/bin/python bench/drop_log.py [--rounds N] [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import median, summary, table, timed, write_result
from netns import in_ns, make_testbed, remove_testbed, sh

from guestward.compile import compile_state
from guestward.dataplane import Settings
from guestward.dataplane.counters import by_rule
from guestward.enforce import Enforcer, NftRunner
from guestward.enforce.counters import read_tables, read_tables_json
from guestward.model import Guest, Host, Interface, Inventory, Labels
from guestward.policy import parse_policies
from guestward.reconcile.flowlog import FlowLog
from guestward.store.sqlite import Store

HOST = Host("hv1", "test:///default", ())
A = ("gwb-dla", "52:54:00:dd:00:01", "10.0.0.1")
B = ("gwb-dlb", "52:54:00:dd:00:02", "10.0.0.2")
RULE = "application/shop/no-flood"
POLICY = """
apiVersion: guestward.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  tier: application
  rules:
    - {name: no-flood, action: deny, from: {guests: {zone: a}}, to: {guests: {zone: b}}, ports: [udp/9999]}
"""
FLOOD_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    if (connect(s, (struct sockaddr *)&to, sizeof to)) { perror("connect"); return 1; }
    double seconds = atof(argv[3]);
    char payload[18]; memset(payload, 'x', sizeof payload);
    struct iovec iov = {payload, sizeof payload};
    struct mmsghdr msgs[64]; memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < 64; i++) { msgs[i].msg_hdr.msg_iov = &iov; msgs[i].msg_hdr.msg_iovlen = 1; }
    struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
    long sent = 0;
    for (;;) {
        int n = sendmmsg(s, msgs, 64, 0);
        if (n > 0) sent += n;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds) break;
    }
    printf("%ld\n", sent);
    return 0;
}
"""


def guest(name: str, zone: str, spec: tuple[str, str, str]) -> Guest:
    return Guest(name, f"uuid-{name}", HOST.name, Labels({"zone": zone}), (Interface.of(spec[1], spec[0], [spec[2]]),))


def plan(policy: str, guests: list[Guest]) -> Any:
    return compile_state(Inventory((HOST,), tuple(guests)), parse_policies([("p.yaml", policy)])).hosts[HOST.name]


def rule_counts(runner: NftRunner, label: str) -> tuple[int, int]:
    rows = [r for r in by_rule(read_tables(runner).counters) if r.label == label and r.verdict == "drop"]
    return sum(r.packets for r in rows), sum(r.logged for r in rows)


def flood(tb: Any, binary: Path, seconds: float) -> int:
    out = sh("taskset", "-c", "0", *in_ns(tb.a.ns, str(binary), B[2], "9999", str(seconds)), timeout=seconds + 60)
    return int(out.strip())


def flood_pps(tb: Any, binary: Path, runner: NftRunner, seconds: float) -> dict[str, float]:
    before, logged_before = rule_counts(runner, RULE)
    start = time.perf_counter()
    sent = flood(tb, binary, seconds)
    elapsed = time.perf_counter() - start
    after, logged_after = rule_counts(runner, RULE)
    return {"pps": (after - before) / elapsed, "sent_pps": sent / elapsed, "logged": logged_after - logged_before}


def reader_run(tb: Any, binary: Path, runner: NftRunner, seconds: float) -> dict[str, float]:
    """Flood while the reader runs on CPU 1; count its lines and their `lost`."""
    argv = ["taskset", "-c", "1", *runner.command(sys.executable, "-m", "guestward.enforce.nflog_reader",
                                                  "--group", "7")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1 << 20)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()).get("ready"), "reader did not bind"
    counts = {"lines": 0, "lost": 0}

    def consume() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            counts["lines"] += 1
            counts["lost"] += json.loads(text).get("lost", 0)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    _, logged_before = rule_counts(runner, RULE)
    flood(tb, binary, seconds)
    time.sleep(1.5)  # the kernel's batch timeout and the pipe drain
    _, logged_after = rule_counts(runner, RULE)
    proc.terminate()
    proc.wait(10)
    t.join(5)
    logged = logged_after - logged_before
    return {"logged": logged, "delivered": counts["lines"], "lost_gaps": counts["lost"],
            "missing": logged - counts["lines"], "delivered_per_s": counts["lines"] / seconds}


def readback(rules: int, action: str) -> dict[str, Any]:
    names = {"allow": "allow", "deny": "deny"}
    body = "\n".join(
        f"    - {{name: r{i}, action: {names[action]}, from: {{cidr: [192.{i // 250 % 250}.{i % 250}.1/32]}}, "
        f"to: {{guests: {{zone: b}}}}, ports: [tcp/{1000 + i % 50000}]}}" for i in range(rules))
    policy = ("apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: big}\nspec:\n  tier: application\n"
              f"  rules:\n{body}\n")
    ns = f"gwb-dlr-{action}"
    sh("ip", "netns", "add", ns)
    try:
        runner = NftRunner(ns)
        load, _ = timed(lambda: Enforcer(runner, Settings()).sync(plan(policy, [guest("b", "b", B)])))
        times: dict[str, list[float]] = {"netlink": [], "json": []}
        for _ in range(5):
            for how, fn in (("netlink", read_tables), ("json", read_tables_json)):
                seconds, tables = timed(lambda fn=fn: fn(runner))  # type: ignore[misc]
                times[how].append(seconds * 1000)
        agg, _ = timed(lambda: by_rule(tables.counters))
        return {"policy_rules": rules, "action": action, "nft_rules": tables.rules, "load_ms": load * 1000,
                "read_ms": summary(times["netlink"]), "read_json_ms": summary(times["json"]),
                "aggregate_ms": agg * 1000}
    finally:
        sh("ip", "netns", "del", ns, check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    work = Path(tempfile.mkdtemp(prefix="gwb-dl-", dir="/var/tmp"))
    binary = work / "udpflood"
    (work / "udpflood.c").write_text(FLOOD_C)
    sh("gcc", "-O2", "-o", str(binary), str(work / "udpflood.c"))
    try:
        run(args, work, binary)
    finally:
        sh("rm", "-rf", str(work))  # the scratch directory goes whatever happened


def run(args: argparse.Namespace, work: Path, binary: Path) -> None:
    tb = make_testbed("dl", A, B)
    runner = NftRunner(tb.host)
    guests = [guest("a", "a", A), guest("b", "b", B)]
    p = plan(POLICY, guests)
    store = Store(work / "guestward.db")
    store.put_guests(guests, 1)
    results: dict[str, Any] = {"seconds": args.seconds, "rounds": args.rounds}
    try:
        variants = {"counted": Settings(log_group=None), "logged": Settings(), "logged+reader": Settings(),
                    "every+reader": Settings(log_rate=10_000_000, log_burst=10_000_000)}
        samples: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        names = list(variants)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # order rotated each round
                settings = variants[name]
                Enforcer(runner, settings).sync(p)
                fl = None
                if name.endswith("+reader"):
                    ready = threading.Event()
                    fl = FlowLog({"hv1": runner}, store.path, 7, keep=100_000, on_ready=lambda _, ev=ready: ev.set())
                    fl.start()
                    assert ready.wait(10)
                try:
                    samples[name].append(flood_pps(tb, binary, runner, args.seconds))
                finally:
                    if fl is not None:
                        fl.stop()
        rows = []
        results["flood"] = {}
        for name, ss in samples.items():
            pps = [s["pps"] for s in ss]
            # the ratio to `counted` in the same round, then the median over rounds
            ratio = median([s["pps"] / c["pps"] for s, c in zip(ss, samples["counted"], strict=True)])
            results["flood"][name] = {"pps": summary(pps), "logged_per_s": median([s["logged"] for s in ss])
                                      / args.seconds, "vs_counted": ratio}
            rows.append((name, median(pps), min(pps), max(pps), 1e9 / median(pps), ratio,
                         median([s["logged"] for s in ss]) / args.seconds))
        print(table(("variant", "drop pkt/s (median)", "min", "max", "ns/pkt", "vs counted", "logged/s"), rows))

        results["reader"] = []
        for rate in ([1000, 10_000] if args.quick else [1000, 10_000, 20_000, 50_000, 100_000]):
            Enforcer(runner, Settings(log_rate=rate, log_burst=rate)).sync(p)
            r = reader_run(tb, binary, runner, args.seconds)
            r["rate"] = rate
            results["reader"].append(r)
        print(table(("rate /s", "logged", "delivered", "lost (gaps)", "missing", "delivered/s"),
                    [(r["rate"], r["logged"], r["delivered"], r["lost_gaps"], r["missing"], r["delivered_per_s"])
                     for r in results["reader"]]))
    finally:
        store.close()
        remove_testbed(tb)
    results["readback"] = [readback(1000 if args.quick else 10_000, a) for a in ("allow", "deny")]
    print(table(("policy rules", "action", "nft rules", "load ms", "netlink read ms (median)", "min", "max",
                 "nft -j read ms (median)", "by_rule ms"),
                [(r["policy_rules"], r["action"], r["nft_rules"], r["load_ms"], r["read_ms"]["median"],
                  r["read_ms"]["min"], r["read_ms"]["max"], r["read_json_ms"]["median"], r["aggregate_ms"])
                 for r in results["readback"]]))
    print(write_result("drop_log", results))


if __name__ == "__main__":
    main()
