"""One lock for every process that changes enforcement: the CLI, the agent and the libvirt hook.

Each of them reads the inventory snapshot, compiles and enforces; two at once could enforce a plan
built from a snapshot the other has just changed. `flock` is released by the kernel when its holder
dies, so a killed agent never leaves the hook waiting."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def enforcement_lock(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "enforce.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
