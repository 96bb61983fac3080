"""Reading feed JSON as a stream of index rows, in bounded memory and time; the limits of a feed update.

Invariants (each breach is a FeedError naming the file, or the zip member, and the limit):
- JSON is parsed incrementally (ijson); one record at a time is built, and no record, nor the bytes
  between two records, may exceed `Limits.max_record` bytes of input, give or take one 64 KiB read (a
  300 MB string or key is refused once `max_record` bytes of it were read, not after it was built);
  nesting is at most `max_depth`;
- everything read (decompressed) counts against `max_uncompressed`, and the whole pass against
  `max_seconds`.
Zips are read by feed_zip, directories walked by feed_tree, both through these readers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from guestward.inspect.feed_schema import Row, osv_rows, tracker_rows

_START = ("start_map", "start_array")
_END = ("end_map", "end_array")
# Top-level OSV fields: a JSON object whose first key is one of these is one OSV record, any other
# object is the tracker (whose keys are source package names; none is named like these).
OSV_FIELDS = frozenset({"schema_version", "id", "modified", "published", "withdrawn", "aliases", "upstream",
                        "related", "summary", "details", "severity", "affected", "references", "credits",
                        "database_specific"})


class FeedError(ValueError):
    """A feed refused: the message names the input and what is wrong with it."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 2 << 30  # a download, a local file or a directory's files as stored
    max_uncompressed: int = 8 << 30  # all JSON read in one update (zip members decompressed)
    max_ratio: int = 100  # a zip member's decompressed / compressed size (OSV JSON deflates ~10:1)
    max_members: int = 300_000  # zip members, or files in a directory feed
    # A zip's central directory, which zipfile loads whole: one ZipInfo (~135 bytes measured) per entry,
    # an entry 46 bytes at least, so 16 MiB costs ~50 MB at worst; ~160,000 real OSV entries (~100 B).
    max_central_dir: int = 16 << 20
    max_record: int = 16 << 20  # input bytes of one record, or between two
    max_depth: int = 32  # JSON nesting, and directory depth
    max_seconds: float = 1800.0  # the whole update
    download_timeout: float = 60.0  # one socket operation


