"""Agentless disk inspection: a minbase Debian image (the tests' cached debootstrap root, with its
planted findings) inspected end to end, the setuid walk's rate, 20 images with a progress bar.

- full inspection: `guestward.inspect.runner.inspect_chains` (worker start in a new netns, open the
  qcow2 chain, volumes, filesystem, inventory, setuid walk, JSON back) plus report building with a feed,
  and the CLI (`guestward inspect --image ... --json`, including Python start-up) as the user sees it;
- setuid walk: inodes visited / seconds inside the worker (dissect.extfs directory walk, every inode read);
- 20 images: 20 qcow2 clones (overlays with absolute backing paths, as virt-clone makes) of the image,
  inspected one after another with a rich progress bar;
- virt-inspector is not run here: libguestfs-tools is 107 packages and needs a host kernel in /boot,
  which this machine does not have (INSPECTION-NOTES.md measured 46.3 s under TCG on the same kind of host).

Usage (root): .venv/bin/python bench/inspect_bench.py [--reps N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import summary, table, timed, write_result
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.inspect.conftest import cached_rootfs, mkfs, plant, run  # noqa: E402

from guestward.inspect import report  # noqa: E402
from guestward.inspect.chain import image_chain  # noqa: E402
from guestward.inspect.runner import inspect_chains  # noqa: E402

VIRT_INSPECTOR_NOTES_S = 46.3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--images", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-inspect-bench-", dir="/var/tmp") as tmp:
        d = Path(tmp)
        t_root, src = timed(cached_rootfs)
        root = d / "rootfs"
        run("cp", "-a", str(src), str(root))
        plant(root)
        raw = mkfs(root, d / "disk.raw")
        image = d / "disk.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
        raw.unlink()
        shutil.rmtree(root)
        state = d / "state"
        feed = d / "tracker.json"
        feed.write_text(json.dumps({"glibc": {"CVE-2099-0001": {"releases": {"bookworm": {
            "status": "resolved", "fixed_version": "9:1-1", "urgency": "high"}}}}}))
        from guestward.inspect import feeds
        feeds.update(state, str(feed), "tracker")

        walls, walk_rates, inodes, opens = [], [], 0, []
        inv = {}
        for _ in range(args.reps):
            t, inv = timed(lambda: inspect_chains([image_chain(str(image), "qcow2")]))
            t2, _ = timed(lambda inv=inv: report.build("bench", inv, state))
            walls.append(t + t2)
            walk_rates.append(inv["walk"]["inodes"] / inv["walk"]["seconds"])
            inodes = inv["walk"]["inodes"]
            opens.append(inv["timings"]["open"])
        cli = []
        gw = Path(sys.executable).parent / "guestward"
        for _ in range(3):
            t, _ = timed(lambda: subprocess.run([str(gw), "inspect", "--image", str(image), "--format", "qcow2",
                                                    "--json", "--state-dir", str(state), "--no-store"],
                                                   capture_output=True, check=True))
            cli.append(t)

        clones = []
        for i in range(args.images):
            c = d / f"clone{i:02d}.qcow2"
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(c))
            clones.append(c)
        per_image = []
        start = time.perf_counter()
        with Progress() as progress:
            task = progress.add_task(f"inspecting {len(clones)} images", total=len(clones))
            for c in clones:
                t, r = timed(lambda c=c: inspect_chains([image_chain(str(c), "qcow2")]))
                per_image.append(t)
                assert len(r["packages"]) == len(inv["packages"])
                progress.advance(task)
        fleet_total = time.perf_counter() - start

    full = summary(walls)
    rate = summary(walk_rates)
    data = {
        "image": {"packages": len(inv["packages"]), "walk_inodes": inodes, "format": "qcow2 (ext4, no partitions)",
                  "rootfs_cache_seconds": t_root},
        "full_inspection_s": full, "cli_wall_s": summary(cli), "open_s": summary(opens),
        "setuid_walk_inodes_per_s": rate,
        "fleet": {"images": len(clones), "total_s": fleet_total, "per_image_s": summary(per_image)},
        "virt_inspector": {"measured": False, "notes_figure_s": VIRT_INSPECTOR_NOTES_S,
                           "ratio_vs_notes_figure": VIRT_INSPECTOR_NOTES_S / summary(cli)["median"],
                           "why": "libguestfs-tools (107 packages) needs a host kernel in /boot; none here"},
        "goals": {"full_inspection_under_3s": full["median"] < 3.0, "walk_at_least_10k_inodes_per_s":
                  rate["median"] >= 10_000},
    }
    print(table(["measure", "median", "min", "max", "n"], [
        ["full inspection (API, worker + report), s", full["median"], full["min"], full["max"], full["n"]],
        ["CLI `guestward inspect --json`, s", data["cli_wall_s"]["median"], data["cli_wall_s"]["min"],
         data["cli_wall_s"]["max"], data["cli_wall_s"]["n"]],
        ["open chain+volumes+fs in worker, s", data["open_s"]["median"], data["open_s"]["min"],
         data["open_s"]["max"], data["open_s"]["n"]],
        ["setuid walk, inodes/s", rate["median"], rate["min"], rate["max"], rate["n"]],
        [f"{len(clones)} images, per image, s", data["fleet"]["per_image_s"]["median"],
         data["fleet"]["per_image_s"]["min"], data["fleet"]["per_image_s"]["max"], len(clones)],
    ]))
    print(f"{len(clones)} images in {fleet_total:.1f} s; virt-inspector (notes, not measured here) "
          f"{VIRT_INSPECTOR_NOTES_S} s = {data['virt_inspector']['ratio_vs_notes_figure']:.0f}x the CLI median")
    print(f"results: {write_result('inspect', data)}")


if __name__ == "__main__":
    main()
