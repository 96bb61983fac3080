"""Run every benchmark, one after the other (each cleans up after itself), and print their tables.

Needs root (network namespaces, nft, libvirtd). About 10-15 minutes on a 2-core machine.
Results: bench/results/{control_plane,data_plane,drop_log,nwfilter,audit}.json, summarised in BENCHMARKS.md.

Usage: .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, machine

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("control_plane", "data_plane", "drop_log", "nwfilter", "audit")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer sizes and repetitions")
    args = ap.parse_args(argv)
    print(json.dumps(machine(), indent=2))
    walls: dict[str, float] = {}
    failed = []
    for name in BENCHMARKS:
        extra = ["--quick"] if args.quick and name != "nwfilter" else []
        if args.quick and name == "nwfilter":
            extra = ["--reps", "1", "--gw-reps", "2"]
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], check=False).returncode
        walls[name] = time.perf_counter() - start
        if rc != 0:
            failed.append(name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "run_all.json").write_text(json.dumps({"machine": machine(), "wall_s": walls, "failed": failed},
                                                     indent=2) + "\n")
    total = sum(walls.values())
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()) + f"; total {total:.0f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
