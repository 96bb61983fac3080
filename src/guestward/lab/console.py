"""The guest command channel: a virtio-serial port in the guest, a unix socket on the host.

The guest runs each line it reads as a shell command (lab/guest/init.sh). Each command is framed by
begin/end markers printed with printf, so the command line itself never contains them; the end marker
carries the exit status. One command at a time per guest
(a lock file serialises callers, across processes).
"""

from __future__ import annotations

import fcntl
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ConsoleError(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    status: int
    output: str


# Data that reaches a virtio port the guest has not (re)opened yet is discarded, and the guest reopens
# its end after every session. So before a command, the host sends a small echo line every half
# second until one comes back: from then on the guest is reading, and nothing sent is lost.
HELLO_INTERVAL = 0.5


def _receive_until(s: socket.socket, done: Callable[[str], bool], deadline: float, what: str) -> str:
    buf = ""
    while not done(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConsoleError(f"{what}: timed out")
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise ConsoleError(f"{what}: timed out") from None
        if not chunk:
            raise ConsoleError(f"{what}: the guest closed the command channel")
        buf += chunk.decode(errors="replace").replace("\r", "")
    return buf


def _handshake(s: socket.socket, tag: str, deadline: float, what: str) -> None:
    hello, answer = f"printf '__H%s_%s\\n' ELLO {tag}\n".encode(), f"__HELLO_{tag}\n"
    while True:
        s.sendall(hello)
        try:
            _receive_until(s, lambda b: answer in b, min(deadline, time.monotonic() + HELLO_INTERVAL), what)
            return
        except ConsoleError:
            if time.monotonic() >= deadline:
                raise ConsoleError(f"{what}: the guest does not answer") from None


def run(sock_path: Path, command: str, timeout: float = 30.0) -> Result:
    """Run one shell command in the guest; its exit status and output (stdout and stderr)."""
    tag = secrets.token_hex(4)
    begin, end_re = f"__BEGIN_{tag}\n", re.compile(rf"__END_{tag}_(\d+)")
    line = (f"printf '__B%s_%s\\n' EGIN {tag}; ( {command} ) 2>&1; "
            f"printf '__E%s_%s_%s\\n' ND {tag} $?\n")
    what = f"command {command[:80]!r} (after {timeout:.0f} s)"
    lock_path = sock_path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deadline = time.monotonic() + timeout
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(str(sock_path))
        except OSError as exc:
            s.close()
            raise ConsoleError(f"{sock_path}: {exc.strerror or exc}") from None
        try:
            _handshake(s, tag, deadline, what)
            s.sendall(line.encode())

            def complete(b: str) -> bool:
                m = end_re.search(b)
                return bool(m and begin in b[: m.start()])

            buf = _receive_until(s, complete, deadline, what)
            m = end_re.search(buf)
            assert m is not None
            return Result(int(m.group(1)), buf[buf.index(begin) + len(begin): m.start()])
        finally:
            s.close()


def wait_ready(sock_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if run(sock_path, "echo ready", timeout=5).output.strip() == "ready":
                return
        except ConsoleError as exc:
            last = exc
        time.sleep(0.5)
    raise ConsoleError(f"guest command channel not ready after {timeout:.0f} s: {last}")
