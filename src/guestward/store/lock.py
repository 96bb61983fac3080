"""One lock for every process that changes enforcement: the CLI, the agent and the libvirt hook.

Each of them reads the inventory snapshot, compiles and enforces; two at once could enforce a plan
built from a snapshot the other has just changed. `flock` is released by the kernel when its holder
dies, so a killed agent never leaves the hook waiting.

Every hold bumps a counter kept in the lock file (its generation), and each process remembers the
generations it held itself (`held_only_by_us`): so it can tell, on its next hold, whether any other
process held the lock in between, i.e. may have changed enforcement legitimately (drift repair relies
on it)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(RuntimeError):
    pass


_OURS: dict[Path, set[int]] = {}  # per lock file: the generations this process held (recent ones)
_OURS_MUTEX = threading.Lock()
_KEPT = 100_000


def held_only_by_us(state_dir: Path, first: int, last: int) -> bool:
    """Whether every hold of `state_dir`'s lock with a generation in first..last (inclusive) was this
    process's (an empty range: True)."""
    with _OURS_MUTEX:
        ours = _OURS.get(state_dir.resolve(), set())
        return all(g in ours for g in range(first, last + 1))


@contextmanager
def enforcement_lock(state_dir: Path, timeout: float | None = None) -> Iterator[int]:
    """Hold the lock for the block; wait at most `timeout` seconds for it (None: as long as it takes;
    0: do not wait). Yields the generation of this hold: the previous one's plus one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "enforce.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeout(f"enforcement lock busy for {timeout:.0f} s") from None
                    time.sleep(0.01)
        yield _bump(fd, state_dir.resolve())
    finally:
        os.close(fd)  # closing releases the lock


def _bump(fd: int, key: Path) -> int:
    raw = os.pread(fd, 32, 0).strip()
    generation = (int(raw) if raw.isdigit() else 0) + 1
    text = str(generation).encode()
    os.pwrite(fd, text.ljust(20), 0)  # fixed width: the file never holds a stale tail
    with _OURS_MUTEX:
        ours = _OURS.setdefault(key, set())
        ours.add(generation)
        if len(ours) > _KEPT:  # forget the oldest: a range reaching back that far is "not only us"
            for g in sorted(ours)[: len(ours) - _KEPT]:
                ours.discard(g)
    return generation
