"""Hostile feed files: zip bombs and huge or deep JSON are refused with an error naming the input and
the limit, in bounded time and memory (the real command under an address-space limit), and the feed
stored before stays in force. Variants are generated (hypothesis) against small limits; one large
instance per class runs through the real `guestward feeds update` with the default limits."""

from __future__ import annotations

import json
import random
import re
import struct
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guestward.inspect import feeds
from guestward.inspect.feed_stream import Limits
from tests.inspect.feedkit import NAME, bounded_cli, osv, stored_feed, tracker_cve

SMALL = Limits(max_bytes=8 << 20, max_uncompressed=1 << 20, max_ratio=100, max_members=50,
               max_central_dir=4096, max_record=64 << 10, max_depth=32, max_seconds=30)
HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _zip(path: Path, members: dict[str, bytes], level: int = 9) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _shrink_declared_size(path: Path, member: str, size: int) -> None:
    """Make the central directory declare `size` bytes for `member` (a lying header)."""
    data = bytearray(path.read_bytes())
    i = data.find(b"PK\x01\x02" + data[data.find(b"PK\x01\x02") + 4:][:0])
    while i >= 0:
        name_len = struct.unpack_from("<H", data, i + 28)[0]
        if data[i + 46:i + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, i + 24, size)
        i = data.find(b"PK\x01\x02", i + 46)
    path.write_bytes(bytes(data))


def _refused(state_dir: Path, source: Path, pattern: str) -> None:
    with pytest.raises(feeds.FeedError) as exc:
        feeds.update(state_dir, str(source), NAME, limits=SMALL)
    assert re.search(pattern, str(exc.value)), str(exc.value)
    assert str(exc.value).startswith(str(source)), str(exc.value)


ZIP_KINDS = ["ratio", "total", "members", "central-dir", "lying-size", "nested-zip", "not-json", "corrupt",
             "encrypted"]


@HYP
@given(kind=st.sampled_from(ZIP_KINDS), n=st.integers(min_value=1, max_value=6), seed=st.integers(0, 2**32 - 1))
def test_zip_bombs_are_refused_before_they_inflate(kind: str, n: int, seed: int) -> None:
    """Each zip-bomb shape is refused with the member or limit named, and the stored feed stays."""
    good = json.dumps(osv("CVE-2099-0001")).encode()
    noise = random.Random(seed).randbytes(256 << 10)  # incompressible
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        before = stored_feed(tmp)
        z = tmp / "Debian.zip"
        if kind == "ratio":  # n MiB of zeros: ~1000:1
            _zip(z, {"ok.json": good, "bomb.json": b"[" + b" " * (n << 20) + b"]"})
            pattern = r"member bomb\.json: \d+ bytes from \d+ compressed \(over 100:1: a zip bomb\)"
        elif kind == "total":  # each member plausible, together over max_uncompressed
            _zip(z, {f"m{i}.json": noise for i in range(4 + n)}, level=1)
            pattern = r"\d+ bytes uncompressed \(at most 1048576\)"
        elif kind == "members":
            _zip(z, {f"{i}.json": good for i in range(51 + n * 10)})
            pattern = rf"{51 + n * 10} zip members \(at most 50\)"
        elif kind == "central-dir":  # few members, long names: the directory itself is the load
            _zip(z, {("x" * 200 + f"{i}.json"): good for i in range(20 + n)})
            pattern = r"a zip central directory of \d+ bytes \(at most 4096\)"
        elif kind == "lying-size":  # declares a small size, inflates to much more
            _zip(z, {"ok.json": good, "liar.json": b"[" + b" " * (n << 20) + b"]"})
            _shrink_declared_size(z, "liar.json", 1000)
            pattern = r"member liar\.json: unreadable: .*(CRC|crc)"
        elif kind == "nested-zip":
            inner = tmp / "inner.zip"
            _zip(inner, {"a.json": b"[" + b" " * (n << 20) + b"]"})
            _zip(z, {"ok.json": good, "inner.json": inner.read_bytes()})
            pattern = r"member inner\.json: not JSON \(starts with b'P'\)"
        elif kind == "corrupt":  # the deflate stream of the last member overwritten
            _zip(z, {"ok.json": good, "bad.json": json.dumps([osv(f"CVE-{i}") for i in range(50 * n)]).encode()})
            data = bytearray(z.read_bytes())
            start = data.rfind(b"bad.json", 0, data.find(b"PK\x01\x02")) + len("bad.json")
            data[start + 10:start + 60] = bytes((seed + i) % 256 for i in range(50))
            z.write_bytes(bytes(data))
            pattern = r"member bad\.json: (unreadable: .+|not valid JSON: .+|not JSON .+)"
        elif kind == "encrypted":  # the general-purpose "encrypted" bit set: needs a password
            _zip(z, {"ok.json": good, "enc.json": good})
            data = bytearray(z.read_bytes())
            i = data.rfind(b"PK\x01\x02")
            data[i + 8] |= 1
            z.write_bytes(bytes(data))
            pattern = r"member enc\.json: unreadable: File <ZipInfo .*> is encrypted, password required for extraction"
        else:
            _zip(z, {"ok.json": good, "junk.json": noise})
            pattern = r"member junk\.json: not JSON"
        _refused(before.state, z, pattern)
        before.assert_in_force()


JSON_KINDS = ["long-string", "long-key", "long-number", "long-array", "deep", "padding", "tracker-cve",
              "tracker-key", "total", "truncated", "scalar-top", "tracker-shape"]


