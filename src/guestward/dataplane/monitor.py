"""`nft monitor` lines -> the transactions that changed guestward's tables (pure).

nft prints one line per object a transaction added or deleted (`delete rule inet guestward eg-x handle
5`, `delete table bridge guestward`; a `flush table` shows as the deletes it did), then the
transaction's end: `# new generation N by process PID (NAME)`, the kernel's word on who committed it.
`MonitorParser` groups the lines between two generations and returns, at each generation line, a
`Change` when some line of that transaction touched a table named `table`; transactions that
touched only other tables give None. Lines that are not object events (traces, blank lines) are
ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

GENERATION = re.compile(r"# new generation (\d+) by process (\d+) \((.*)\)")
VERBS = ("add", "delete", "flush", "replace", "insert", "destroy", "reset")
RAW_LINES_KEPT = 5


@dataclass(frozen=True)
class Change:
    """One committed transaction that touched our tables: who, what, and when (the caller's clock)."""

    generation: int
    pid: int
    process: str
    lines: tuple[str, ...]  # the first lines about our tables, as printed
    counts: tuple[tuple[str, int], ...]  # ("delete rule bridge guestward", 19), in order of appearance
    first_seen: float  # when the transaction's first line arrived
    committed_seen: float  # when its generation line arrived

    @property
    def who(self) -> str:
        return f"pid {self.pid} ({self.process})"

    def summary(self) -> list[str]:
        """What changed, one entry per kind of event: "delete rule inet guestward x19"."""
        return [f"{what} x{n}" if n > 1 else what for what, n in self.counts]


@dataclass
class MonitorParser:
    table: str = "guestward"
    _lines: list[str] = field(default_factory=list)
    _counts: Counter[str] = field(default_factory=Counter)
    _first: float | None = None

    def feed(self, line: str, now: float) -> Change | None:
        """Take one line of `nft monitor`; at the end of a transaction about our tables, its Change."""
        line = line.rstrip("\n")
        m = GENERATION.match(line)
        if m:
            change = None
            if self._counts:
                change = Change(int(m.group(1)), int(m.group(2)), m.group(3), tuple(self._lines),
                                tuple(self._counts.items()), self._first if self._first is not None else now, now)
            self._lines, self._counts, self._first = [], Counter(), None
            return change
        words = line.split()
        if len(words) < 4 or words[0] not in VERBS:
            return None
        if self._first is None:
            self._first = now
        if words[3] == self.table:
            self._counts[" ".join(words[:4])] += 1
            if len(self._lines) < RAW_LINES_KEPT:
                self._lines.append(line)
        return None
