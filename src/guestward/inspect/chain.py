"""Completing and checking a disk chain, under one rule for every source (an image file given directly,
a domain XML's `<backingStore>` chain, or an inactive domain's XML that names no backing file):

- the top layer's format is given (`--format`, or `<driver type>`); nothing is probed;
- a qcow2 layer's backing file is the name in its own header, and its format must be recorded in the
  header too (qemu would otherwise probe it: CVE-2010-3851); protocol names (`nbd:`, `json:`) are refused;
- a relative name is resolved against the directory of the image naming it (what qemu does), an absolute
  one is taken as is; symlinks are resolved, and the result must be a regular file inside an allowed
  directory: the top image's directory or one given with `--backing-dir`;
- no file twice (loops), at most MAX_DEPTH layers.

A chain that the XML gives layer by layer is held to the same rule: every backing layer, resolved, must be
a regular file in an allowed directory, none twice, at most MAX_DEPTH; the XML cannot point guestward at a
file the header walk would have refused.

No image byte is read here: each qcow2 header is read by the sandboxed worker (runner.read_backing, at most
one cluster of the file), and only its bounded result (a name of at most 1023 bytes, a format of at most 15)
comes back. Errors are ChainError, naming the image, quoting image-given text only through qcow2.shown().
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from guestward.inspect import runner
from guestward.inspect.qcow2 import BackingInfo, shown
from guestward.model.disks import DiskChain, DiskLayer

MAX_DEPTH = 16
PATH_SHOWN = 240  # a resolved host path in a message (its name part came from an image)

HeaderReader = Callable[[str], BackingInfo]


class ChainError(ValueError):
    pass


def _read_backing(path: str) -> BackingInfo:
    try:
        return runner.read_backing(path)
    except runner.WorkerError as exc:
        raise ChainError(str(exc)) from None


def _allowed(path: Path, dirs: list[Path]) -> bool:
    return any(path == d / path.name or d in path.parents for d in dirs)


def _backing_layer(cur: str, given: str, dirs: list[Path], seen: set[str]) -> str:
    """The resolved path of backing file `given` (as named by `cur`), checked against the rule."""
    resolved = Path(os.path.realpath(Path(cur).parent / given))
    if not _allowed(resolved, dirs):
        raise ChainError(f"{cur}: backing file {shown(given)} resolves to {shown(str(resolved), PATH_SHOWN)}, "
                         f"outside the allowed directories ({', '.join(map(str, dirs))}; add one with --backing-dir)")
    try:
        st = resolved.stat()
    except OSError as exc:
        raise ChainError(f"{cur}: backing file {shown(str(resolved), PATH_SHOWN)}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ChainError(f"{cur}: backing file {shown(str(resolved), PATH_SHOWN)} is not a regular file")
    if str(resolved) in seen:
        raise ChainError(f"{cur}: backing chain loops at {shown(str(resolved), PATH_SHOWN)}")
    seen.add(str(resolved))
    return str(resolved)


def complete(chain: DiskChain, backing_dirs: list[str] | None = None,
             read_backing: HeaderReader = _read_backing) -> DiskChain:
    """The chain checked, and its open end followed, under the rule above (an XML-given closed chain is
    checked layer by layer, its paths resolved). `read_backing` reads one qcow2 header (tests: a fake)."""
    if len(chain.layers) > MAX_DEPTH:
        raise ChainError(f"{chain.target}: backing chain deeper than {MAX_DEPTH}")
    top = Path(os.path.realpath(chain.layers[0].path))
    dirs = [top.parent, *(Path(os.path.realpath(d)) for d in backing_dirs or [])]
    layers = [DiskLayer(str(top), chain.layers[0].format)]
    seen = {str(top)}
    for la in chain.layers[1:]:
        layers.append(DiskLayer(_backing_layer(layers[-1].path, la.path, dirs, seen), la.format))
    if not chain.open_end:
        return DiskChain(chain.target, tuple(layers))
    while layers[-1].format == "qcow2":
        cur = layers[-1].path
        info = read_backing(cur)
        if info.name is None:
            break
        name, fmt = info.name, info.format
        if len(layers) >= MAX_DEPTH:
            raise ChainError(f"{chain.target}: backing chain deeper than {MAX_DEPTH}")
        if ":" in name.split("/", 1)[0] or name.startswith("json:"):
            raise ChainError(f"{cur}: backing file {shown(name)} is a protocol name, refused")
        if fmt not in ("raw", "qcow2"):
            raise ChainError(f"{cur}: backing file {shown(name)} has no recorded format ({shown(fmt or '')}); "
                             "guestward never probes one (rebase with -F raw|qcow2)")
        layers.append(DiskLayer(_backing_layer(cur, name, dirs, seen), fmt))
    return DiskChain(chain.target, tuple(layers))


def image_chain(path: str, fmt: str = "raw", backing_dirs: list[str] | None = None,
                read_backing: HeaderReader = _read_backing) -> DiskChain:
    """The chain of an image file given directly, in format `fmt` (raw unless told)."""
    p = Path(path)
    if not p.is_file():
        raise ChainError(f"{path}: not a regular file")
    try:
        chain = DiskChain(p.name, (DiskLayer(str(p.resolve()), fmt),), open_end=True)
    except ValueError as exc:
        raise ChainError(str(exc)) from None
    return complete(chain, backing_dirs, read_backing)
