"""The enforcement lock: every hold has the next generation; `timeout=0` never waits."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestward.store.lock import LockTimeout, enforcement_lock


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
