"""Reading policy files from disk for `apply`: bounded, no links followed inside a directory.

Contract of `read_sources(path)`: a file, or every `*.yaml` / `*.yml` file under a directory
(sorted), as (name, text). Each file is opened without following a final symbolic link when it was
found in a directory (a link there is reported, never read: it could point at any file root can
read), must be a regular file, is read to at most `MAX_SOURCE_BYTES` + 1 bytes (a larger one is
refused without reading the rest) and must be UTF-8 (a byte order mark is allowed). Every problem is
a `file:line: message` diagnostic, raised together as one PolicyError; FileNotFoundError when `path`
does not exist or a directory holds no policy file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from guestward.policy import Diagnostic, PolicyError
from guestward.policy.parse import MAX_SOURCE_BYTES

SUFFIXES = (".yaml", ".yml")


def read_sources(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    diagnostics: list[Diagnostic] = []
    if path.is_dir():  # the path itself is the user's choice: a link to a directory is followed
        files: list[Path] = []
        for root, dirs, names in os.walk(path, followlinks=False):
            dirs.sort()
            for n in [*names, *dirs]:
                f = Path(root) / n
                if f.is_symlink() and (n.endswith(SUFFIXES) or n in dirs):
                    diagnostics.append(Diagnostic(str(f), 1, "a symbolic link: not followed in a policy directory"))
                elif n in names and n.endswith(SUFFIXES):
                    files.append(f)
        if not files and not diagnostics:
            raise FileNotFoundError(f"{path}: no *.yaml or *.yml files (nothing would be applied)")
        found_in_dir = True
    else:
        files, found_in_dir = [path], False
    out = []
    for f in sorted(files):
        try:
            out.append((str(f), _read(f, follow=not found_in_dir)))
        except _Unread as exc:
            diagnostics.append(Diagnostic(str(f), exc.line, exc.message))
    if diagnostics:
        raise PolicyError(diagnostics)
    return out


class _Unread(Exception):
    def __init__(self, message: str, line: int = 1) -> None:
        self.message = message
        self.line = line


def _read(f: Path, *, follow: bool) -> str:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(f, flags)  # O_NONBLOCK: a FIFO does not hang the open
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unread("a symbolic link: not followed in a policy directory") from None
        raise _Unread(f"cannot read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unread("not a regular file")
        chunks, size = [], 0
        while size <= MAX_SOURCE_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_SOURCE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _Unread(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_SOURCE_BYTES:
        raise _Unread(f"larger than {MAX_SOURCE_BYTES // 1024 // 1024} MiB")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _Unread(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", line) from None
