"""Offline vulnerability feeds in their published formats, stored under `<state_dir>/feeds/`.

Formats (detected from the content; the feed is operator-supplied, never guest data):
- `debian-tracker`: the Debian security tracker JSON (https://security-tracker.debian.org/tracker/data/json):
  `{source: {CVE: {releases: {codename: {status, fixed_version, urgency}}}}}`;
- `osv`: OSV JSON records (schema 1.x): one record, a list, a directory of them, or a per-ecosystem zip
  as published by osv.dev (`Debian/all.zip`, saved as `Debian.zip`).

`update` brings the source in (feed_fetch: https, or http/file with a checked SHA-256; bounded; no
symlink followed), streams it through the schema (feed_stream, feed_zip, feed_tree, feed_schema: bounded
memory and time)
into a fresh SQLite index (feed_index), and only when all of that succeeded replaces the stored feed of
that name: a refused feed leaves the previous one in force. Stored per feed: `<name>.src` (the bytes
as fetched) and `<name>.index.sqlite` (the match index). Every record must pass the schema: the first
that fails refuses the whole feed, naming the file and the record (fail closed: skipping records would
under-report). A feed with no record at all is refused too.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from guestward.inspect import feed_index
from guestward.inspect.feed_fetch import check_sha256, fetch
from guestward.inspect.feed_schema import RecordError, Row, ecosystem_key
from guestward.inspect.feed_stream import Budget, FeedError, Limits, json_file_rows
from guestward.inspect.feed_tree import dir_rows
from guestward.inspect.feed_zip import zip_rows

__all__ = ["FeedError", "Limits", "ecosystem_key", "feeds_dir", "legacy_feeds", "list_feeds", "load", "update"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
INDEX_SUFFIX = ".index.sqlite"


def feeds_dir(state_dir: Path) -> Path:
    return state_dir / "feeds"


def _feed_name(name: str) -> str:
    name = name.removesuffix(".json").removesuffix(".zip") or "feed"
    if not _NAME.fullmatch(name):
        raise FeedError(f"feed name {name!r} is not a plain name (letters, digits, . _ + -; give --name)")
    return name


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def update(state_dir: Path, source: str, name: str | None = None, sha256: str | None = None,
           limits: Limits | None = None) -> dict[str, Any]:
    """Fetch (URL) or copy (file, directory) a feed into the state dir and index it; its metadata.
    Raises FeedError (naming the input) and then changes nothing stored."""
    limits = limits or Limits()
    want = check_sha256(sha256)
    if name is not None:
        name = _feed_name(name)
    d = feeds_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{time.time_ns()}"
    tmp, tmp_index = d / f".incoming-{stamp}", d / f".incoming-{stamp}{INDEX_SUFFIX}"
    try:
        base, digest = fetch(source, tmp, want, limits)
        name = name or _feed_name(base)
        fmt: list[str] = []
        budget = Budget(limits)
        writer = feed_index.IndexWriter(tmp_index)
        try:
            for release, package, entry in feed_rows(tmp, budget, fmt, source):
                writer.add(release, package, entry)
        except sqlite3.Error as exc:  # the state dir's disk, not the feed
            writer.abort()
            raise FeedError(f"{source}: writing its index {tmp_index}: {exc}") from None
        except BaseException:
            writer.abort()
            raise
        if budget.records == 0:
            writer.abort()
            raise FeedError(f"{source}: no vulnerability records in it")
        meta = {"name": name, "format": fmt[0], "source": source, "updated_at": time.time(), "sha256": digest,
                "entries": writer.entries, "releases": sorted(writer.releases)}
        try:
            writer.finish(meta)
        except sqlite3.Error as exc:
            raise FeedError(f"{source}: writing its index {tmp_index}: {exc}") from None
        _install(d, name, tmp, tmp_index)
        return meta
    finally:
        _remove(tmp)
        _remove(tmp_index)


def feed_rows(path: Path, budget: Budget, fmt: list[str], label: str | None = None) -> Iterator[Row]:
    """Rows of a stored feed of any supported shape, `label` (default: the path) naming it in errors; its
    format is appended to `fmt` once known.
    Schema failures surface as FeedError naming the file and record."""
    label = label or str(path)
    try:
        if path.is_dir():
            fmt.append("osv")
            yield from dir_rows(path, budget, label)
            return
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"PK":
            fmt.append("osv")
            yield from zip_rows(path, budget, label)
        else:
            yield from json_file_rows(path, budget, fmt, label)
    except RecordError as exc:
        raise FeedError(str(exc)) from None
    except OSError as exc:
        raise FeedError(f"{label}: {exc.strerror or exc}") from None


def _install(d: Path, name: str, tmp: Path, tmp_index: Path) -> None:
    """Put the new source and index in place of the old; the index rename is the commit point."""
    raw = d / f"{name}.src"
    old = d / f".old-{name}-{time.time_ns()}"
    if raw.exists() or raw.is_symlink():
        raw.rename(old)
    tmp.rename(raw)
    tmp_index.rename(d / f"{name}{INDEX_SUFFIX}")
    _remove(old)
    _remove(d / f"{name}.index.json")  # the index format before SQLite


def _indexes(state_dir: Path) -> list[Path]:
    d = feeds_dir(state_dir)
    return sorted(d.glob(f"[!.]*{INDEX_SUFFIX}")) if d.exists() else []


def list_feeds(state_dir: Path) -> list[dict[str, Any]]:
    """Metadata of every stored feed."""
    return [feed_index.read_meta(p) for p in _indexes(state_dir)]


def legacy_feeds(state_dir: Path) -> list[str]:
    """Names of feeds stored by a guestward before the SQLite index (`<name>.index.json`): no longer
    read; `feeds update` them again."""
    d = feeds_dir(state_dir)
    return sorted(p.name.removesuffix(".index.json") for p in d.glob("[!.]*.index.json")) if d.exists() else []


def load(state_dir: Path, keys: list[str], packages: Iterable[str] | None = None
         ) -> tuple[list[dict[str, Any]], feed_index.Index]:
    """(metadata of every stored feed, entries for release `keys` and source `packages`, merged across
    feeds); `packages=None` means every package of those releases (tests, small feeds)."""
    metas: list[dict[str, Any]] = []
    merged: feed_index.Index = {}
    pkgs = None if packages is None else sorted(set(packages))
    for p in _indexes(state_dir):
        meta = feed_index.read_meta(p)
        metas.append(meta)
        feed_index.lookup(p, keys, pkgs, merged, meta["name"])
    return metas, merged
