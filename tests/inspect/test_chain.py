"""Chain completion and checking: qcow2 headers are read by the sandboxed worker, bounded; a hostile header
gives a short error naming the image, in bounded time and memory (the CLI under an address-space limit),
and nothing is changed; an XML-given chain is held to the same rule as a header-given one."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.hypervisor.disks import chains_from_xml
from guestward.inspect.chain import MAX_DEPTH, ChainError, complete, image_chain
from guestward.inspect.qcow2 import BackingInfo, Qcow2Error, parse_header
from guestward.inspect.runner import MAX_ERROR, WorkerError, inspect_chains, read_backing
from tests.inspect.conftest import run
from tests.inspect.qcow2_gen import Header, hostile

pytestmark = pytest.mark.inspect

CLI_AS_LIMIT = 1 << 30  # the whole CLI, worker included, runs under 1 GiB of address space
CLI_SECONDS = 30.0


def digest(d: Path) -> dict[str, str]:
    """Every file under `d` and its content hash: what 'nothing changed' means here."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def cli(*args: str) -> tuple[int, str, float]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CLI_AS_LIMIT, CLI_AS_LIMIT))
    start = time.monotonic()
    p = subprocess.run([str(Path(sys.executable).parent / "guestward"), *args], capture_output=True, text=True,
                       preexec_fn=limit, timeout=CLI_SECONDS * 2)
    return p.returncode, p.stderr, time.monotonic() - start


def qemu_overlay(d: Path, name: str = "base.raw", fmt: str = "raw") -> Path:
    (d / "base.raw").write_bytes(b"\0" * 65536)
    img = d / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", name, "-F", fmt, "-u", str(img), "64M")
    return img


def patch(img: Path, at: int, data: bytes) -> None:
    with open(img, "r+b") as f:
        f.seek(at)
        f.write(data)


def ext_offset(img: Path) -> int:
    return img.read_bytes()[:65536].find(bytes.fromhex("E2792ACA"))


# The issue's reproducers and their neighbours, made from real qemu-img images: (mutation, expected text).
def issue_ext_len(img: Path) -> None:  # extension length 0xFFFFFFFF, file truncated to 64 MiB (sparse)
    patch(img, ext_offset(img) + 4, b"\xff\xff\xff\xff")
    os.truncate(img, 64 << 20)


def v3_90_bytes(img: Path) -> None:
    os.truncate(img, 90)


def truncated_extension(img: Path) -> None:
    os.truncate(img, ext_offset(img) + 6)


def format_too_long(img: Path) -> None:
    patch(img, ext_offset(img) + 4, (4000).to_bytes(4, "big"))


def name_size_huge(img: Path) -> None:
    patch(img, 16, b"\xff\xff\xff\xff")


def name_offset_far(img: Path) -> None:
    patch(img, 8, (1 << 40).to_bytes(8, "big"))


def cluster_bits_31(img: Path) -> None:
    patch(img, 20, (31).to_bytes(4, "big"))


def header_length_huge(img: Path) -> None:
    patch(img, 100, b"\xff\xff\xff\xf8")


def name_not_utf8(img: Path) -> None:
    off = int.from_bytes(img.read_bytes()[8:16], "big")
    patch(img, off, b"\xff\xfe")


