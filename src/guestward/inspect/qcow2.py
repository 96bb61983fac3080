"""The backing-file fields of a qcow2 header, parsed from bytes already read (no I/O here).

Contract: `parse_header(buf)` takes at most the image's first cluster (the caller reads
`header_read_size(first 104 bytes)` bytes, never more than MAX_CLUSTER) and returns the backing file
name and the backing format recorded in the header extension, or raises Qcow2Error with a short message.
Everything it returns or says is bounded: the name by MAX_NAME bytes (qemu's own limit), the format by
MAX_FORMAT bytes (qemu keeps it in a char[16]); error texts quote image bytes only through `shown()`.
As in qemu, the header, its extensions and the backing file name all lie inside the first cluster; a field
pointing past it, a truncated header or extension, a name that is not UTF-8 or holds a NUL is an error,
never an exception of another type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
V2_HEADER = 72
V3_HEADER = 104
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21  # qemu's range: 512 B .. 2 MiB
MAX_CLUSTER = 1 << MAX_CLUSTER_BITS
MAX_NAME = 1023
MAX_FORMAT = 15
SHOWN = 64


class Qcow2Error(ValueError):
    pass


@dataclass(frozen=True)
class BackingInfo:
    name: str | None  # None: no backing file
    format: str | None  # None: no backing-format extension


def shown(data: bytes | str, limit: int = SHOWN) -> str:
    """Image-controlled text as it may appear in a message: repr'd, at most `limit` characters of it."""
    r = repr(data if isinstance(data, str) else bytes(data[:limit]))
    return r if len(r) <= limit else r[:limit] + "..."


def header_read_size(head: bytes) -> int:
    """How many bytes of the image `parse_header` needs: its first cluster (from the first 24 bytes)."""
    if len(head) < 24 or head[:4] != MAGIC:
        raise Qcow2Error("declared qcow2 but has no qcow2 header")
    cluster_bits: int = struct.unpack_from(">I", head, 20)[0]
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise Qcow2Error(f"implausible qcow2 header (cluster_bits {cluster_bits})")
    return 1 << cluster_bits


def parse_header(buf: bytes) -> BackingInfo:
    """The backing file name and format of the qcow2 image whose first bytes (up to a cluster) are `buf`."""
    cluster = header_read_size(buf)
    buf = buf[:cluster]
    if len(buf) < V2_HEADER:
        raise Qcow2Error(f"truncated qcow2 header ({len(buf)} bytes)")
    version, off, size = struct.unpack_from(">IQI", buf, 4)
    if version not in (2, 3):
        raise Qcow2Error(f"unsupported qcow2 version {version}")
    if version == 2:
        ext_off = V2_HEADER
    else:
        if len(buf) < V3_HEADER:
            raise Qcow2Error(f"truncated qcow2 v3 header ({len(buf)} bytes, {V3_HEADER} needed)")
        ext_off, = struct.unpack_from(">I", buf, 100)
        if ext_off < V3_HEADER or ext_off > cluster:  # what qemu checks
            raise Qcow2Error(f"implausible qcow2 v3 header length {ext_off}")
    name = None
    if off:
        if size > MAX_NAME or size == 0:
            raise Qcow2Error(f"implausible qcow2 header (backing name {size} bytes)")
        if off < ext_off or off + size > cluster:
            raise Qcow2Error(f"qcow2 backing name at {off}+{size} lies outside the header cluster "
                             f"({ext_off}..{cluster})")
        if off + size > len(buf):
            raise Qcow2Error("truncated qcow2 header (the backing name is past the end of the file)")
        raw = buf[off:off + size]
        try:
            name = raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise Qcow2Error(f"qcow2 backing name {shown(raw)} is not UTF-8") from None
        if "\0" in name:
            raise Qcow2Error(f"qcow2 backing name {shown(name)} holds a NUL byte")
    fmt = _backing_format(buf, ext_off, off if off else cluster)
    return BackingInfo(name, fmt if name is not None else None)


def _backing_format(buf: bytes, pos: int, end: int) -> str | None:
    """The backing-format extension's value, walking the extensions from `pos` up to `end` (qemu's walk)."""
    fmt = None
    while pos < end:
        if pos + 8 > min(end, len(buf)):
            raise Qcow2Error(f"truncated qcow2 header extension at {pos}")
        etype, elen = struct.unpack_from(">II", buf, pos)
        if etype == EXT_END:
            return fmt
        data_end = pos + 8 + elen
        if data_end > end:
            raise Qcow2Error(f"qcow2 header extension 0x{etype:08x} at {pos} declares {elen} bytes, "
                             f"past the end of the header ({end})")
        if data_end > len(buf):
            raise Qcow2Error(f"truncated qcow2 header extension 0x{etype:08x} at {pos}")
        if etype == EXT_BACKING_FORMAT:
            if fmt is not None:
                raise Qcow2Error("qcow2 header records the backing format twice")
            data = buf[pos + 8:data_end]
            if not 0 < elen <= MAX_FORMAT or not data.isascii() or not data.isalnum():
                raise Qcow2Error(f"qcow2 backing format {shown(data)} is not a format name")
            fmt = data.decode("ascii")
        pos += 8 + (elen + 7) // 8 * 8
    return fmt
