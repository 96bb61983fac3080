"""What the inspection worker's sandbox costs, per inspection: the same worker code and the same jobs,
started under the old confinement (`unshare --net` only, as root, the image opened by the worker) and under
guestward.inspect.sandbox (setpriv to nobody, bubblewrap: user/mount/PID/net/IPC/UTS namespaces,
no capabilities, seccomp), interleaved, a few runs each:

- start-up: the worker's selftest job (interpreter start, nothing read);
- a small ext4 image (64 MiB raw) inspected end to end (`inspect_chains`);
- completing a two-layer qcow2 chain (`image_chain`): each qcow2 header is now read by a worker started for
  it, where it used to be parsed in the caller's process (timed here as `parse_header` on an in-process read).

Usage (root): .venv/bin/python bench/sandbox_bench.py [--reps N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import summary, table, timed, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.inspect.conftest import mkfs, run  # noqa: E402
from tests.inspect.test_hostile import small_root  # noqa: E402

from guestward.inspect import runner, sandbox  # noqa: E402
from guestward.inspect.chain import image_chain  # noqa: E402
from guestward.inspect.qcow2 import MAX_CLUSTER, parse_header  # noqa: E402

REAL_COMMAND = sandbox.command


def old_command(argv: list[str], seccomp_fd: int) -> list[str]:
    return ["unshare", "--net", *argv]


def under(kind: str) -> None:
    sandbox.command = REAL_COMMAND if kind == "sandbox" else old_command  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    samples: dict[str, dict[str, list[float]]] = {k: {"old": [], "sandbox": []} for k in ("startup", "inspect")}
    chain_new: list[float] = []
    chain_old: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gw-sandbox-bench-") as d:
        img = mkfs(small_root(Path(d)), Path(d) / "disk.raw", "64M")
        base = Path(d) / "base.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(img), str(base))
        top = Path(d) / "top.qcow2"
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top))
        for _ in range(args.reps):
            for kind in ("old", "sandbox"):
                under(kind)
                samples["startup"][kind].append(timed(lambda: runner.run_worker({"selftest": True}, files=[]))[0])
                samples["inspect"][kind].append(timed(lambda: runner.inspect_chains([image_chain(str(img))]))[0])
            under("sandbox")
            chain_new.append(timed(lambda: image_chain(str(top), "qcow2"))[0])

            def in_process() -> None:
                for p in (top, base):
                    with open(p, "rb") as f:
                        parse_header(f.read(MAX_CLUSTER))
            chain_old.append(timed(in_process)[0])
    rows: list[list[Any]] = []
    result: dict[str, Any] = {}
    for what, by in samples.items():
        old, new = summary(by["old"]), summary(by["sandbox"])
        rows.append([what, old["median"], new["median"], new["median"] - old["median"]])
        result[what] = {"old": old, "sandbox": new}
    o, n = summary(chain_old), summary(chain_new)
    rows.append(["qcow2 chain (2 headers)", o["median"], n["median"], n["median"] - o["median"]])
    result["qcow2_chain"] = {"in_process": o, "sandbox": n}
    print(table(["what (median s)", "old (unshare --net)", "sandbox", "added"], rows))
    write_result("sandbox", result)


if __name__ == "__main__":
    main()