HOSTILE = {
    "ext-len-ffffffff-64MiB": (issue_ext_len, "declares 4294967295 bytes, past the end of the header"),
    "v3-90-bytes": (v3_90_bytes, "truncated qcow2 v3 header (90 bytes"),
    "truncated-extension": (truncated_extension, "truncated qcow2 header"),
    "format-4000-bytes": (format_too_long, "past the end of the header"),
    "name-size-ffffffff": (name_size_huge, "backing name 4294967295 bytes"),
    "name-offset-1TiB": (name_offset_far, "outside the header cluster"),
    "cluster-bits-31": (cluster_bits_31, "cluster_bits 31"),
    "header-length-huge": (header_length_huge, "header length 4294967288"),
    "name-not-utf8": (name_not_utf8, "is not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_qcow2_header_through_the_cli(tmp_path: Path, case: str) -> None:
    mutate, expected = HOSTILE[case]
    img = qemu_overlay(tmp_path)
    mutate(img)
    before = digest(tmp_path)
    rc, err, took = cli("inspect", "--image", str(img), "--format", "qcow2", "--no-store",
                        "--state-dir", str(tmp_path / "state"))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err[:2000]
    assert lines[0].startswith(f"error: {img}: ") and expected in lines[0], lines[0]
    assert len(lines[0]) <= MAX_ERROR + 20 and "Traceback" not in err
    assert took < CLI_SECONDS
    assert digest(tmp_path) == before  # nothing changed, nothing left behind (no state: --no-store, failed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=hostile())
def test_worker_reads_hostile_headers_like_the_pure_parser(tmp_path: Path, h: Header) -> None:
    """Through the real sandboxed worker (memory-limited): the same answer as the pure parser, or the same
    error with the image's name in front, always short."""
    img = tmp_path / "h.qcow2"
    img.write_bytes(h.build())
    try:
        want: BackingInfo | str = parse_header(h.build())
    except Qcow2Error as exc:
        want = str(exc)
    try:
        got: BackingInfo | str = read_backing(str(img))
    except WorkerError as exc:
        assert str(exc).startswith(f"{img}: ") and len(str(exc)) <= MAX_ERROR + 10
        got = str(exc)[len(f"{img}: "):]
    assert got == want


def test_worker_reads_a_2mib_cluster_header_and_a_sparse_terabyte(tmp_path: Path) -> None:
    img = tmp_path / "big.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "-b", "base.raw", "-F", "raw", "-u",
        str(img), "1T")
    os.truncate(img, 1 << 40)
    assert read_backing(str(img)) == BackingInfo("base.raw", "raw")


@pytest.mark.parametrize("what", ["fifo", "directory", "missing", "symlink-to-fifo"])
def test_header_of_a_non_file_is_refused_before_any_read(tmp_path: Path, what: str) -> None:
    p = tmp_path / "x.qcow2"
    if what == "fifo":
        os.mkfifo(p)
    elif what == "directory":
        p.mkdir()
    elif what == "symlink-to-fifo":
        os.mkfifo(tmp_path / "f")
        p.symlink_to(tmp_path / "f")
    start = time.monotonic()
    with pytest.raises(WorkerError) as exc:
        read_backing(str(p))
    assert str(exc.value).startswith(f"{p}: ") and time.monotonic() - start < 5


def test_chain_completion_uses_the_worker(tmp_path: Path) -> None:
    mid = tmp_path / "mid.qcow2"
    (tmp_path / "base.raw").write_bytes(b"\0" * 4096)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-u", str(mid), "64M")
    top = tmp_path / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "-u", str(top), "64M")
    assert image_chain(str(top), "qcow2").paths() == [str(top), str(mid), str(tmp_path / "base.raw")]


# XML-given chains: the same rule.

def xml(top: str, fmt: str, backing: list[tuple[str, str]], close: bool = True) -> str:
    inner = "<backingStore/>" if close else ""
    for path, bfmt in reversed(backing):
        inner = f"<backingStore type='file'><format type='{bfmt}'/><source file='{path}'/>{inner}</backingStore>"
    return (f"<domain><devices><disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
            f"<source file='{top}'/>{inner}<target dev='vda'/></disk></devices></domain>")


def xml_chain(top: str, backing: list[tuple[str, str]], dirs: list[str] | None = None) -> list[str]:
    chains, _ = chains_from_xml(xml(top, "qcow2", backing))
    return complete(chains[0], dirs, read_backing=lambda p: pytest.fail(f"closed chain read {p}")).paths()


LAYER_KINDS = ["ok", "outside", "escape", "etc-shadow", "fifo", "directory", "missing", "duplicate", "symlink-out"]
EXPECT = {"outside": "outside the allowed directories", "escape": "outside the allowed directories",
          "etc-shadow": "outside the allowed directories", "fifo": "is not a regular file",
          "directory": "is not a regular file", "missing": "No such file", "duplicate": "loops at",
          "symlink-out": "outside the allowed directories"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(LAYER_KINDS), min_size=1, max_size=6))