for _k in ZIP_KINDS:  # every kind at least once, whatever hypothesis draws
    test_zip_bombs_are_refused_before_they_inflate = example(kind=_k, n=1, seed=7)(
        test_zip_bombs_are_refused_before_they_inflate)


def _json_variant(kind: str, n: int) -> tuple[bytes, str]:
    big = 140_000 * n  # over SMALL.max_record (64 KiB) plus the parser's 64 KiB read buffer
    rec = osv("CVE-2099-0002")
    if kind == "long-string":
        return json.dumps([osv("CVE-2099-0001"), {**rec, "details": "a" * big}]).encode(), r"a record over 65536 bytes"
    if kind == "long-key":
        return json.dumps([{**rec, "k" * big: 1}]).encode(), r"a record over 65536 bytes"
    if kind == "long-number":
        return b'[{"id": "X", "modified": "m", "n": ' + b"1" * big + b"}]", r"a record over 65536 bytes"
    if kind == "long-array":
        return json.dumps([{**rec, "aliases": ["CVE-1"] * (big // 8)}]).encode(), r"a record over 65536 bytes"
    if kind == "deep":
        d = 33 + n
        return (b'[{"id": "X", "modified": "m", "database_specific": ' + b"[" * d + b"]" * d + b"}]",
                r"JSON nested deeper than 32")
    if kind == "padding":  # nothing but whitespace between two records
        return b"[" + json.dumps(rec).encode() + b"," + b" " * big + json.dumps(rec).encode() + b"]", \
            r"a record over 65536 bytes"
    if kind == "tracker-cve":
        return json.dumps({"glibc": {"CVE-1": {**tracker_cve(), "description": "d" * big}}}).encode(), \
            r"a record over 65536 bytes"
    if kind == "tracker-key":
        return json.dumps({"glibc": {"CVE-1": tracker_cve()}, "p" * big: {}}).encode(), r"a record over 65536 bytes"
    if kind == "total":  # every record small, the document over max_uncompressed
        return json.dumps([osv(f"CVE-2099-{i}") for i in range(4000 * n)]).encode(), \
            r"over 1048576 bytes uncompressed"
    if kind == "truncated":
        return json.dumps([rec, rec])[: -5 * n].encode(), r"not valid JSON"
    if kind == "scalar-top":
        return b"[" + b"1, " * n + b"2]", r"record 1: an OSV record is a JSON object, not int"
    return json.dumps({"glibc": ["CVE-1"] * n}).encode(), r"the tracker maps source -> CVE -> record"


@HYP
@given(kind=st.sampled_from(JSON_KINDS), n=st.integers(min_value=1, max_value=5))
def test_huge_or_deep_json_is_refused_per_record(kind: str, n: int) -> None:
    """No record (nor the bytes between two) may exceed max_record, nesting is bounded, the total is
    bounded; each refusal names the file and the limit, and the stored feed stays in force."""
    data, pattern = _json_variant(kind, n)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        before = stored_feed(tmp)
        src = tmp / "hostile.json"
        src.write_bytes(data)
        _refused(before.state, src, pattern)
        before.assert_in_force()


for _k in JSON_KINDS:
    test_huge_or_deep_json_is_refused_per_record = example(kind=_k, n=1)(test_huge_or_deep_json_is_refused_per_record)


def test_zip_bomb_through_the_cli_in_bounded_memory_and_time(tmp_path: Path) -> None:
    """512 MiB of JSON padding deflated to ~0.5 MB: refused from the declared sizes, under 256 MiB of
    address space and in seconds; `feeds list` still shows the stored feed."""
    before = stored_feed(tmp_path)
    z = tmp_path / "Debian.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("bomb.json", "w", force_zip64=True) as m:
        m.write(b"[")
        chunk = b" " * (1 << 20)
        for _ in range(512):
            m.write(chunk)
        m.write(b"]")
    assert z.stat().st_size < 1 << 20
    r = bounded_cli("feeds", "update", "--from", str(z), "--name", NAME, "--state-dir", str(before.state))
    assert r.returncode == 2, r
    assert re.fullmatch(rf"error: {re.escape(str(z))}: member bomb\.json: 536870914 bytes from \d+ compressed "
                        r"\(over 100:1: a zip bomb\)", r.stderr), r.stderr
    assert r.seconds < 15 and r.max_rss_mb < 200, r
    before.assert_in_force()


def test_huge_json_through_the_cli_in_bounded_memory_and_time(tmp_path: Path) -> None:
    """A 200 MB record is refused after 16 MiB of it were read, under 256 MiB of address space."""
    before = stored_feed(tmp_path)
    src = tmp_path / "huge.json"
    with open(src, "wb") as f:
        f.write(b'[{"id": "CVE-2099-0001", "modified": "m", "details": "')
        chunk = b"a" * (1 << 20)
        for _ in range(200):
            f.write(chunk)
        f.write(b'"}]')
    r = bounded_cli("feeds", "update", "--from", str(src), "--name", NAME, "--state-dir", str(before.state))
    assert r.returncode == 2, r
    assert re.fullmatch(rf"error: {re.escape(str(src))}: a record over 16777216 bytes \(near byte \d+\)",
                        r.stderr), r.stderr
    assert r.seconds < 20 and r.max_rss_mb < 200, r
    before.assert_in_force()
