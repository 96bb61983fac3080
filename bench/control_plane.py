"""Control-plane benchmarks, in process (time.perf_counter), with the nft parts in real `gwb-cp-*` netns.

1. Full compile: `compile_state` for 10k guests on 100 hosts, 1k policies, 10k rules (goal < 2 s).
2. One guest's change: `Compiler.upsert_guest` / `remove_guest` plus `Enforcer.apply_delta` into a
   netns that holds the full state of the host, with 1k, 10k and 100k guests on that host
   (goal < 20 ms for compile + apply, flat in the number of guests). Three kinds of change: a guest
   starts (new vNIC, joins its app's set), a guest is relabelled to another app (changes identity),
   a guest stops. After the changes, a full `sync` must find nothing to do (the deltas were exact).
3. One nft transaction: `Enforcer.sync` from an empty netns (goal < 1 s at 100k guests), for the
   host holding 1k/10k/100k guests, and for one host of a 100-host fleet of 100k guests.

Usage: .venv/bin/python bench/control_plane.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from common import summary, table, timed, write_result
from netns import add_netns, del_netns, nft, remove_all, sh
from workload import Shape, guest_labels, host_name, make_guest, make_guests, make_hosts, make_policies

from guestward.compile import HostPlan, compile_state
from guestward.compile.compiler import Compiler, HostDelta
from guestward.dataplane import diff_objects, render_plan
from guestward.dataplane.objects import NftObjects
from guestward.dataplane.render import set_name
from guestward.enforce import Enforcer, NftRunner
from guestward.model import Inventory
from guestward.policy import Policy

NS_PREFIX = "gwb-cp-"
GOAL_COMPILE_S = 2.0
GOAL_CHANGE_MS = 20.0
GOAL_SYNC_S = 1.0


@dataclass(frozen=True)
class TimedRunner(NftRunner):
    """An NftRunner that records how long each `nft -j -f -` transaction (process included) took."""

    seconds: list[float] = field(default_factory=list, compare=False)

    def run_json(self, commands: list[dict[str, Any]]) -> None:
        start = time.perf_counter()
        super().run_json(commands)
        self.seconds.append(time.perf_counter() - start)


def bench_full_compile(policies: list[Policy], reps: int) -> dict[str, Any]:
    """`compile_state` from scratch: 10k guests, 100 hosts, the 1k-policy / 10k-rule set."""
    shape = Shape(10_000, hosts=100)
    inventory = Inventory(make_hosts(shape), tuple(make_guests(shape)))
    samples = [timed(lambda: compile_state(inventory, policies))[0] for _ in range(reps)]
    state = compile_state(inventory, policies)
    return {"guests": shape.guests, "hosts": shape.hosts, "policies": len(policies),
            "rules": sum(len(p.rules) for p in policies), "seconds": summary(samples),
            "chains_per_host": summary([len(p.chains) for p in state.hosts.values()]),
            "goal_s": GOAL_COMPILE_S, "met": summary(samples)["median"] < GOAL_COMPILE_S}


def _apply(compiler: Compiler, enforcer: Enforcer, runner: TimedRunner, plan: HostPlan, host: str,
           change: Any) -> dict[str, float]:
    """One change: compile it, apply its delta to the kernel (both timed), then bring `plan` up to date."""
    t0 = time.perf_counter()
    deltas = change(compiler)
    t1 = time.perf_counter()
    delta = deltas.get(host, HostDelta())
    runner.seconds.clear()
    result = enforcer.apply_delta(plan, delta)
    t2 = time.perf_counter()
    delta.apply_to(plan)
    return {"compile_ms": (t1 - t0) * 1e3, "apply_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3,
            "nft_ms": sum(runner.seconds) * 1e3, "commands": result.commands}


def changes(i: int, shape: Shape) -> list[tuple[str, Any]]:
    """The i-th round of changes: start a new guest, relabel an existing one, stop the new one."""
    new = make_guest(shape.guests + i, shape)
    k = 7 + 13 * i
    relabelled = make_guest(k, shape, labels=guest_labels((k + 500) % shape.apps))
    return [("start", lambda c: c.upsert_guest(new)),
            ("relabel", lambda c: c.upsert_guest(relabelled)),
            ("stop", lambda c: c.remove_guest(new.uuid))]


def sync_from_empty(enforcer: Enforcer, runner: TimedRunner, plan: HostPlan, reps: int) -> dict[str, Any]:
    """`Enforcer.sync(plan)` into our empty tables, `reps` times (tables removed in between, untimed)."""
    total, nft_s, render_s, diff_s, commands = [], [], [], [], 0
    for _ in range(reps):
        enforcer.remove()
        runner.seconds.clear()
        seconds, result = timed(lambda: enforcer.sync(plan))
        total.append(seconds)
        nft_s.append(sum(runner.seconds))
        commands = result.commands
        r, objects = timed(lambda: render_plan(plan))
        render_s.append(r)
        diff_s.append(timed(lambda objects=objects: diff_objects(NftObjects(), objects))[0])
    objects = render_plan(plan)
    return {"seconds": summary(total), "nft_seconds": summary(nft_s), "render_seconds": summary(render_s),
            "diff_seconds": summary(diff_s), "commands": commands, "nft_text_seconds": text_load_s(runner.netns),
            "rules": sum(len(c.rules) for c in objects.chains.values()),
            "elements": sum(len(e) for e in objects.elements.values()),
            "payload_mb": len(json.dumps(diff_objects(NftObjects(), objects))) / 1e6}


def text_load_s(ns: str | None) -> float:
    """For comparison, once: the same tables loaded from nft's text format (`nft -f`) instead of JSON."""
    assert ns is not None
    text = nft(ns, "list", "table", "bridge", "guestward") + nft(ns, "list", "table", "inet", "guestward")
    nft(ns, "delete", "table", "bridge", "guestward")
    nft(ns, "delete", "table", "inet", "guestward")
    seconds, _ = timed(lambda: nft(ns, "-f", "-", input=text))
    return seconds


