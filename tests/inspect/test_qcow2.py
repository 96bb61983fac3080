"""qcow2 header parsing (pure): well-formed headers give exactly their fields; hostile ones (every header
field set to anything, cut anywhere, bytes flipped) give a bounded result or a short Qcow2Error, never
another exception; headers made by qemu-img itself parse to what was asked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestward.inspect.qcow2 import MAX_CLUSTER, MAX_FORMAT, MAX_NAME, BackingInfo, Qcow2Error, parse_header
from tests.inspect.qcow2_gen import Header, hostile, well_formed

MAX_MESSAGE = 300


@settings(max_examples=200, deadline=None)
@given(well_formed())
def test_well_formed_headers_give_their_fields(h: Header) -> None:
    buf = h.build()
    if not h.fits():
        with pytest.raises(Qcow2Error, match="outside the header cluster"):
            parse_header(buf)
        return
    expected_fmt = h.fmt.decode() if h.fmt is not None and h.name is not None else None
    assert parse_header(buf) == BackingInfo(h.name.decode() if h.name is not None else None, expected_fmt)


@settings(max_examples=600, deadline=None)
@given(hostile())
def test_hostile_headers_give_a_bounded_result_or_a_short_error(h: Header) -> None:
    buf = h.build()
    try:
        info = parse_header(buf)
    except Qcow2Error as exc:
        assert 0 < len(str(exc)) <= MAX_MESSAGE
        assert "\n" not in str(exc)
        return
    assert info.name is None or (0 < len(info.name.encode()) <= MAX_NAME and "\0" not in info.name)
    assert info.format is None or (len(info.format) <= MAX_FORMAT and info.format.isalnum())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"QFI\xfb\x00\x00\x00\x03", b"QFI\xfb\x00\x00\x00\x02"]))
def test_arbitrary_bytes_after_the_magic(tail: bytes, magic: bytes) -> None:
    try:
        parse_header(magic + tail)
    except Qcow2Error as exc:
        assert len(str(exc)) <= MAX_MESSAGE


@pytest.mark.parametrize(("buf", "message"), [
    (Header().build()[:90], "truncated qcow2 v3 header (90 bytes"),  # the 90-byte v3 header
    (b"QFI\xfb" + bytes(10), "no qcow2 header"),
    (b"NOPE" + bytes(200), "no qcow2 header"),
    (Header(cluster_bits=31).build()[:4096], "cluster_bits 31"),
    (Header(pokes=((108, ">I", 0xFFFFFFFF),)).build(), "declares 4294967295 bytes, past the end of the header"),
    (Header(name=None, fmt=None, other_exts=((0x1234, b"x" * 70000),)).build(), "declares 70000 bytes"),
    (Header(cluster_bits=16, fmt=b"r" * 4000).build(), "is not a format name"),
    (Header(name=b"\xff\xfe").build(), "is not UTF-8"),
    (Header(name=b"a\0b").build(), "holds a NUL byte"),
    (Header(pokes=((16, ">I", 0xFFFFFFFF),)).build(), "backing name 4294967295 bytes"),
    (Header(pokes=((8, ">Q", (1 << 64) - 1),)).build(), "outside the header cluster"),
    (Header(pokes=((100, ">I", 0xFFFFFFFF),)).build(), "header length 4294967295"),
    (Header(pokes=((4, ">I", 4),)).build(), "unsupported qcow2 version 4"),
    (Header().build()[:110], "truncated qcow2 header"),
    (Header(fmt=b"raw", other_exts=((0x6803F857, b"\1" * 24),)).build()[:140], "truncated"),
], ids=["v3-90-bytes", "short", "no-magic", "cluster-bits-31", "ext-len-ffffffff", "ext-over-cluster",
        "long-format", "name-not-utf8", "name-nul", "name-size-ffffffff", "name-offset-max", "header-len-ffffffff",
        "version-4", "cut-in-ext-header", "cut-in-ext-data"])
def test_named_hostile_headers(buf: bytes, message: str) -> None:
    with pytest.raises(Qcow2Error) as exc:
        parse_header(buf)
    assert message in str(exc.value) and len(str(exc.value)) <= MAX_MESSAGE


def test_quoted_image_text_is_cut() -> None:
    with pytest.raises(Qcow2Error) as exc:
        parse_header(Header(fmt=b"\x01" * 15).build())
    assert len(str(exc.value)) < 120


@pytest.mark.parametrize(("name", "fmt", "extra"), [
    ("base.raw", "raw", []), ("../other dir/b\u00e4se.qcow2", "qcow2", []), ("/abs/base", "raw", []),
    ("x" * 1023, "raw", []), ("base.qcow2", "qcow2", ["-o", "cluster_size=512"]),
    ("base.qcow2", "qcow2", ["-o", "compat=0.10"]), ("base.raw", "raw", ["-o", "cluster_size=2M"]),
])
def test_headers_made_by_qemu_img(tmp_path: Path, name: str, fmt: str, extra: list[str]) -> None:
    img = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", name, "-F", fmt, "-u", *extra, str(img), "64M"],
                   check=True, capture_output=True)
    assert parse_header(img.read_bytes()[:MAX_CLUSTER]) == BackingInfo(name, fmt)
    plain = tmp_path / "plain.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(plain), "64M"], check=True)
    assert parse_header(plain.read_bytes()[:MAX_CLUSTER]) == BackingInfo(None, None)
