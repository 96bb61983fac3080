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
from dataclasses import dataclass
from pathlib import Path


class ConsoleError(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    status: int
    output: str


def run(sock_path: Path, command: str, timeout: float = 30.0) -> Result:
    tag = secrets.token_hex(4)
    begin, end_re = f"__BEGIN_{tag}\n", re.compile(rf"__END_{tag}_(\d+)")
    line = (f"printf '__B%s_%s\\n' EGIN {tag}; ( {command} ) 2>&1; "
            f"printf '__E%s_%s_%s\\n' ND {tag} $?\n")
    lock_path = sock_path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(sock_path))
        except OSError as exc:
            raise ConsoleError(f"{sock_path}: {exc.strerror or exc}") from None
        try:
            s.sendall(line.encode())
            buf = ""
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline:
                    raise ConsoleError(f"command timed out after {timeout:.0f} s: {command[:80]}")
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    raise ConsoleError(f"command timed out after {timeout:.0f} s: {command[:80]}") from None
                if not chunk:
                    raise ConsoleError("guest closed the command channel")
                buf += chunk.decode(errors="replace").replace("\r", "")
                m = end_re.search(buf)
                if m and begin in buf[: m.start()]:
                    out = buf[buf.index(begin) + len(begin): m.start()]
                    return Result(int(m.group(1)), out)
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
