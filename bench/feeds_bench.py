"""Vulnerability feeds at size: `feeds update` and the feed lookup of a later inspection, each in its own
process, with wall time and peak RSS (VmHWM of that process).

The feed is generated: a Debian security tracker JSON of `--sources` source packages with `--cves`
CVEs each, every CVE with data for two releases (~280 bytes a CVE), as the real tracker is shaped.
The later inspection is `guestward.inspect.report.build` for a synthetic dpkg inventory of
`--packages` installed packages (no disk image: only the feed part of `inspect` is measured).

`--before DIR` also runs another checkout's `src/` (the code before the change, e.g. from
`git archive 5843fd1 src | tar -x -C DIR/..`) on the same feed, after this checkout's; the result is
written to bench/results/feeds.json.

Usage: .venv/bin/python bench/feeds_bench.py [--sources 40000] [--cves 8] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
what, state, arg = sys.argv[2], sys.argv[3], sys.argv[4]
start = time.perf_counter()
if what == "update":
    from guestward.inspect import feeds
    meta = feeds.update(__import__("pathlib").Path(state), arg, "tracker")
    out = {"entries": meta["entries"]}
else:
    from guestward.inspect import report
    inv = json.loads(open(arg).read())
    rep = report.build("bench", inv, __import__("pathlib").Path(state))
    out = {"findings": sum(1 for f in rep["findings"] if f["type"] == "vulnerability")}
out["seconds"] = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss survives exec and may report the forking parent's)
out["max_rss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps(out))
"""


def generate(path: Path, sources: int, cves: int) -> None:
    with open(path, "w") as f:
        f.write("{")
        for s in range(sources):
            doc = {f"CVE-2099-{s * cves + c:07d}": {
                "description": f"a flaw in pkg{s} number {c}", "scope": "remote", "releases": {
                    "bookworm": {"status": "resolved", "repositories": {"bookworm": f"1.{c}-1"},
                                 "fixed_version": f"1.{c}-1", "urgency": "medium"},
                    "bullseye": {"status": "open", "repositories": {"bullseye": "0.9-1"}, "urgency": "low"}}}
                for c in range(cves)}
            f.write(("," if s else "") + json.dumps(f"pkg{s}") + ":" + json.dumps(doc))
        f.write("}")


def child(src: Path, what: str, state: Path, arg: str) -> dict[str, float]:
    r = subprocess.run([sys.executable, "-c", _CHILD, str(src), what, str(state), arg], capture_output=True,
                       text=True, check=False)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}  # type: ignore[dict-item]
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=40000)
    ap.add_argument("--cves", type=int, default=8)
    ap.add_argument("--packages", type=int, default=500)
    ap.add_argument("--before", type=Path, help="the src/ of the code before the change")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-feeds-bench-", dir="/var/tmp") as tmp:
        d = Path(tmp)
        feed = d / "tracker.json"
        t = time.perf_counter()
        generate(feed, args.sources, args.cves)
        inv = d / "inventory.json"
        step = max(1, args.sources // args.packages)
        inv.write_text(json.dumps({"os": {"id": "debian", "codename": "bookworm", "version_id": "12"}, "packages": [
            {"name": f"pkg{s}", "source": f"pkg{s}", "version": "1.0-1", "source_version": "1.0-1",
             "manager": "dpkg"} for s in range(0, args.sources, step)]}))
        result: dict[str, object] = {"feed_mb": round(feed.stat().st_size / 1e6, 1), "cves": args.sources * args.cves,
                                     "installed_packages": len(range(0, args.sources, step)),
                                     "generate_s": round(time.perf_counter() - t, 1)}
        for label, src in (("after", ROOT / "src"), ("before", args.before)):
            if src is None:
                continue
            state = d / f"state-{label}"
            result[label] = {"src": str(src), "update": child(src, "update", state, str(feed)),
                             "inspect": child(src, "inspect", state, str(inv))}
    print(json.dumps(result, indent=2))
    write_result("feeds", result)


if __name__ == "__main__":
    main()
