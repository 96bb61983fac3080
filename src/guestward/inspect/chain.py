"""Completing a disk chain whose source did not name the backing files (an image file given directly, or
an inactive domain whose XML has no `<backingStore>`), under one rule:

- the top layer's format is given (`--format`, or `<driver type>`); nothing is probed;
- a qcow2 layer's backing file is the name in its own header, and its format must be recorded in the
  header too (qemu would otherwise probe it: CVE-2010-3851); protocol names (`nbd:`, `json:`) are refused;
- a relative name is resolved against the directory of the image naming it (what qemu does), an absolute
  one is taken as is; symlinks are resolved, and the result must be a regular file inside an allowed
  directory: the top image's directory or one given with `--backing-dir`;
- no file twice (loops), at most MAX_DEPTH layers.

Only the qcow2 header (the first cluster at most) of each layer is read here, in the caller's process;
everything else is read by the sandboxed worker (guestward.inspect.worker).
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from guestward.model.disks import DiskChain, DiskLayer

MAX_DEPTH = 16
QCOW2_MAGIC = b"QFI\xfb"
EXT_BACKING_FORMAT = 0xE2792ACA


class ChainError(ValueError):
    pass


def qcow2_backing(path: str) -> tuple[str | None, str | None]:
    """(backing file name, backing format) from a qcow2 header; (None, None) without a backing file."""
    with open(path, "rb") as f:
        head = f.read(112)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            raise ChainError(f"{path}: declared qcow2 but has no qcow2 header")
        version, = struct.unpack(">I", head[4:8])
        off, = struct.unpack(">Q", head[8:16])
        size, = struct.unpack(">I", head[16:20])
        cluster_bits, = struct.unpack(">I", head[20:24])
        if not off:
            return None, None
        if size > 1023 or not 9 <= cluster_bits <= 21:
            raise ChainError(f"{path}: implausible qcow2 header (backing name {size} bytes)")
        f.seek(off)
        name = f.read(size).decode("utf-8", errors="strict")
        fmt = None
        ext_off = 72 if version == 2 else struct.unpack(">I", head[100:104])[0]
        end = min(off, 1 << cluster_bits)
        f.seek(ext_off)
        while f.tell() + 8 <= end:
            etype, elen = struct.unpack(">II", f.read(8))
            if etype == 0:
                break
            data = f.read(elen)
            f.seek((elen + 7) // 8 * 8 - elen, os.SEEK_CUR)
            if etype == EXT_BACKING_FORMAT:
                fmt = data.decode("ascii", errors="replace")
        return name, fmt


def _allowed(path: Path, dirs: list[Path]) -> bool:
    return any(path == d / path.name or d in path.parents for d in dirs)


def complete(chain: DiskChain, backing_dirs: list[str] | None = None) -> DiskChain:
    """The chain with its open end followed under the rule above; a closed chain is returned unchanged."""
    if not chain.open_end:
        return chain
    top = Path(os.path.realpath(chain.layers[0].path))
    dirs = [top.parent, *(Path(os.path.realpath(d)) for d in backing_dirs or [])]
    layers = list(chain.layers)
    seen = {os.path.realpath(la.path) for la in layers}
    while layers[-1].format == "qcow2":
        if len(layers) >= MAX_DEPTH:
            raise ChainError(f"{chain.target}: backing chain deeper than {MAX_DEPTH}")
        cur = layers[-1].path
        name, fmt = qcow2_backing(cur)
        if name is None:
            break
        if ":" in name.split("/", 1)[0] or name.startswith("json:"):
            raise ChainError(f"{cur}: backing file {name!r} is a protocol name, refused")
        if fmt not in ("raw", "qcow2"):
            raise ChainError(f"{cur}: backing file {name!r} has no recorded format ({fmt!r}); "
                             "guestward never probes one (rebase with -F raw|qcow2)")
        resolved = Path(os.path.realpath(Path(cur).parent / name))
        if not _allowed(resolved, dirs):
            raise ChainError(f"{cur}: backing file {name!r} resolves to {resolved}, outside the allowed "
                             f"directories ({', '.join(map(str, dirs))}; add one with --backing-dir)")
        try:
            st = resolved.stat()
        except OSError as exc:
            raise ChainError(f"{cur}: backing file {resolved}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ChainError(f"{cur}: backing file {resolved} is not a regular file")
        if str(resolved) in seen:
            raise ChainError(f"{cur}: backing chain loops at {resolved}")
        seen.add(str(resolved))
        layers.append(DiskLayer(str(resolved), fmt))
    return DiskChain(chain.target, tuple(layers))


def image_chain(path: str, fmt: str = "raw", backing_dirs: list[str] | None = None) -> DiskChain:
    """The chain of an image file given directly, in format `fmt` (raw unless told)."""
    p = Path(path)
    if not p.is_file():
        raise ChainError(f"{path}: not a regular file")
    return complete(DiskChain(p.name, (DiskLayer(str(p.resolve()), fmt),), open_end=True), backing_dirs)
