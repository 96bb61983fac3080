"""Moving a guest's connection-tracking entries between hosts, with the `conntrack` tool of
conntrack-tools, run in each host's network namespace.

The contract of `handover` (CONNTRACK-FLOWS-NOTES.md 1.4-1.5 measured why each step is there):
1. the source's entries from or to the guest's addresses are read (mark and zone included);
2. on the destination they replace whatever it holds for those addresses (a transit entry of a flow
   the destination forwarded, or one picked up mid-stream the other way round), created
   window-liberal, since TCP window state cannot be copied;
3. the destination is read back: an entry that did not land is tried once more, and what is still
   missing is reported, not hidden.
It is meant to run while the guest is paused, between the end of the migration and the resume, so
no packet of the guest meets the destination before its connections do.

`forget` is the source's half after the guest left: its entries go, except those whose other end is
a guest still on the source (the source still forwards that peer's side of the connection).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from guestward.dataplane.conntrack import Entry, create_script, identity, parse_extended, replace_script
from guestward.enforce.enforcer import EnforceError, NftRunner


@dataclass
class Handover:
    """What one move did. Times in milliseconds."""

    moved: int = 0
    missing: int = 0
    skipped: int = 0  # entries of protocols that cannot be written back
    read_ms: float = 0.0
    write_ms: float = 0.0
    missing_entries: list[Entry] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return round(self.read_ms + self.write_ms, 1)


class Conntrack:
    """One host's connection-tracking table."""

    def __init__(self, runner: NftRunner) -> None:
        self.runner = runner

    def entries(self, addresses: Iterable[str]) -> tuple[list[Entry], int]:
        """Every entry from or to one of `addresses` (each once), and how many were skipped."""
        seen: dict[object, Entry] = {}
        skipped = 0
        # Each listing walks the whole table: they run side by side.
        for (flag, addr), proc in _each(self.runner, "-L", addresses, "-o", "extended"):
            if proc.returncode != 0:
                raise EnforceError(f"conntrack -L {flag} {addr}: {proc.stderr.strip()[:500]}")
            found, n = parse_extended(proc.stdout)
            skipped += n
            for e in found:
                seen.setdefault(identity(e), e)
        return list(seen.values()), skipped

    def delete(self, addresses: Iterable[str]) -> int:
        """Delete every entry from or to one of `addresses`. Returns how many went."""
        deleted = 0
        for (flag, addr), proc in _each(self.runner, "-D", addresses):
            m = re.search(r"(\d+) flow entries have been deleted", proc.stderr)
            if m:
                deleted += int(m.group(1))
            elif proc.returncode != 0:
                raise EnforceError(f"conntrack -D {flag} {addr}: {proc.stderr.strip()[:500]}")
        return deleted

    def run_script(self, script: str) -> None:
        """Feed `conntrack -R` a script of -A/-D lines. The tool goes on past a create whose tuple is
        taken, so callers read back what they need to be sure of."""
        if not script:
            return
        with tempfile.NamedTemporaryFile("w", prefix="gw-ct-", suffix=".load") as f:
            f.write(script)
            f.flush()
            proc = self.runner.run("conntrack", "-R", f.name)
        if proc.returncode != 0:
            raise EnforceError(f"conntrack -R: {proc.stderr.strip()[:500]}")

    def count(self) -> int:
        proc = self.runner.run("conntrack", "-C")
        try:
            return int(proc.stdout.strip())
        except ValueError:
            raise EnforceError(f"conntrack -C: {proc.stderr.strip()[:200]}") from None


def _each(runner: NftRunner, command: str, addresses: Iterable[str], *extra: str,
          ) -> list[tuple[tuple[str, str], subprocess.CompletedProcess[str]]]:
    """`conntrack COMMAND -s ADDR` and `-d ADDR` for every address, run concurrently."""
    jobs = [(flag, addr) for addr in sorted(set(addresses)) for flag in ("-s", "-d")]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(jobs)))) as pool:
        procs = list(pool.map(lambda job: runner.run("conntrack", command, job[0], job[1], *extra), jobs))
    return list(zip(jobs, procs, strict=True))


def handover(source: Conntrack, destination: Conntrack, addresses: list[str]) -> Handover:
    """Copy the entries of `addresses` from `source` to `destination` (see the module docstring)."""
    report = Handover()
    start = time.monotonic()
    # Whatever the destination holds for these addresses is a transit or picked-up view of the same
    # flows (all of them ran through the source): the source's entries replace it. Reading the
    # source and clearing the destination do not depend on each other, so they overlap.
    with ThreadPoolExecutor(max_workers=1) as pool:
        cleared = pool.submit(destination.delete, addresses)
        entries, report.skipped = source.entries(addresses)
        report.read_ms = round((time.monotonic() - start) * 1000, 1)
        cleared.result()
    start = time.monotonic()
    destination.run_script(create_script(entries))
    missing = _not_landed(destination, addresses, entries)
    if missing:  # a packet raced in between and was tracked: replace those few one by one
        destination.run_script(replace_script(missing))
        missing = _not_landed(destination, addresses, missing)
    report.write_ms = round((time.monotonic() - start) * 1000, 1)
    report.missing, report.missing_entries = len(missing), missing
    report.moved = len(entries) - len(missing)
    return report


def _not_landed(table: Conntrack, addresses: list[str], wanted: list[Entry]) -> list[Entry]:
    have = {identity(e) for e in table.entries(addresses)[0]}
    return [e for e in wanted if identity(e) not in have]


def forget(source: Conntrack, addresses: list[str], keep_peers: Iterable[str]) -> int:
    """Delete the source's entries of `addresses` whose other end is not in `keep_peers`. Returns how
    many were deleted. (All go at once and the kept ones come straight back: deleting entries one by
    one walks the table per entry.)"""
    keep = set(keep_peers)
    entries, _ = source.entries(addresses)
    kept = [e for e in entries if e.peers(addresses) & keep]
    source.delete(addresses)
    source.run_script(create_script(kept))
    return len(entries) - len(kept)