class Budget:
    """What one update may still read, shared by every file and member of it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.read = 0
        self.records = 0  # records parsed (whether or not they gave index rows)
        self.deadline = time.monotonic() + limits.max_seconds

    def charge(self, name: str, n: int) -> None:
        self.read += n
        if self.read > self.limits.max_uncompressed:
            raise FeedError(f"{name}: the feed is over {self.limits.max_uncompressed} bytes uncompressed")
        if time.monotonic() > self.deadline:
            raise FeedError(f"{name}: reading the feed took over {self.limits.max_seconds:.0f} s")


class BoundedReader:
    """A binary stream that refuses more than `max_record` bytes between two `mark()`s and charges the
    budget; `cap` (a zip member's allowance) bounds the whole stream."""

    def __init__(self, raw: IO[bytes], name: str, budget: Budget, cap: int | None = None,
                 cap_reason: str = "") -> None:
        self.raw, self.name, self.budget = raw, name, budget
        self.cap, self.cap_reason = cap, cap_reason
        self.total = 0
        self.since_mark = 0

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""  # ijson probes the type with read(0)
        data = self.raw.read(min(n, 1 << 16) if n > 0 else 1 << 16)
        self.total += len(data)
        self.since_mark += len(data)
        self.budget.charge(self.name, len(data))
        if self.cap is not None and self.total > self.cap:
            raise FeedError(f"{self.name}: {self.cap_reason}")
        if self.since_mark > self.budget.limits.max_record:
            raise FeedError(f"{self.name}: a record over {self.budget.limits.max_record} bytes "
                            f"(near byte {self.total})")
        return data

    def mark(self) -> None:
        self.since_mark = 0


Path_ = tuple[Any, ...]


def _build(events: Iterator[tuple[str, Any]], start: str, depth: int, limits: Limits, name: str) -> Any:
    """The value (at `depth`) whose `start` event was just read, from the events that follow it (a plain
    container stack: ijson's ObjectBuilder costs a method call per event, and this loop is most of an
    update's time)."""
    root: Any = {} if start == "start_map" else []
    stack: list[Any] = [root]
    keys: list[Any] = [None]
    for event, value in events:
        if event == "map_key":
            keys[-1] = value
            continue
        top = stack[-1]
        if event == "start_map" or event == "start_array":
            new: Any = {} if event == "start_map" else []
            if type(top) is list:
                top.append(new)
            else:
                top[keys[-1]] = new
            stack.append(new)
            keys.append(None)
            if depth + len(stack) > limits.max_depth:
                raise FeedError(f"{name}: JSON nested deeper than {limits.max_depth}")
        elif event == "end_map" or event == "end_array":
            stack.pop()
            keys.pop()
            if not stack:
                return root
        elif type(top) is list:
            top.append(value)
        else:
            top[keys[-1]] = value
    raise FeedError(f"{name}: not valid JSON: it ends inside a record")


def values_at(stream: BoundedReader, depth: int) -> Iterator[tuple[Path_, Any]]:
    """(path, value) of every JSON value at `depth` (0: the document; 1: items or values of the top
    container; 2: of the containers in it), each built alone."""
    limits = stream.budget.limits
    stack: list[list[Any]] = []  # per open container above `depth`: [is_array, key or index]
    try:
        events = iter(ijson.basic_parse(stream, use_float=True))
        for event, value in events:
            if event == "map_key":
                stack[-1][1] = value
                continue
            if event in _END:
                stack.pop()
                stream.mark()
                continue
            if stack and stack[-1][0]:
                stack[-1][1] += 1
            if len(stack) == depth:
                path = tuple(s[1] for s in stack)
                if event in _START:
                    value = _build(events, event, depth, limits, stream.name)
                yield path, value
                stream.mark()
            elif event in _START:
                stack.append([event == "start_array", -1 if event == "start_array" else None])
            else:
                where = "/".join(str(s[1]) for s in stack) or "the document"
                raise FeedError(f"{stream.name}: {where}: a {event} where an object or array belongs")
    except ijson.JSONError as exc:
        raise FeedError(f"{stream.name}: not valid JSON: {str(exc).splitlines()[0]}") from None


def first_token(raw: IO[bytes] | BoundedReader) -> bytes:
    while (b := raw.read(1)) in (b" ", b"\t", b"\n", b"\r"):
        pass
    return b


def osv_doc(stream: BoundedReader, first: bytes) -> Iterator[Row]:
    """Rows of a JSON file that is one OSV record or a list of them."""
    depth = 1 if first == b"[" else 0
    for path, obj in values_at(stream, depth):
        where = f"{stream.name}: record {path[0] + 1}" if path else f"{stream.name}: record"
        stream.budget.records += 1
        yield from osv_rows(where, obj)


def _is_tracker(path: Path, name: str, budget: Budget) -> bool:
    """Whether a JSON object document is the tracker (its first key is no OSV field: the tracker's keys
    are source package names) rather than one OSV record; reads only up to its first key."""
    with open(path, "rb") as raw:
        try:
            for _prefix, event, value in ijson.parse(BoundedReader(raw, name, budget)):
                if event == "map_key":
                    return value not in OSV_FIELDS
                if event == "end_map":
                    return True  # `{}`: an empty tracker (refused later: no records)
        except ijson.JSONError as exc:
            raise FeedError(f"{name}: not valid JSON: {str(exc).splitlines()[0]}") from None
    return False


def json_file_rows(path: Path, budget: Budget, fmt: list[str], name: str) -> Iterator[Row]:
    """Rows of a JSON file (called `name` in errors): the tracker, one OSV record or a list; appends its
    format to `fmt`."""
    with open(path, "rb") as raw:
        first = first_token(raw)
    if first == b"{" and _is_tracker(path, name, budget):
        fmt.append("debian-tracker")
        with open(path, "rb") as raw:
            stream = BoundedReader(raw, name, budget)
            for (source, cve), obj in values_at(stream, 2):
                budget.records += 1
                yield from tracker_rows(name, source, cve, obj)
        return
    if first not in (b"{", b"["):
        raise FeedError(f"{name}: neither a zip nor JSON (starts with {first!r})")
    fmt.append("osv")
    with open(path, "rb") as raw:
        yield from osv_doc(BoundedReader(raw, name, budget), first)


class Prefixed(BoundedReader):
    """A BoundedReader with a byte already taken from it given back first."""

    def __init__(self, head: bytes, inner: BoundedReader) -> None:
        super().__init__(inner.raw, inner.name, inner.budget, inner.cap, inner.cap_reason)
        self.head, self.inner = head, inner

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self.head:
            head, self.head = self.head, b""
            return head
        return self.inner.read(n)

    def mark(self) -> None:
        self.inner.mark()
