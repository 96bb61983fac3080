"""One lock for every process that changes enforcement: the CLI, the agent and the libvirt hook.

Each of them reads the inventory snapshot, compiles and enforces; two at once could enforce a plan
built from a snapshot the other has just changed. `flock` is released by the kernel when its holder
dies, so a killed agent never leaves the hook waiting.

Every hold bumps a counter kept in the lock file (its generation), and each process remembers the
generations it held itself (`held_only_by_us`): so it can tell, on its next hold, whether any other
process held the lock in between, i.e. may have changed enforcement legitimately (drift repair relies
on it).

A second lock, `writer_lock` (`write.lock`), serialises the commands that change the store and the
tables as a whole (apply, delete, label, quarantine, release, sync, the agent's sync): each one reads
libvirt, compiles, enforces and stores under it, so none stores a result computed from what another
is changing. It may be held while libvirt is called; the hook never takes it (libvirtd waits on the
hook), so the order is always writer lock, then enforcement lock. It is reentrant within a process
(`set_label` holds it and calls `sync`, which takes it again)."""

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
    fd = _flock(state_dir / "enforce.lock", timeout, "enforcement lock")
    try:
        yield _bump(fd, state_dir.resolve())
    finally:
        os.close(fd)  # closing releases the lock


def _flock(path: Path, timeout: float | None, what: str) -> int:
    """An open descriptor of `path` holding its exclusive flock (LockTimeout after `timeout` s)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{what} busy for {timeout:.0f} s") from None
                time.sleep(0.01)
    except BaseException:
        os.close(fd)
        raise


class _Writer:
    def __init__(self) -> None:
        self.mutex = threading.RLock()  # the threads of this process, one at a time
        self.depth = 0
        self.fd = -1


_WRITERS: dict[Path, _Writer] = {}


@contextmanager
def writer_lock(state_dir: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the writers' lock of `state_dir` for the block (reentrant in a process); wait at most
    `timeout` seconds (None: as long as it takes)."""
    with _OURS_MUTEX:
        w = _WRITERS.setdefault(state_dir.resolve(), _Writer())
    if not w.mutex.acquire(timeout=-1 if timeout is None else timeout):
        raise LockTimeout(f"writer lock busy for {timeout:.0f} s")
    try:
        if w.depth == 0:
            w.fd = _flock(state_dir / "write.lock", timeout, "writer lock")
        w.depth += 1
        try:
            yield
        finally:
            w.depth -= 1
            if w.depth == 0:
                os.close(w.fd)
                w.fd = -1
    finally:
        w.mutex.release()


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
