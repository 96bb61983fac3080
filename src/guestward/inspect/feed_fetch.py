"""Bringing a feed's bytes into guestward's state dir: downloaded, or copied from a local file or
directory, bounded, and checked for integrity before anything parses them.

Integrity: an `https://` URL is trusted by its certificate (Python's default context: verified against
the system CAs, host name checked); a redirect away from https is refused. Plain `http://` is refused
unless the operator gives the expected SHA-256, which is then checked; `--sha256` is checked whenever
given (URL or local file). Local files are the operator's own. Other schemes are refused.

Bounds: at most `Limits.max_bytes` bytes are written (download, file, or a directory's files together);
a directory is copied by `feed_tree.walk`, which never follows a symlink and refuses special files,
so nothing outside the named directory is read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from guestward.inspect.feed_stream import FeedError, Limits
from guestward.inspect.feed_tree import walk

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
CHUNK = 1 << 20


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    if not _HEX64.fullmatch(value):
        raise FeedError(f"--sha256 {value!r}: not 64 hex digits")
    return value.lower()


def _copy_stream(read: Callable[[int], bytes], out_path: Path, name: str, limits: Limits,
                 total: list[int], deadline: float) -> str:
    digest = hashlib.sha256()
    with open(out_path, "xb") as out:
        while chunk := read(CHUNK):
            total[0] += len(chunk)
            if total[0] > limits.max_bytes:
                raise FeedError(f"{name}: over {limits.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FeedError(f"{name}: fetching took over {limits.max_seconds:.0f} s")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _verify(name: str, got: str, want: str | None) -> None:
    if want is not None and not hmac.compare_digest(got, want):
        raise FeedError(f"{name}: SHA-256 {got} is not the expected {want}")


def download(url: str, dest: Path, sha256: str | None, limits: Limits) -> str:
    """Stream `url` to `dest`; the SHA-256 of what was written."""
    if url.startswith("http://") and sha256 is None:
        raise FeedError(f"{url}: plain http has no integrity: use https, or give --sha256 of the file")
    deadline = time.monotonic() + limits.max_seconds
    try:
        with urllib.request.urlopen(url, timeout=limits.download_timeout) as resp:
            final = resp.geturl()
            if sha256 is None and not final.startswith("https://"):
                raise FeedError(f"{url}: redirected to {final}, not https (give --sha256 to accept it)")
            got = _copy_stream(resp.read, dest, url, limits, [0], deadline)
    except urllib.error.HTTPError as exc:
        raise FeedError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, FeedError):
            raise
        reason = getattr(exc, "reason", None) or exc
        raise FeedError(f"{url}: {reason}") from None
    _verify(url, got, sha256)
    return got


def copy_file(src: Path, dest: Path, sha256: str | None, limits: Limits) -> str:
    """Copy a regular file (never a FIFO or a device: they could block or never end)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FeedError(f"{src}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FeedError(f"{src}: not a regular file or directory")
        got = _copy_stream(f.read, dest, str(src), limits, [0], time.monotonic() + limits.max_seconds)
    _verify(str(src), got, sha256)
    return got


def copy_dir(src: Path, dest: Path, limits: Limits) -> None:
    """Copy a directory tree of regular files, refusing symlinks and special files (feed_tree.walk)."""
    dest.mkdir()
    total = [0]
    deadline = time.monotonic() + limits.max_seconds

    def on_file(rel: str, fd: int) -> None:
        with os.fdopen(os.dup(fd), "rb") as f:
            _copy_stream(f.read, dest / rel, f"{src}/{rel}", limits, total, deadline)

    walk(src, limits, on_file, lambda rel: (dest / rel).mkdir())


def fetch(source: str, dest: Path, sha256: str | None, limits: Limits) -> tuple[str, str]:
    """Bring `source` (URL, file or directory) to `dest`: (its base name, SHA-256 or "" for a directory)."""
    if "://" in source:
        if not source.startswith(("https://", "http://")):
            raise FeedError(f"{source}: only https:// (or http:// with --sha256) URLs are fetched")
        return source.rstrip("/").rsplit("/", 1)[-1] or "feed", download(source, dest, sha256, limits)
    src = Path(source)
    if src.is_dir():
        if sha256 is not None:
            raise FeedError(f"{source}: --sha256 applies to a file or URL, not a directory")
        copy_dir(src, dest, limits)
        return src.name, ""
    if not src.exists():
        raise FeedError(f"{source}: no such file or directory")
    return src.name, copy_file(src, dest, sha256, limits)
