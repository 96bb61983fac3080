"""Drift detection and exposure: the old repair path against the fast one (reconcile/drift.py).

A host netns `gwd-<pid>-drift` holds guestward's tables for a synthetic fleet (workload.py) on one
host. A watcher follows `nft monitor` there, as the agent does, and reacts to every transaction on our
tables that it did not commit:
- old: the agent's previous repair, `Controller.enforce_snapshot` (lock, store read, compile of the
  snapshot, sysctls, read-back of both tables, diff, one transaction);
- fast: `DriftGuard.on_change` (the cached atomic replacement of both tables), then the same full
  repair as the follow-up verification, as the agent does (not counted in the exposure).
An attacker process (plain `nft`) changes the tables N times per path, rotating through flush table
bridge / flush table inet / delete table inet / flush ruleset / delete one rule, 0.6 s apart; paths
alternate attack by attack.

Per attack, from the attacker's start (`t0`, taken before it is spawned; the commit lies between t0
and its exit):
- detection: the transaction's generation line parsed by the watcher;
- exposure: the repair's transaction returned (so committed). Its part after the first notification
  line is also reported ("after notice": what the repairer itself costs).

Usage: .venv/bin/python bench/drift.py [--attacks N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import summary, table, write_result
from workload import Shape, make_guests, make_hosts, policy_sources

from guestward.dataplane.monitor import Change, MonitorParser
from guestward.enforce import NftRunner
from guestward.enforce.enforcer import committed_by_us
from guestward.reconcile.controller import Controller
from guestward.reconcile.drift import DriftGuard
from guestward.store.config import Config, HostConfig
from guestward.store.sqlite import StoredPolicy

ATTACKS = [("flush", "table", "bridge", "guestward"), ("flush", "table", "inet", "guestward"),
           ("delete", "table", "inet", "guestward"), ("flush", "ruleset"), None]


def delete_rule(runner: NftRunner) -> tuple[str, ...]:
    text = runner.run("nft", "-a", "list", "table", "inet", "guestward").stdout
    chain = ""
    for line in text.splitlines():
        if m := re.match(r"\s*chain (\S+) \{", line):
            chain = m.group(1)
        elif chain.startswith("eg-") and "# handle " in line:
            return ("delete", "rule", "inet", "guestward", chain, "handle", line.rsplit("# handle ", 1)[1].strip())
    raise RuntimeError("no egress rule to delete")


class Watcher:
    """`nft monitor` in the netns; each foreign change is queued (the controller's store is used by
    the main thread only: sqlite connections stay in their thread)."""

    def __init__(self, runner: NftRunner) -> None:
        self.proc = subprocess.Popen(runner.command("nft", "monitor"), stdout=subprocess.PIPE, text=True)
        self.events: queue.Queue[Change] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        parser = MonitorParser()
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            change = parser.feed(line, time.monotonic())
            if change is not None and not committed_by_us(change.pid):
                self.events.put(change)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run(shape: Shape, attacks: int) -> dict[str, Any]:
    ns = f"gwd-{os.getpid()}-drift"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    state = Path(tempfile.mkdtemp(prefix="gwd-drift-"))
    try:
        host = make_hosts(shape)[0]
        config = Config(state_dir=state, hosts=[HostConfig(name=host.name, uri=host.uri, netns=ns)])
        ctl = Controller(config)
        ctl.store.put_policies([StoredPolicy(n.removesuffix(".yaml"), n, 1, t) for n, t in policy_sources(shape)])
        ctl.store.put_guests(make_guests(shape), ctl.store.tick())
        ctl.enforce_snapshot(host.name)
        runner = NftRunner(ns)
        rules = runner.run("nft", "list", "ruleset").stdout.count("comment ")
        guard = DriftGuard(runner, state, lambda: ctl.enforced[host.name][1])
        guard.arm(*ctl.enforced[host.name])
        mode = {"path": "old"}

        def react(change: Change) -> float:
            """The repair; returns when it was committed (monotonic)."""
            outcome = guard.on_change(change) if mode["path"] == "fast" else None
            ctl.enforce_snapshot(host.name)  # the old path's repair, the fast path's follow-up
            done = time.monotonic()
            guard.arm(*ctl.enforced[host.name])
            if outcome is not None and not outcome.repaired:
                raise RuntimeError(f"fast path declined: {outcome.reason}")
            return outcome.restored_at if outcome is not None and outcome.restored_at else done

        watcher = Watcher(runner)
        time.sleep(0.5)
        samples: dict[str, dict[str, list[float]]] = {p: {"detect": [], "exposure": [], "after_notice": []}
                                                      for p in ("old", "fast")}
        for i in range(2 * attacks):
            mode["path"] = ("old", "fast")[i % 2]
            kind = ATTACKS[(i // 2) % len(ATTACKS)] or delete_rule(runner)
            t0 = time.monotonic()
            attacker = subprocess.Popen(runner.command("nft", *kind), stderr=subprocess.PIPE, text=True)
            change = watcher.events.get(timeout=30)  # usually before the attacker has exited
            restored = react(change)
            assert attacker.wait() == 0, attacker.communicate()[1]
            s = samples[mode["path"]]
            s["detect"].append((change.committed_seen - t0) * 1000)
            s["exposure"].append((restored - t0) * 1000)
            s["after_notice"].append((restored - change.first_seen) * 1000)
            time.sleep(0.6)
            while not watcher.events.empty():  # e.g. the repair's follow-up of an old-path round: none expected
                watcher.events.get()
        watcher.close()
        return {"guests": shape.guests, "apps": shape.apps, "rules": rules,
                "paths": {p: {k: summary(v) for k, v in s.items()} | {"samples": s} for p, s in samples.items()}}
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", str(state)], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", type=int, default=20, help="attacks per path and size")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    shapes = [Shape(guests=20, apps=10)] if args.quick else [Shape(guests=20, apps=10), Shape(guests=500, apps=100)]
    results = [run(s, 5 if args.quick else args.attacks) for s in shapes]
    rows = []
    for r in results:
        for p in ("old", "fast"):
            d = r["paths"][p]
            rows.append((f"{r['guests']} guests / {r['apps']} identities ({r['rules']} rules)", p,
                         f"{d['detect']['median']:.1f} / {d['detect']['max']:.1f}",
                         f"{d['exposure']['median']:.1f} / {d['exposure']['max']:.1f}",
                         f"{d['after_notice']['median']:.1f} / {d['after_notice']['max']:.1f}", d["exposure"]["n"]))
    print(table(("tables", "path", "detection ms (median / max)", "exposure ms (median / max)",
                 "repair after notice ms", "attacks"), rows))
    write_result("drift", {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
