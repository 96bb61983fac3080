"""Lifecycle: time from a change to its enforcement, on the real lab (2 hosts, 6 TCG guests).

For a guest start, a label change at run time (setMetadata straight through libvirt), a hot-plugged
vNIC and a quarantine, it measures the wall time from the API call to the moment the host's nftables
hold the new state (a poller reads the table every few ms), and counts the rules of *other* guests'
chains that the change touched (goal: 0). For live migration, the forbidden packets that arrived
(counted by nft at the receiver; goal: 0) and how long the allowed flows were out.

Against: Proxmox's firewall re-reads its config every 10 s (PEERS.md), so a change waits 5 s on
average and up to 10 s. Needs root; brings up the lab and takes it down (about 4 minutes).

Usage: .venv/bin/python bench/lifecycle.py [--reps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import summary, table, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.lab.lifecycle_helpers import ExternalCounter, Watch, longest_outage  # noqa: E402

from guestward.enforce import NftRunner  # noqa: E402
from guestward.hypervisor import domains  # noqa: E402
from guestward.lab.lab import Lab  # noqa: E402

GW = [sys.executable, "-m", "guestward"]
PROXMOX_CYCLE_S = 10.0


def nft_json(host: str) -> dict[str, list[str]]:
    """Our tables as {chain: [rule expressions]} plus sets/maps, for comparison."""
    out: dict[str, list[str]] = {}
    for family in ("bridge", "inet"):
        r = subprocess.run(["ip", "netns", "exec", f"gwl-{host}", "nft", "-j", "list", "table", family, "guestward"],
                           capture_output=True, text=True, check=False)
        if r.returncode:
            continue
        for item in json.loads(r.stdout)["nftables"]:
            if "rule" in item:
                rule = item["rule"]
                out.setdefault(f"{family}:{rule['chain']}", []).append(json.dumps(rule["expr"], sort_keys=True))
            for kind in ("set", "map"):
                if kind in item:
                    elements = json.dumps(item[kind].get("elem", []), sort_keys=True)
                    out[f"{family}:{kind}:{item[kind]['name']}"] = [elements]
    return out


def text(host: str) -> str:
    return NftRunner(f"gwl-{host}").text()


def until_changed(host: str, before: str, act: callable, timeout: float = 20.0) -> float:  # type: ignore[valid-type]
    """Seconds from calling `act()` to the first read of the table that differs from `before`."""
    seen = threading.Event()
    stamp: list[float] = []

    def poll() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text(host) != before:
                stamp.append(time.perf_counter())
                seen.set()
                return
            time.sleep(0.003)

    t = threading.Thread(target=poll)
    start = time.perf_counter()
    t.start()
    act()
    t.join()
    if not stamp:
        raise RuntimeError(f"{host}: nothing changed within {timeout} s")
    return stamp[0] - start


def others_touched(before: dict[str, list[str]], after: dict[str, list[str]], own_chains: set[str]) -> int:
    """Rules in chains of other identities that differ between two reads (sets and maps excluded:
    a guest's addresses joining the sets other rules name is the point, not a rule change)."""
    n = 0
    for chain in before.keys() | after.keys():
        if ":set:" in chain or ":map:" in chain or chain in own_chains:
            continue
        b, a = before.get(chain, []), after.get(chain, [])
        if not chain.startswith(("inet:eg-", "inet:in-")):  # only identity chains belong to guests
            continue
        n += len(set(b) ^ set(a))
    return n


def own_identity_chains(before: dict[str, list[str]], after: dict[str, list[str]]) -> set[str]:
    """Chains that appeared or vanished whole (the changed guest's own identity)."""
    return set(before.keys() ^ after.keys())


def measure(lab: Lab, reps: int) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    hv1, hv2 = lab.uri("hv1"), lab.uri("hv2")

    def run(name: str, host: str, act: callable, undo: callable) -> None:  # type: ignore[valid-type]
        times, touched = [], []
        for _ in range(reps):
            before_text, before = text(host), nft_json(host)
            times.append(until_changed(host, before_text, act))
            time.sleep(0.5)  # let the rest of the change (agent, other host) land
            after = nft_json(host)
            touched.append(others_touched(before, after, own_identity_chains(before, after)))
            undo()
            time.sleep(0.8)
        results[name] = {"seconds": summary(times), "other_rules_touched": max(touched), "samples": times}
        print(f"{name}: median {summary(times)['median'] * 1000:.0f} ms, max {max(times) * 1000:.0f} ms, "
              f"other guests' rules touched: {max(touched)}", flush=True)

    # guest start: web2 on hv2, from domain create() to its vNIC bound (the hook, before its CPUs run)
    domains.destroy(hv2, "web2")
    time.sleep(1)
    run("guest start (hook)", "hv2", lambda: domains.start(hv2, "web2"), lambda: domains.destroy(hv2, "web2"))
    domains.start(hv2, "web2")
    lab.wait_guests(["web2"])
    # label change at run time, setMetadata by another tool: the agent follows the event
    run("label change (agent)", "hv2", lambda: domains.set_label(hv2, "web2", "env", "prod"),
        lambda: domains.set_label(hv2, "web2", "env", "dev"))
    # hot-plug of a vNIC (no hook exists for it: the agent follows DEVICE_ADDED)
    nic = ("<interface type='bridge'><source bridge='gwbr0'/><mac address='52:54:00:77:00:42'/>"
           "<model type='virtio'/><target dev='gwt-hot'/></interface>")

    def unplug() -> None:
        domains.detach_device(hv1, "mon1", nic)
        deadline = time.monotonic() + 15
        while "gwt-hot" in text("hv1") and time.monotonic() < deadline:
            time.sleep(0.1)

    run("hot-plug vNIC (agent)", "hv1", lambda: domains.attach_device(hv1, "mon1", nic), unplug)
    # quarantine by the CLI: label, sync on every host, conntrack entries deleted
    run("quarantine (CLI)", "hv1",
        lambda: subprocess.run([*GW, "quarantine", "web1"], check=True, capture_output=True),
        lambda: subprocess.run([*GW, "release", "web1"], check=True, capture_output=True))
    return results


def migrations(lab: Lab, count: int) -> dict[str, object]:
    counter = ExternalCounter("10.77.0.11", 80)
    try:
        forbidden = Watch.start(lab, "web1", "bx", "tcp", "10.77.0.250", 80)
        allowed_in = Watch.start(lab, "lb1", "bi", "tcp", "10.77.0.11", 443)
        allowed_out = Watch.start(lab, "web1", "bo", "tcp", "10.77.0.13", 5432)
        time.sleep(2)
        stats = []
        for i in range(count):
            dest = "hv2" if i % 2 == 0 else "hv1"
            stats.append(lab.migrate("web1", dest))
            time.sleep(2)
        leaked = sum(ok for _, ok in forbidden.stop())
        outages = {"lb1->web1 tcp/443": longest_outage(allowed_in.stop()),
                   "web1->db1 tcp/5432": longest_outage(allowed_out.stop())}
        return {"migrations": count, "downtime_ms": [s.get("downtime") for s in stats],
                "job_ms": [s.get("time_elapsed") for s in stats], "forbidden_probes_passed": leaked,
                "forbidden_packets_arrived": counter.packets(), "longest_allowed_outage_ms": outages}
    finally:
        counter.remove()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--migrations", type=int, default=6)
    args = ap.parse_args(argv)
    lab = Lab()
    subprocess.run([*GW, "lab", "down"], check=False, capture_output=True)
    up = subprocess.run([*GW, "lab", "up", "-f", str(ROOT / "examples/lab/scenario.yaml"),
                         "--policy", str(ROOT / "examples/lab/policy.yaml")], capture_output=True, text=True)
    if up.returncode:
        print(up.stderr, file=sys.stderr)
        return 1
    try:
        changes = measure(lab, args.reps)
        mig = migrations(lab, args.migrations)
    finally:
        subprocess.run([*GW, "lab", "down"], check=False, capture_output=True)
    rows = [(name, r["seconds"]["median"] * 1000, r["seconds"]["max"] * 1000, r["seconds"]["n"],  # type: ignore[index]
             r["other_rules_touched"], PROXMOX_CYCLE_S / 2 / r["seconds"]["median"])  # type: ignore[index]
            for name, r in changes.items()]
    print(table(["change", "median ms", "max ms", "n", "other guests' rules touched",
                 "x faster than Proxmox's 5 s mean wait"], rows))
    print(json.dumps(mig, indent=1))
    write_result("lifecycle", {"changes": changes, "migration": mig, "proxmox_cycle_s": PROXMOX_CYCLE_S})
    return 0


if __name__ == "__main__":
    sys.exit(main())
