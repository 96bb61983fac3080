"""Directory feeds (a checkout of OSV records) walked by file descriptor, never following a symlink.

A symlink, FIFO, socket or device anywhere in the tree is a FeedError naming it (never opened), as is a
tree deeper than `Limits.max_depth` or with more than `max_members` files; every open is relative to
its directory's descriptor with O_NOFOLLOW, so nothing outside the named directory is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from guestward.inspect.feed_schema import Row
from guestward.inspect.feed_stream import BoundedReader, Budget, FeedError, Limits, Prefixed, first_token, osv_doc


def walk(root: Path, limits: Limits, on_file: Callable[[str, int], None],
         on_dir: Callable[[str], None] | None = None, label: str | None = None) -> None:
    """Visit a directory tree by file descriptor, never following a symlink: `on_file(relpath, fd)` for
    each regular file (fd open for reading), `on_dir(relpath)` for each directory below the root.
    A symlink, FIFO, socket or device anywhere is a FeedError naming it; so is depth or count over limits."""
    count = 0
    shown = label or str(root)

    def visit(dfd: int, rel: str, depth: int) -> None:
        nonlocal count
        if depth > limits.max_depth:
            raise FeedError(f"{shown}/{rel}: directories nested deeper than {limits.max_depth}")
        for entry in sorted(os.scandir(dfd), key=lambda e: e.name):
            sub = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise FeedError(f"{shown}/{sub}: a symlink in a directory feed (not followed)")
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    if on_dir:
                        on_dir(sub)
                    visit(fd, sub, depth + 1)
                finally:
                    os.close(fd)
            elif stat.S_ISREG(st.st_mode):
                count += 1
                if count > limits.max_members:
                    raise FeedError(f"{shown}: more than {limits.max_members} files in a directory feed")
                fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since scandir
                        raise FeedError(f"{shown}/{sub}: not a regular file")
                    on_file(sub, fd)
                finally:
                    os.close(fd)
            else:
                raise FeedError(f"{shown}/{sub}: not a regular file or directory (never read)")

    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise FeedError(f"{shown}: {exc.strerror}") from None
    try:
        visit(top, "", 0)
    except OSError as exc:
        raise FeedError(f"{shown}: {exc.filename or ''}: {exc.strerror}") from None
    finally:
        os.close(top)


def dir_rows(root: Path, budget: Budget, label: str) -> Iterator[Row]:
    """Rows of an OSV directory: every `*.json` file in it (one record or a list), symlinks refused."""
    files: list[str] = []
    walk(root, budget.limits, lambda rel, fd: files.append(rel) if rel.endswith(".json") else None, None, label)
    for rel in files:
        name = f"{label}/{rel}"
        with open(root / rel, "rb", opener=lambda p, fl: os.open(p, fl | os.O_NOFOLLOW)) as raw:
            first = first_token(raw)
            if first not in (b"{", b"["):
                raise FeedError(f"{name}: not JSON (starts with {first!r})")
            yield from osv_doc(Prefixed(first, BoundedReader(raw, name, budget)), first)
