"""A stored feed's match index: one SQLite file per feed, rows keyed by (release, source package).

An inspection asks for the rows of its release keys and its installed source packages only, so its
memory is that of the matches, not of the feed. Written once into a fresh file by `IndexWriter`
(renamed into place by the caller), then only opened read-only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Index = dict[str, dict[str, list[dict[str, Any]]]]
_BATCH = 5000
_PARAMS = 500  # SQLite's default limit on host parameters is 999 (older builds)


class IndexWriter:
    """Rows in, then `finish(meta)`; the file is complete and indexed only after finish."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        # A fresh scratch file renamed into place only when complete: no journal needed.
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                              "CREATE TABLE meta(doc TEXT NOT NULL);"
                              # Clustered on the lookup key: no second copy of (release, package) in an index.
                              "CREATE TABLE entry(release TEXT NOT NULL, package TEXT NOT NULL, n INTEGER NOT NULL,"
                              " doc TEXT NOT NULL, PRIMARY KEY (release, package, n)) WITHOUT ROWID;")
        self.pending: list[tuple[str, str, int, str]] = []
        self.entries = 0
        self.releases: set[str] = set()

    def add(self, release: str, package: str, entry: dict[str, Any]) -> None:
        self.entries += 1
        self.pending.append((release, package, self.entries, json.dumps(entry, separators=(",", ":"))))
        self.releases.add(release)
        if len(self.pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT INTO entry VALUES (?, ?, ?, ?)", self.pending)
        self.pending.clear()

    def finish(self, meta: dict[str, Any]) -> None:
        self._flush()
        self.db.execute("INSERT INTO meta VALUES (?)", (json.dumps(meta),))
        self.db.commit()
        self.db.close()

    def abort(self) -> None:
        self.db.close()


class IndexUnreadable(ValueError):
    """A stored index that cannot be read (damaged, or not ours): named, never skipped."""


def _open(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def read_meta(path: Path) -> dict[str, Any]:
    try:
        db = _open(path)
        try:
            row = db.execute("SELECT doc FROM meta").fetchone()
        finally:
            db.close()
        meta: dict[str, Any] = json.loads(row[0])
    except (sqlite3.Error, TypeError, ValueError) as exc:
        raise IndexUnreadable(f"{path}: not a readable feed index ({exc}): `guestward feeds update` it again") from None
    return meta


def lookup(path: Path, keys: list[str], packages: Iterable[str] | None, into: Index, feed: str) -> None:
    """Add to `into` the entries for `keys` x `packages` (every package of `keys` when None), each
    tagged with its feed's name."""
    try:
        _lookup(path, keys, packages, into, feed)
    except (sqlite3.Error, ValueError) as exc:
        raise IndexUnreadable(f"{path}: not a readable feed index ({exc}): `guestward feeds update` it again") from None


def _lookup(path: Path, keys: list[str], packages: Iterable[str] | None, into: Index, feed: str) -> None:
    db = _open(path)
    try:
        for key in keys:
            if packages is None:
                rows: Iterable[tuple[str, str]] = db.execute(
                    "SELECT package, doc FROM entry WHERE release = ?", (key,))
                _add(into, key, feed, rows)
                continue
            names = sorted(set(packages))
            for i in range(0, len(names), _PARAMS):
                chunk = names[i:i + _PARAMS]
                rows = db.execute(f"SELECT package, doc FROM entry WHERE release = ? AND package IN "
                                  f"({','.join('?' * len(chunk))})", (key, *chunk))
                _add(into, key, feed, rows)
    finally:
        db.close()


def _add(into: Index, key: str, feed: str, rows: Iterable[tuple[str, str]]) -> None:
    for package, doc in rows:
        into.setdefault(key, {}).setdefault(package, []).append({**json.loads(doc), "feed": feed})