def nft_floor(ns: str, plan: HostPlan, reps: int = 5) -> dict[str, float]:
    """What one `nft -j -f` costs in this netns before any work of ours, in ms (check-only `nft -c`
    transactions, nothing committed): a no-op (process start and nft's cache of our tables), one
    element added to a selector set, and one element added to the eg4 verdict map (whose goto makes
    the kernel validate every chain reachable from the table's base chains)."""
    digest = next(d for d in plan.sets)
    chain = next(name for name in sorted(plan.chains) if name.startswith("eg-") and name.count("-") == 1)
    elem = {"family": "inet", "table": "guestward"}
    commands = {
        "noop": [{"add": {"table": {"family": "inet", "name": "guestward"}}}],
        "set_element": [{"add": {"element": {**elem, "name": set_name(digest, 4), "elem": ["10.99.0.1"]}}}],
        "vmap_element": [{"add": {"element": {**elem, "name": "eg4",
                                              "elem": [["10.99.0.1", {"goto": {"target": chain}}]]}}}],
    }
    argv = ("nsenter", f"--net=/run/netns/{ns}", "nft", "-c", "-j", "-f", "-")

    def check_ms(payload: str) -> float:
        return timed(lambda: sh(*argv, input=payload))[0] * 1e3

    out = {}
    for kind, cmds in commands.items():
        payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]})
        out[kind] = summary([check_ms(payload) for _ in range(reps)])["median"]
    return out


def bench_changes(n: int, policies: list[Policy], reps: int, sync_reps: int) -> dict[str, Any]:
    """Per-change cost with `n` guests on the host whose netns holds the full state."""
    shape = Shape(n, hosts=1)
    host = host_name(0)
    compiler = Compiler(make_hosts(shape), policies)
    build_s, _ = timed(lambda: compiler.upsert_guests(make_guests(shape)))
    plan = compiler.state().hosts[host]
    ns = f"{NS_PREFIX}{n}"
    add_netns(ns)
    try:
        runner = TimedRunner(ns)
        enforcer = Enforcer(runner)
        sync = sync_from_empty(enforcer, runner, plan, sync_reps)
        samples: dict[str, list[dict[str, float]]] = {}
        for i in range(reps):
            for kind, change in changes(i, shape):
                samples.setdefault(kind, []).append(_apply(compiler, enforcer, runner, plan, host, change))
        floor = nft_floor(ns, plan)
        final = compiler.state().hosts[host]
        leftover = enforcer.sync(final).commands
        exact = plan == final and leftover == 0
    finally:
        del_netns(ns)
    per_kind = {kind: {m: summary([s[m] for s in rows]) for m in rows[0]} for kind, rows in samples.items()}
    worst = max(k["total_ms"]["median"] for k in per_kind.values())
    return {"guests": n, "build_s": build_s, "vnics": len(plan.vnics), "chains": len(plan.chains),
            "sync_from_empty": sync, "changes": per_kind, "deltas_exact": exact, "nft_floor_ms": floor,
            "goal_ms": GOAL_CHANGE_MS, "met": worst < GOAL_CHANGE_MS and exact}


