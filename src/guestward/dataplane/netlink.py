"""Netlink framing shared by the NFLOG reader and the nf_tables dump: messages in a datagram,
attributes in a message, and the attribute encoding for requests. Pure; never raises on bad input
(a truncated or overlong header ends the walk, and says so)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
HEADER = 16  # struct nlmsghdr


def nla(kind: int, data: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    body = struct.pack("=HH", 4 + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


def attributes(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in `buf[start:end]`, until one does not fit."""
    end = len(buf) if end is None else end
    off = start
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", buf, off)
        if length < 4 or off + length > end:
            return
        yield kind & NLA_TYPE_MASK, buf[off + 4:off + length]
        off += (length + 3) & ~3


@dataclass
class Messages:
    """The messages of one datagram as (type, offset, length); `broken`: a header did not fit (the
    walk stopped there); `end`: where the walk stopped."""

    items: list[tuple[int, int, int]] = field(default_factory=list)
    broken: bool = False
    end: int = 0


def messages(buf: bytes) -> Messages:
    out = Messages()
    off = 0
    while off + HEADER <= len(buf):
        length, kind = struct.unpack_from("=IH", buf, off)
        if length < HEADER or off + length > len(buf):
            out.broken = True
            break
        out.items.append((kind, off, length))
        off += (length + 3) & ~3
    out.end = off
    return out


def error_code(buf: bytes, off: int, length: int) -> int | None:
    """The errno an NLMSG_ERROR message carries (0: an ack), or None when it is too short."""
    return -struct.unpack_from("=i", buf, off + HEADER)[0] if length >= HEADER + 4 else None