def test_xml_given_chains_follow_the_chain_rule(tmp_path: Path, kinds: list[str]) -> None:
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    imgs, other = d / "imgs", d / "other"
    imgs.mkdir(parents=True)
    other.mkdir()
    top = imgs / "top.qcow2"
    top.write_bytes(b"")
    backing: list[tuple[str, str]] = []
    for i, kind in enumerate(kinds):
        p = imgs / f"l{i}.qcow2"
        if kind == "ok":
            p.write_bytes(b"")
        elif kind == "outside":
            p = other / f"l{i}.qcow2"
            p.write_bytes(b"")
        elif kind == "escape":
            (other / f"l{i}").write_bytes(b"")
            p = imgs / ".." / "other" / f"l{i}"
        elif kind == "etc-shadow":
            p = Path("/etc/shadow")
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "directory":
            p.mkdir()
        elif kind == "duplicate":
            p = top
        elif kind == "symlink-out":
            p.symlink_to(other / f"target{i}")
            (other / f"target{i}").write_bytes(b"")
        backing.append((str(p), "qcow2" if i < len(kinds) - 1 else "raw"))
    bad = next((k for k in kinds if k != "ok"), None)
    if bad is None:
        assert xml_chain(str(top), backing) == [str(top), *(p for p, _ in backing)]
    else:
        with pytest.raises(ChainError) as exc:
            xml_chain(str(top), backing)
        assert EXPECT[bad] in str(exc.value)
        assert len(str(exc.value)) < 600
    # an allowed --backing-dir admits the files there, and only those
    if set(kinds) <= {"ok", "outside", "escape", "symlink-out"}:
        assert len(xml_chain(str(top), backing, [str(other)])) == len(kinds) + 1


def test_xml_chain_depth_is_bounded(tmp_path: Path) -> None:
    top = tmp_path / "top.qcow2"
    top.write_bytes(b"")
    layers = []
    for i in range(MAX_DEPTH):
        (tmp_path / f"{i}.qcow2").write_bytes(b"")
        layers.append((str(tmp_path / f"{i}.qcow2"), "qcow2" if i < MAX_DEPTH - 1 else "raw"))
    with pytest.raises(ChainError, match=f"deeper than {MAX_DEPTH}"):
        xml_chain(str(top), layers)
    assert len(xml_chain(str(top), layers[1:])) == MAX_DEPTH


def test_header_walk_depth_and_names_are_bounded(tmp_path: Path) -> None:
    """A fake header reader: a chain that never ends, and a name of the maximum length, stay bounded."""
    for i in range(MAX_DEPTH + 2):
        (tmp_path / f"{i}.qcow2").write_bytes(b"")

    def endless(p: str) -> BackingInfo:
        return BackingInfo(f"{int(Path(p).stem) + 1}.qcow2", "qcow2")

    with pytest.raises(ChainError, match=f"deeper than {MAX_DEPTH}"):
        image_chain(str(tmp_path / "0.qcow2"), "qcow2", read_backing=endless)
    for name, why in (("é" * 511, "File name too long"), ("é" * 100, "No such file")):
        with pytest.raises(ChainError) as exc:
            image_chain(str(tmp_path / "0.qcow2"), "qcow2", read_backing=lambda p, n=name: BackingInfo(n, "raw"))
        assert why in str(exc.value) and len(str(exc.value)) < 400
    with pytest.raises(ChainError, match="no recorded format"):
        image_chain(str(tmp_path / "0.qcow2"), "qcow2", read_backing=lambda p: BackingInfo("1.qcow2", None))
    h = replace(Header(), name=b"nbd:host:1")
    assert parse_header(h.build()).name == "nbd:host:1"
    with pytest.raises(ChainError, match="protocol name"):
        image_chain(str(tmp_path / "0.qcow2"), "qcow2", read_backing=lambda p: BackingInfo("nbd:x:1", "raw"))


@pytest.mark.parametrize("swap", ["directory", "file"])
def test_a_symlink_swapped_in_after_the_check_is_not_followed(tmp_path: Path, swap: str) -> None:
    imgs, secret = tmp_path / "imgs", tmp_path / "secret"
    imgs.mkdir()
    secret.mkdir()
    (imgs / "disk.raw").write_bytes(b"\0" * 4096)
    (secret / "disk.raw").write_bytes(b"SECRET" * 1000)
    chain = image_chain(str(imgs / "disk.raw"))
    if swap == "directory":
        imgs.rename(tmp_path / "was-imgs")
        imgs.symlink_to(secret)
    else:
        (imgs / "disk.raw").unlink()
        (imgs / "disk.raw").symlink_to(secret / "disk.raw")
    with pytest.raises(WorkerError) as exc:
        inspect_chains([chain])
    assert str(exc.value) == f"{imgs / 'disk.raw'}: cannot open: a symlink in its path (paths are resolved " \
                             "before they are opened)"
