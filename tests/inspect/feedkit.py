"""Helpers for the feed tests: records in the real formats, a stored feed to lose nothing of, and the
real `guestward` command run under an address-space limit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestward.inspect import feeds

NAME = "feed"  # every hostile update targets the stored feed's name, so a wrong replace would show


def osv(ident: str, pkg: str = "glibc", fixed: str = "2.36-9+deb12u4", eco: str = "Debian:12",
        **extra: Any) -> dict[str, Any]:
    return {"schema_version": "1.6.0", "id": ident, "modified": "2099-01-01T00:00:00Z", "aliases": [],
            "affected": [{"package": {"ecosystem": eco, "name": pkg},
                          "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
                          "versions": [], "ecosystem_specific": {"urgency": "high"}}], **extra}


def tracker_cve(fixed: str = "2.36-9+deb12u4", status: str = "resolved") -> dict[str, Any]:
    return {"description": "a flaw", "scope": "local", "releases": {
        "bookworm": {"status": status, "repositories": {"bookworm": fixed}, "fixed_version": fixed,
                     "urgency": "high"}}}


@dataclass
class Stored:
    """The feed in force before a hostile update: what must still be there after it."""

    state: Path
    meta: dict[str, Any]
    src: bytes

    def assert_in_force(self) -> None:
        assert feeds.list_feeds(self.state) == [self.meta]
        _, index = feeds.load(self.state, ["debian:12"], ["glibc"])
        assert [e["id"] for e in index["debian:12"]["glibc"]] == ["CVE-2000-0001"]
        assert (feeds.feeds_dir(self.state) / f"{NAME}.src").read_bytes() == self.src
        leftovers = [p.name for p in feeds.feeds_dir(self.state).iterdir() if p.name.startswith(".")]
        assert leftovers == [], leftovers


def stored_feed(tmp: Path) -> Stored:
    state = tmp / "state"
    good = tmp / "good.json"
    good.write_text(json.dumps([osv("CVE-2000-0001")]))
    meta = feeds.update(state, str(good), NAME)
    return Stored(state, meta, good.read_bytes())


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float


_WRAP = """
import atexit, resource, sys
limit = int(sys.argv.pop(1)) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
# VmHWM, not ru_maxrss: ru_maxrss survives exec and so can report the forking parent's size.
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
atexit.register(lambda: sys.stderr.write(f"\\nmaxrss-kib {hwm()}\\n"))
code = sys.argv.pop(1)
if code:
    exec(code)
else:
    from guestward.cli.main import main
    sys.argv[0] = "guestward"
    main()
"""


def bounded_cli(*args: str, address_space_mb: int = 256, timeout: float = 120, code: str = "") -> Run:
    """The real `guestward` command (or Python `code` given `args` as sys.argv[1:]) under RLIMIT_AS (past
    it, allocation fails in that process instead of the host running out), with wall time and peak RSS
    (VmHWM of that process)."""
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _WRAP, str(address_space_mb), code, *args], capture_output=True,
                       text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - start
    stderr, _, tail = r.stderr.rpartition("maxrss-kib ")
    rss = int(tail.strip()) / 1024 if tail.strip().isdigit() else float("nan")
    return Run(r.returncode, r.stdout, stderr.strip() if tail.strip().isdigit() else r.stderr, seconds, rss)