def bench_fleet_host_sync(policies: list[Policy], guests: int, reps: int) -> dict[str, Any]:
    """Sync from empty for one host (hv000) of a 100-host fleet of `guests` guests (only hv000 is compiled:
    its plan does not depend on the other hosts')."""
    shape = Shape(guests, hosts=100)
    host = host_name(0)
    hosts = tuple(h for h in make_hosts(shape) if h.name == host)
    plan = compile_state(Inventory(hosts, tuple(make_guests(shape))), policies).hosts[host]
    ns = f"{NS_PREFIX}fleet"
    add_netns(ns)
    try:
        runner = TimedRunner(ns)
        out = sync_from_empty(Enforcer(runner), runner, plan, reps)
    finally:
        del_netns(ns)
    return {"guests": shape.guests, "hosts": shape.hosts, "vnics": len(plan.vnics), "chains": len(plan.chains), **out}


def report(res: dict[str, Any]) -> str:
    fc = res["full_compile"]
    out = [f"Full compile ({fc['guests']:,} guests, {fc['hosts']} hosts, {fc['policies']:,} policies, "
           f"{fc['rules']:,} rules): median {fc['seconds']['median']:.3f} s "
           f"(min {fc['seconds']['min']:.3f}, max {fc['seconds']['max']:.3f}); goal < {GOAL_COMPILE_S} s: "
           f"{'met' if fc['met'] else 'MISSED'}; policy parse (not part of the goal) {res['parse_s']:.2f} s", ""]
    rows = []
    for c in res["changes"]:
        for kind, m in c["changes"].items():
            rows.append([f"{c['guests']:,}", kind, m["compile_ms"]["median"], m["apply_ms"]["median"],
                         m["nft_ms"]["median"], m["total_ms"]["median"], m["total_ms"].get("p90", m["total_ms"]["max"]),
                         m["commands"]["median"]])
    out.append("One guest's change (ms, medians; goal total < 20 ms)")
    out.append(table(["guests", "change", "compile", "apply", "of which nft", "total", "total p90", "nft cmds"], rows))
    out.append("deltas exact (full sync after the changes found nothing to do): "
               + ", ".join(f"{c['guests']:,}: {c['deltas_exact']}" for c in res["changes"]))
    out.append("")
    out.append("Where a change's nft time goes (check-only one-command nft -c transactions, ms, medians)")
    out.append(table(["guests", "no-op", "+1 set element", "+1 verdict-map element"],
                     [[f"{c['guests']:,}", c["nft_floor_ms"]["noop"], c["nft_floor_ms"]["set_element"],
                       c["nft_floor_ms"]["vmap_element"]] for c in res["changes"]]))
    out.append("")
    rows = []
    states = [(f"{c['guests']:,} guests, all on the host", c["sync_from_empty"]) for c in res["changes"]]
    states += [(f"1 host of 100, fleet of {f['guests']:,} ({f['vnics']:,} local)", f)
               for f in res.get("fleet_host_sync", [])]
    for label, s in states:
        rows.append([label, s["rules"], s["elements"], s["payload_mb"], s["render_seconds"]["median"],
                     s["diff_seconds"]["median"], s["nft_seconds"]["median"], s["seconds"]["median"],
                     s["nft_text_seconds"]])
    out.append("Enforcer.sync from empty (one nft transaction; seconds, medians; goal < 1 s at 100k guests); "
               "last column: the same tables loaded once from nft text instead")
    out.append(table(["state", "nft rules", "elements", "JSON MB", "render", "diff", "nft -j -f", "sync total",
                      "nft -f text"], rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no 100k sizes (a smoke run)")
    args = ap.parse_args(argv)
    remove_all(NS_PREFIX)
    parse_s, policies = timed(lambda: make_policies(Shape(0)))
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    res: dict[str, Any] = {"parse_s": parse_s, "goals": {"full_compile_s": GOAL_COMPILE_S,
                                                         "change_ms": GOAL_CHANGE_MS, "sync_100k_s": GOAL_SYNC_S}}
    try:
        res["full_compile"] = bench_full_compile(policies, 2 if args.quick else 5)
        res["changes"] = [bench_changes(n, policies, 3 if args.quick else 15, 1 if args.quick or n < 100_000 else 3)
                          for n in sizes]
        if not args.quick:
            res["fleet_host_sync"] = [bench_fleet_host_sync(policies, n, 3) for n in (10_000, 100_000)]
            sync_100k = res["changes"][-1]["sync_from_empty"]["seconds"]["median"]
            res["sync_100k_met"] = sync_100k < GOAL_SYNC_S
    finally:
        remove_all(NS_PREFIX)
    print(report(res))
    print(f"\nwritten: {write_result('control_plane', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
