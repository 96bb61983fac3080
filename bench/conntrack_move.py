"""Moving a guest's conntrack entries with it: entries moved per second, and the downtime it adds.

Part 1 (namespaces, always): a source table holding N entries of one guest address plus 50,000
unrelated ones, a destination holding 5,000 unrelated ones and a transit copy of a tenth of the
guest's (so the replace path runs). `handover` (read, replace, read back) against the plain
`conntrack -L -s IP -o save | conntrack -R` (which loses the ct mark and does not replace transit
entries), side by side, at N = 1, 100, 10,000. Then `forget` on the source.

Part 2 (`--lab`, needs `guestward lab up`): N extra entries for web1's address are put in its host's
table, and web1 live-migrates; the migration's downtime (libvirt's switchover plus what guestward
adds while the guest waits paused on the destination) at N = 0, 1, 100, 10,000.

Usage: .venv/bin/python bench/conntrack_move.py [--reps N] [--lab]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine, summary, table, timed, write_result
from netns import in_ns, sh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guestward.enforce import NftRunner  # noqa: E402
from guestward.enforce.conntrack import Conntrack, forget, handover  # noqa: E402

GUEST = "10.60.0.1"
SIZES = (1, 100, 10_000)


def _lines(n: int, guest: str, net: str, mark: int = 0) -> list[str]:
    """n established TCP entries between `guest` and peers in 10.<net>.x.y."""
    m = f" -m {mark}" if mark else ""
    assert n <= 62_500, "one peer address per entry"
    return [f"-A -t 3000 -u SEEN_REPLY,ASSURED{m} -s {guest} -d 10.{net}.{i // 250}.{i % 250 + 1} -p tcp "
            "--sport 40000 --dport 80 --state ESTABLISHED" for i in range(n)]


def load(ns: str, lines: list[str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".load") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        sh(*in_ns(ns, "conntrack", "-R", f.name))


def flush(ns: str) -> None:
    sh(*in_ns(ns, "conntrack", "-F"), check=False)


def part1(reps: int) -> list[dict[str, object]]:
    src, dst = "gwb-ct-src", "gwb-ct-dst"
    for ns in (src, dst):
        sh("ip", "netns", "add", ns, check=False)
    rows = []
    try:
        for n in SIZES:
            ours, cli, forgets = [], [], []
            for _ in range(reps):
                for ns in (src, dst):
                    flush(ns)
                guest = _lines(n, GUEST, "61", mark=7)
                load(src, guest + _lines(50_000, "10.50.0.1", "51"))
                load(dst, _lines(5_000, "10.52.0.1", "53") + guest[: max(1, n // 10)])
                seconds, report = timed(lambda: handover(Conntrack(NftRunner(src)), Conntrack(NftRunner(dst)),
                                                         [GUEST]))
                assert report.moved == n and report.missing == 0, report
                ours.append(seconds * 1000)
                forgets.append(timed(lambda: forget(Conntrack(NftRunner(src)), [GUEST], []))[0] * 1000)
                flush(dst)
                load(src, guest)
                start = time.perf_counter()
                dump = sh(*in_ns(src, "conntrack", "-L", "-s", GUEST, "-o", "save"))
                with tempfile.NamedTemporaryFile("w", suffix=".load") as f:
                    f.write(dump)
                    f.flush()
                    sh(*in_ns(dst, "conntrack", "-R", f.name))
                cli.append((time.perf_counter() - start) * 1000)
            o, c = summary(ours), summary(cli)
            rows.append({"entries": n, "handover_ms": o, "cli_save_restore_ms": c, "forget_ms": summary(forgets),
                         "entries_per_s": n / (o["median"] / 1000), "ratio_vs_cli": o["median"] / c["median"]})
    finally:
        for ns in (src, dst):
            sh("ip", "netns", "del", ns, check=False)
    return rows


def part2(reps: int) -> list[dict[str, object]]:
    from guestward.lab.lab import Lab

    lab = Lab()
    address = str(lab.address("web1"))
    rows = []
    plain = []
    for _ in range(reps):  # the baseline: as `virsh migrate` would, nothing carried, nothing added
        here = lab.where("web1")
        plain.append(lab.migrate("web1", "hv2" if here == "hv1" else "hv1", carry_connections=False)["downtime"])
    rows.append({"extra_entries": "plain libvirt", "moved": summary([0]), "downtime_ms": summary(plain),
                 "libvirt_downtime_ms": summary(plain), "added_ms": summary([0])})
    time.sleep(1)
    for n in (0, *SIZES):
        samples = []
        for _ in range(reps):
            here = lab.where("web1")
            assert here is not None, "web1 must run"
            dest = "hv2" if here == "hv1" else "hv1"
            if n:
                with tempfile.NamedTemporaryFile("w", suffix=".load") as f:
                    f.write("\n".join(_lines(n, address, "62")) + "\n")
                    f.flush()
                    assert NftRunner(f"gwl-{here}").run("conntrack", "-R", f.name).returncode == 0
            stats = lab.migrate("web1", dest)
            assert stats["conntrack_missing"] == 0, stats
            samples.append(stats)
        rows.append({"extra_entries": n, "moved": summary([s["conntrack_moved"] for s in samples]),
                     "downtime_ms": summary([s["downtime"] for s in samples]),
                     "libvirt_downtime_ms": summary([s["libvirt_downtime"] for s in samples]),
                     "added_ms": summary([s["added_downtime"] for s in samples])})
    if lab.where("web1") != "hv1":
        lab.migrate("web1", "hv1")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lab", action="store_true", help="also migrate web1 in a running lab")
    ap.add_argument("--lab-only", action="store_true", help="only the lab part (keeps the last netns part)")
    args = ap.parse_args()
    previous = RESULTS / "conntrack_move.json"
    # A part not run this time keeps its last result (each part records its own machine facts).
    result: dict[str, object] = json.loads(previous.read_text()) if previous.exists() else {}
    result.pop("machine", None)
    if not args.lab_only:
        rows = part1(args.reps)
        print(table(["entries", "handover ms (median)", "CLI save|restore ms", "ratio", "entries/s", "forget ms"],
                    [(r["entries"], r["handover_ms"]["median"], r["cli_save_restore_ms"]["median"],  # type: ignore[index]
                      r["ratio_vs_cli"], r["entries_per_s"], r["forget_ms"]["median"]) for r in rows]))  # type: ignore[index]
        result["netns"] = rows
        result["netns_machine"] = machine()
    if args.lab or args.lab_only:
        lab_rows = part2(args.reps)
        print(table(["extra entries", "moved", "downtime ms", "libvirt ms", "added ms"],
                    [(r["extra_entries"], r["moved"]["median"], r["downtime_ms"]["median"],  # type: ignore[index]
                      r["libvirt_downtime_ms"]["median"], r["added_ms"]["median"]) for r in lab_rows]))  # type: ignore[index]
        result["lab"] = lab_rows
        result["lab_machine"] = machine()
    print(write_result("conntrack_move", result))


if __name__ == "__main__":
    main()
