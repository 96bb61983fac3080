"""Reading policy files: a link inside a policy directory is reported and never read, only regular
files are read, at most the cap plus one byte of a huge file is read, non-UTF-8 text is refused
at the line of its first bad byte; every problem is a `file:line: message` naming the file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestward.policy import PolicyError
from guestward.policy.parse import MAX_SOURCE_BYTES
from guestward.reconcile.sources import read_sources

GOOD = "apiVersion: guestward.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {tier: baseline}\n"


def diagnostics(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as exc:
        read_sources(path)
    return [str(d) for d in exc.value.diagnostics]


@pytest.mark.parametrize("target", ["/etc/shadow", "secret.txt", "../outside.yaml", "sub", "missing.yaml"])
@pytest.mark.parametrize("link_name", ["link.yaml", "l.yml", "subdir-link"])
def test_a_link_in_a_policy_directory_is_reported_not_read(tmp_path: Path, target: str, link_name: str) -> None:
    d = tmp_path / "policies"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "inner.yaml").write_text(GOOD)
    (d / "secret.txt").write_text("root-only secret\n")
    (tmp_path / "outside.yaml").write_text("secret: outside\n")
    (d / link_name).symlink_to(target)
    if link_name == "subdir-link" and target != "sub":  # a link to a file not named *.yaml: never a policy
        assert read_sources(d) == [(str(d / "sub" / "inner.yaml"), GOOD)]
        return
    got = diagnostics(d)
    assert got == [f"{d / link_name}:1: a symbolic link: not followed in a policy directory"]
    assert not any("secret" in g for g in got)


def test_a_fifo_or_device_is_not_read(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    os.mkfifo(d / "fifo.yaml")
    start = time.monotonic()
    assert diagnostics(d) == [f"{d / 'fifo.yaml'}:1: not a regular file"]
    assert diagnostics(Path("/dev/zero")) == ["/dev/zero:1: not a regular file"]
    assert time.monotonic() - start < 5


def test_a_huge_file_is_refused_after_reading_the_cap(tmp_path: Path) -> None:
    f = tmp_path / "huge.yaml"
    with f.open("wb") as out:
        out.truncate(50 * 1024 * 1024 * 1024)  # 50 GiB, sparse: reading it whole would not end
    start = time.monotonic()
    assert diagnostics(f) == [f"{f}:1: larger than 8 MiB"]
    assert time.monotonic() - start < 5
    f.write_bytes(b"#" * MAX_SOURCE_BYTES)
    assert read_sources(f) == [(str(f), "#" * MAX_SOURCE_BYTES)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 20), st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"]))
def test_non_utf8_is_refused_at_the_line_of_its_first_bad_byte(tmp_path: Path, line: int, bad: bytes) -> None:
    f = tmp_path / "latin.yaml"
    data = b"".join(b"k%d: v\n" % i for i in range(line)) + b"x: " + bad + b"\n"
    f.write_bytes(data)
    (got,) = diagnostics(f)
    assert got == f"{f}:{line + 1}: not UTF-8 text (byte 0x{bad[0]:02x})"


def test_utf16_and_a_bom(tmp_path: Path) -> None:
    f = tmp_path / "u16.yaml"
    f.write_bytes(GOOD.encode("utf-16"))
    assert diagnostics(f) == [f"{f}:1: not UTF-8 text (byte 0xff)"]
    f.write_bytes(GOOD.encode("utf-8-sig"))
    assert read_sources(f) == [(str(f), "\ufeff" + GOOD)]


def test_every_problem_of_a_directory_at_once(tmp_path: Path) -> None:
    d = tmp_path / "p"
    (d / "a").mkdir(parents=True)
    (d / "a" / "ok.yaml").write_text(GOOD)
    (d / "bad.yml").write_bytes(b"\xff")
    (d / "l.yaml").symlink_to(d / "a" / "ok.yaml")
    (d / "ignored.txt").symlink_to("/etc/passwd")
    assert diagnostics(d) == [f"{d / 'bad.yml'}:1: not UTF-8 text (byte 0xff)",
                              f"{d / 'l.yaml'}:1: a symbolic link: not followed in a policy directory"]
    with pytest.raises(FileNotFoundError):
        read_sources(tmp_path / "nothing")


def test_a_file_name_cannot_forge_another_diagnostic_line(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    (d / "x\nforged.yaml:1: good.yaml").write_bytes(b"\xff")
    (got,) = diagnostics(d)
    assert got == f"{d}/x\\x0aforged.yaml:1: good.yaml:1: not UTF-8 text (byte 0xff)"
    assert "\n" not in got
