"""Running the inspection worker: a confined child process with hard limits; the caller never hangs.

- confinement: guestward.inspect.sandbox (unprivileged user in its own user, mount, PID and network
  namespaces, no capabilities, no_new_privs, seccomp); the image files are opened here, read-only, and
  handed to it as descriptors: besides its interpreter's files, the only host files it can read;
- CPU: RLIMIT_CPU (SIGXCPU, then SIGKILL); memory: RLIMIT_AS; files: RLIMIT_FSIZE 0 (it cannot write a
  file), RLIMIT_NOFILE, no core dumps;
- wall clock: the parent kills the worker's whole process group when the deadline passes;
- the result is the last JSON line on stdout (capped in size); a worker killed at a limit after it
  finished some sections gives those sections, marked `partial` and `incomplete`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guestward.inspect import sandbox
from guestward.inspect.qcow2 import BackingInfo
from guestward.model.disks import DiskChain

MAX_OUTPUT = 64 << 20
MAX_ERROR = 400  # characters of a worker's error that reach the caller (the rest is the image talking)


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 60
    memory_mb: int = 2048
    wall_seconds: float = 120.0


class WorkerError(RuntimeError):
    """The inspection failed: the message says why (a hostile or unreadable image, a limit hit)."""

    def __init__(self, message: str, opened: list[str] | None = None) -> None:
        super().__init__(message)
        self.opened = opened or []


def _short(message: str) -> str:
    return message if len(message) <= MAX_ERROR else message[:MAX_ERROR] + "... (cut)"


def open_image(path: str) -> int:
    """A read-only descriptor of image layer `path` for the worker: a regular file or a block device.

    The chain's paths are resolved when the chain is checked (guestward.inspect.chain), so every component
    is opened here with O_NOFOLLOW: a directory swapped for a symlink since the check is refused, not
    followed. O_NONBLOCK so that a FIFO planted where an image should be cannot block us."""
    parts = Path(os.path.abspath(path)).parts
    dirfd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[1:-1]:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            os.close(dirfd)
            dirfd = nxt
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW,
                     dir_fd=dirfd)
    except OSError as exc:
        why = "a symlink in its path (paths are resolved before they are opened)" \
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise WorkerError(f"{path}: cannot open: {why}") from None
    finally:
        os.close(dirfd)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise WorkerError(f"{path}: not a regular file or block device")
    os.set_blocking(fd, True)
    return fd


def _limits(limits: Limits) -> Any:
    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 2))
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        mem = limits.memory_mb << 20 if hard == resource.RLIM_INFINITY else min(limits.memory_mb << 20, hard)
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))  # never above a limit the caller runs under
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        sandbox.stage()
    return apply


def run_worker(job: dict[str, Any], limits: Limits = Limits(), files: list[str] | None = None) -> dict[str, Any]:
    """The worker's reply ({"ok": True, "result": ..., "opened": [...]}), or WorkerError.

    `files` (by default, every layer of the job's chains, in order) are opened here read-only and passed
    to the worker; the job gets `"fds"`: their descriptor numbers in the same order (the worker never opens
    a file by name)."""
    if files is None:
        files = [str(la["path"]) for c in job.get("chains", []) for la in c["layers"]]
    fds: list[int] = []
    try:
        for path in files:
            fds.append(open_image(path))
        job = {**job, "fds": fds}
        with contextlib.ExitStack() as stack:
            seccomp_fd = sandbox.program_fd()
            stack.callback(os.close, seccomp_fd)
            return _run(job, limits, [*fds, seccomp_fd], seccomp_fd)
    except sandbox.SandboxError as exc:
        raise WorkerError(str(exc)) from None
    finally:
        for fd in fds:
            os.close(fd)


def _run(job: dict[str, Any], limits: Limits, pass_fds: list[int], seccomp_fd: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gw-inspect-") as empty:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": empty, "LANG": "C.UTF-8"}
        argv = sandbox.command([sys.executable, "-I", "-m", "guestward.inspect.worker"], seccomp_fd)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=empty, env=env, preexec_fn=_limits(limits), pass_fds=pass_fds)
        except (OSError, subprocess.SubprocessError) as exc:  # fail closed: no sandbox, no worker
            raise WorkerError(f"cannot start the inspection sandbox: {exc}") from None
        timed_out = False
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()  # what it wrote before it was killed
            timed_out = True
        except BaseException:
            _kill(proc)
            raise
    if len(out) > MAX_OUTPUT:
        raise WorkerError(f"inspection worker output over {MAX_OUTPUT} bytes, refused")
    lines = out.splitlines()
    last: dict[str, Any] | None = None
    if lines and not timed_out:
        try:
            last = json.loads(lines[-1])
        except ValueError:
            last = None
    if last is not None and "ok" in last:
        if not last.get("ok"):
            raise WorkerError(_short(str(last.get("error"))), last.get("opened"))
        return last
    # Killed at a limit, or crashed: the sections it finished, marked partial; or an error if none.
    if timed_out:
        why = f"exceeded its wall-clock limit ({limits.wall_seconds:g} s) and was killed"
    else:
        why = _death(proc.returncode, err, limits)
    sections: dict[str, Any] = {}
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            break
        if isinstance(doc, dict) and "section" in doc:
            sections[str(doc["section"])] = doc.get("value")
    if sections:
        sections.setdefault("errors", [])
        sections["errors"] = [*sections["errors"], {"section": "worker", "error": f"inspection worker {why}; "
                              f"sections not reached are missing: result incomplete"}]
        sections["partial"] = True
        sections["incomplete"] = True
        sections.setdefault("timings", {})
        return {"ok": True, "result": sections, "opened": []}
    raise WorkerError(_short(f"inspection worker {why}"))


def _death(rc: int | None, err: bytes, limits: Limits) -> str:
    if rc is not None and rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        why = f"was killed by signal {-rc if rc < 0 else rc - 128} (CPU limit {limits.cpu_seconds} s?)"
    else:
        why = f"failed: exit status {rc}"
    tail = [line[:200] for line in err[-4096:].decode(errors="replace").strip().splitlines()[-3:]]
    if any("MemoryError" in line for line in tail):
        why = f"failed: out of memory (limit {limits.memory_mb} MiB)"
    return why + (f": {' / '.join(tail)}" if tail else "")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def inspect_chains(chains: list[DiskChain], limits: Limits = Limits()) -> dict[str, Any]:
    """Inventory of the guest whose disks are `chains` (a full chain each), read in the sandboxed worker."""
    for c in chains:
        if c.open_end:
            raise WorkerError(f"disk {c.target}: backing chain not completed (guestward.inspect.chain.complete)")
    reply = run_worker({"chains": [c.to_json() for c in chains]}, limits)
    result: dict[str, Any] = reply["result"]
    result["opened"] = reply.get("opened", [])
    return result


def read_backing(path: str, limits: Limits = Limits(cpu_seconds=10, memory_mb=256, wall_seconds=30.0)) -> BackingInfo:
    """The backing file name and format recorded in qcow2 image `path`'s header, read by the sandboxed
    worker (at most one cluster, 2 MiB, of the file). WorkerError names the image and says what is wrong."""
    try:
        reply = run_worker({"header": path}, limits, [path])
    except WorkerError as exc:
        raise WorkerError(_short(str(exc) if str(exc).startswith(path) else f"{path}: {exc}")) from None
    r = reply["result"]
    return BackingInfo(r["name"], r["format"])
