"""qcow2 headers for the tests: a builder from fields, and hypothesis strategies for well-formed headers and
for hostile ones (a well-formed header with one field set to anything, cut short, or with bytes flipped)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from hypothesis import strategies as st

from guestward.inspect.qcow2 import EXT_BACKING_FORMAT


@dataclass(frozen=True)
class Header:
    version: int = 3
    cluster_bits: int = 16
    header_length: int = 104
    name: bytes | None = b"base.raw"
    fmt: bytes | None = b"raw"
    other_exts: tuple[tuple[int, bytes], ...] = ()
    # raw overrides, applied after layout: (offset, struct format, value)
    pokes: tuple[tuple[int, str, int], ...] = ()
    cut: int | None = None  # file length (None: the whole cluster)
    flips: tuple[tuple[int, int], ...] = field(default=())

    def exts(self) -> list[tuple[int, bytes]]:
        out = list(self.other_exts)
        if self.fmt is not None:
            out.insert(0, (EXT_BACKING_FORMAT, self.fmt))
        return out

    def layout(self) -> tuple[int, int]:
        """(offset of the backing name, end of the extensions)."""
        pos = self.header_length if self.version == 3 else 72
        for _, data in self.exts():
            pos += 8 + (len(data) + 7) // 8 * 8
        return pos + 8, pos + 8

    def build(self) -> bytes:
        cluster = 1 << self.cluster_bits
        name_off, _ = self.layout()
        size = max(cluster, name_off + len(self.name or b""))
        buf = bytearray(size)
        off = name_off if self.name is not None else 0
        struct.pack_into(">4sIQII", buf, 0, b"QFI\xfb", self.version, off, len(self.name or b""), self.cluster_bits)
        struct.pack_into(">Q", buf, 24, 1 << 30)
        if self.version == 3:
            struct.pack_into(">I", buf, 96, 4)
            struct.pack_into(">I", buf, 100, self.header_length)
        pos = self.header_length if self.version == 3 else 72
        for etype, data in self.exts():
            struct.pack_into(">II", buf, pos, etype, len(data))
            buf[pos + 8:pos + 8 + len(data)] = data
            pos += 8 + (len(data) + 7) // 8 * 8
        struct.pack_into(">II", buf, pos, 0, 0)
        if self.name is not None:
            buf[name_off:name_off + len(self.name)] = self.name
        for at, fmt, value in self.pokes:
            if at + struct.calcsize(fmt) <= len(buf):
                struct.pack_into(fmt, buf, at, value)
        for at, x in self.flips:
            if at < len(buf):
                buf[at] ^= x
        return bytes(buf[: self.cut] if self.cut is not None else buf)

    def fits(self) -> bool:
        return self.layout()[0] + len(self.name or b"") <= 1 << self.cluster_bits


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1,
                max_size=80).map(lambda s: s.encode()).filter(lambda b: len(b) <= 1023)
formats = st.one_of(st.none(), st.sampled_from([b"raw", b"qcow2"]),
                    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=15).map(str.encode))
other_exts = st.lists(st.tuples(st.integers(1, 0xFFFFFFFF).filter(lambda t: t != EXT_BACKING_FORMAT),
                                st.binary(max_size=48)), max_size=3).map(tuple)


@st.composite
def well_formed(draw: st.DrawFn) -> Header:
    version = draw(st.sampled_from([2, 3]))
    h = Header(version=version, cluster_bits=draw(st.integers(9, 16)),
               header_length=104 + 8 * draw(st.integers(0, 4)) if version == 3 else 104,
               name=draw(st.one_of(st.none(), names)), fmt=draw(formats), other_exts=draw(other_exts))
    return h


u32 = st.one_of(st.sampled_from([0, 1, 7, 8, 71, 72, 103, 104, 511, 4096, 65535, 65536, 1 << 21, 1 << 31,
                                 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))
u64 = st.one_of(u32, st.sampled_from([1 << 32, 1 << 63, (1 << 64) - 1]), st.integers(0, (1 << 64) - 1))
# The fields a hostile image sets: version, backing name offset and size, cluster_bits, header_length; and
# the type and length of the first extension (at 104 in a v3 header of the default length).
POKES = st.one_of(
    st.tuples(st.just(4), st.just(">I"), u32), st.tuples(st.just(8), st.just(">Q"), u64),
    st.tuples(st.just(16), st.just(">I"), u32), st.tuples(st.just(20), st.just(">I"), u32),
    st.tuples(st.just(100), st.just(">I"), u32), st.tuples(st.just(104), st.just(">I"), u32),
    st.tuples(st.just(108), st.just(">I"), u32))


@st.composite
def hostile(draw: st.DrawFn) -> Header:
    h = draw(well_formed())
    kind = draw(st.sampled_from(["poke", "cut", "flip", "mixed"]))
    if kind in ("poke", "mixed"):
        h = replace(h, pokes=tuple(draw(st.lists(POKES, min_size=1, max_size=3))))
    if kind in ("cut", "mixed"):
        h = replace(h, cut=draw(st.integers(0, 1 << h.cluster_bits)))
    if kind == "flip":
        h = replace(h, flips=tuple(draw(st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)),
                                                  min_size=1, max_size=8))))
    return h
