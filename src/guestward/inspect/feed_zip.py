"""OSV zips (osv.dev's per-ecosystem `all.zip`) read member by member under the zip-bomb limits.

A zip is refused before anything is decompressed when its central directory is over
`Limits.max_central_dir` bytes or `max_members` entries (read from its end record, before zipfile
loads that directory), when a member declares more than `max_ratio` times its compressed size, or when
the declared total is over `max_uncompressed`; while decompressing, a member may produce no more than
it declared nor more than `max_ratio` times its compressed size. Members are never extracted to disk
(no path in them is used but as a name in errors); only `*.json` members are read.
"""

from __future__ import annotations

import lzma
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from guestward.inspect.feed_schema import Row
from guestward.inspect.feed_stream import BoundedReader, Budget, FeedError, Limits, Prefixed, first_token, osv_doc


def _zip_directory(f: IO[bytes], name: str, limits: Limits) -> None:
    """Refuse a zip whose end record declares too many entries or too large a central directory, before
    zipfile reads that directory into memory."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    tail_len = min(size, 0xFFFF + 22 + 20)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) < i + 22:
        raise FeedError(f"{name}: not a zip (no end of central directory)")
    entries, cd_size = struct.unpack_from("<HI", tail, i + 10)
    if i >= 20 and tail[i - 20:i - 16] == b"PK\x06\x07":  # zip64: the real numbers are in its end record
        f.seek(struct.unpack_from("<Q", tail, i - 20 + 8)[0])
        rec = f.read(56)
        if len(rec) == 56 and rec[:4] == b"PK\x06\x06":
            entries, cd_size = struct.unpack_from("<QQ", rec, 32)
    if entries > limits.max_members:
        raise FeedError(f"{name}: {entries} zip members (at most {limits.max_members})")
    if cd_size > limits.max_central_dir:
        raise FeedError(f"{name}: a zip central directory of {cd_size} bytes (at most {limits.max_central_dir})")


def zip_rows(path: Path, budget: Budget, name: str) -> Iterator[Row]:
    """Rows of an OSV zip (one record or a list per `*.json` member), checked against the zip limits."""
    limits = budget.limits
    with open(path, "rb") as f:
        _zip_directory(f, name, limits)
        try:
            z = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise FeedError(f"{name}: not a readable zip: {exc}") from None
        with z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            if len(infos) > limits.max_members:
                raise FeedError(f"{name}: {len(infos)} zip members (at most {limits.max_members})")
            declared = 0
            for i in infos:
                declared += i.file_size
                if i.file_size > limits.max_ratio * i.compress_size + 4096:
                    raise FeedError(f"{name}: member {i.filename}: {i.file_size} bytes from {i.compress_size} "
                                    f"compressed (over {limits.max_ratio}:1: a zip bomb)")
            if declared > limits.max_uncompressed:
                raise FeedError(f"{name}: {declared} bytes uncompressed (at most {limits.max_uncompressed})")
            for i in infos:
                if not i.filename.endswith(".json"):
                    continue
                member = f"{name}: member {i.filename}"
                try:
                    with z.open(i) as raw:
                        cap = min(i.file_size, limits.max_ratio * i.compress_size + 4096)
                        stream = BoundedReader(raw, member, budget, cap, f"more than the {cap} bytes it may hold")
                        first = first_token(stream)
                        if first not in (b"{", b"["):
                            raise FeedError(f"{member}: not JSON (starts with {first!r})")
                        yield from osv_doc(Prefixed(first, stream), first)
                except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError,
                        RuntimeError, zlib.error, lzma.LZMAError) as exc:  # corrupt, encrypted, unsupported
                    raise FeedError(f"{member}: unreadable: {exc}") from None
