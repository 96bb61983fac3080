"""Running the inspection worker: a child process with no network and hard limits; the caller never hangs.

- network: the worker runs in a fresh network namespace (`unshare --net`; as non-root, `unshare --user
  --map-root-user --net`), which has only a down loopback interface;
- CPU: RLIMIT_CPU (SIGXCPU, then SIGKILL); memory: RLIMIT_AS; files: RLIMIT_FSIZE 0 (it cannot write a
  file), RLIMIT_NOFILE, no core dumps;
- wall clock: the parent kills the worker's whole process group when the deadline passes;
- the result is the last JSON line on stdout (capped in size); a worker killed at a limit after it
  finished some sections gives those sections, marked `partial` and `incomplete`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from guestward.model.disks import DiskChain

MAX_OUTPUT = 64 << 20


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


def _sandbox_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        raise WorkerError("`unshare` (util-linux) is needed to run the inspection worker without network")
    if os.geteuid() == 0:
        return [unshare, "--net"]
    return [unshare, "--user", "--map-root-user", "--net"]


def _limits(limits: Limits) -> Any:
    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 2))
        mem = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    return apply


def run_worker(job: dict[str, Any], limits: Limits = Limits()) -> dict[str, Any]:
    """The worker's reply ({"ok": True, "result": ..., "opened": [...]}), or WorkerError."""
    with tempfile.TemporaryDirectory(prefix="gw-inspect-") as empty:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": empty, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [*_sandbox_prefix(), sys.executable, "-I", "-m", "guestward.inspect.worker"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=empty, env=env, preexec_fn=_limits(limits))
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
            raise WorkerError(str(last.get("error")), last.get("opened"))
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
    raise WorkerError(f"inspection worker {why}")


def _death(rc: int | None, err: bytes, limits: Limits) -> str:
    if rc is not None and rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        why = f"was killed by signal {-rc if rc < 0 else rc - 128} (CPU limit {limits.cpu_seconds} s?)"
    else:
        why = f"failed: exit status {rc}"
    tail = err.decode(errors="replace").strip().splitlines()[-3:]
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
