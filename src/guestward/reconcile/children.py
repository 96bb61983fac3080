"""Child processes the agent runs in a host's namespace (nft monitor, the drop-log reader): they must
not outlive it, however it dies."""

from __future__ import annotations

import ctypes
import signal

_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here: no dlopen in a forked child


def die_with_parent() -> None:
    """In the child (a `preexec_fn`): SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
    _LIBC.prctl(1, signal.SIGKILL)
