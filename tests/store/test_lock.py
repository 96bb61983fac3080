"""The enforcement lock: every hold has the next generation; `timeout=0` never waits; a process
knows which generations it held itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guestward.store.lock import LockTimeout, enforcement_lock, held_only_by_us, writer_lock


def test_every_hold_gets_the_next_generation_whoever_holds_it(tmp_path: Path) -> None:
    with enforcement_lock(tmp_path) as first:
        pass
    with enforcement_lock(tmp_path, timeout=0) as second:
        pass
    with enforcement_lock(tmp_path, timeout=5) as third:
        pass
    assert (second, third) == (first + 1, first + 2)


def test_a_held_lock_is_refused_at_once_with_timeout_zero(tmp_path: Path) -> None:
    with enforcement_lock(tmp_path) as held, pytest.raises(LockTimeout), enforcement_lock(tmp_path, timeout=0):
        pass
    with enforcement_lock(tmp_path) as after:
        assert after == held + 1  # the refused attempt never held it


def test_a_process_knows_which_holds_were_its_own(tmp_path: Path) -> None:
    with enforcement_lock(tmp_path) as mine:
        pass
    code = ("import sys, pathlib\nfrom guestward.store.lock import enforcement_lock\n"
            "with enforcement_lock(pathlib.Path(sys.argv[1])): pass")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    with enforcement_lock(tmp_path) as after:
        pass
    assert after == mine + 2
    assert held_only_by_us(tmp_path, mine, mine) and held_only_by_us(tmp_path, after, after)
    assert not held_only_by_us(tmp_path, mine, after)
    assert held_only_by_us(tmp_path, after + 1, after)  # nothing in between
    assert not held_only_by_us(tmp_path / "other", mine, mine)  # generations are per lock


def test_the_writer_lock_is_reentrant_in_a_process_and_exclusive_between_processes(tmp_path: Path) -> None:
    code = ("import sys, pathlib\nfrom guestward.store.lock import writer_lock, LockTimeout\n"
            "try:\n    with writer_lock(pathlib.Path(sys.argv[1]), timeout=0.5): print('held')\n"
            "except LockTimeout as exc: print(exc)")
    with writer_lock(tmp_path), writer_lock(tmp_path):  # set_label holds it and calls sync, which takes it
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                               check=True).stdout
        assert other == "writer lock busy for 0 s\n"
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           check=True).stdout
    assert other == "held\n"
    with writer_lock(tmp_path), enforcement_lock(tmp_path, timeout=0):  # the order: writer, then enforcement
        pass
