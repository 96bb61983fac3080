"""The worker's sandbox, tested from inside the worker (its selftest hook) and from the host: it is nobody
with no capability, no_new_privs and a seccomp filter, in its own PID and network namespaces, sees no host
file but the interpreter's (not /etc/shadow, not the image next to the one it inspects), cannot write,
and every system call the filter denies fails with EPERM."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guestward
from guestward.inspect import sandbox
from guestward.inspect.runner import Limits, WorkerError, run_worker

pytestmark = pytest.mark.inspect

ZERO_CAPS = "0000000000000000"
VISIBLE_ROOTS = ("/usr", *sandbox._read_only_roots())


def selftest(probe: dict[str, Any], files: list[str] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = run_worker({"selftest": True, "probe": probe}, Limits(cpu_seconds=20, memory_mb=512,
                                                                                   wall_seconds=60), files or [])
    return result["result"]


def host_files(limit: int = 4000) -> list[str]:
    """Files of this host that the worker must not see: everywhere but /usr, the venv and guestward's code
    (other worktrees, this one's tests and .git, /etc, /root, /var, /tmp, ...)."""
    out: list[str] = []
    for top in ("/etc", "/root", "/var/lib", "/var/log", "/work", "/tmp", "/home", "/opt", "/run", "/boot", "/srv"):
        for dirpath, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not any(os.path.join(dirpath, d).startswith(r) for r in VISIBLE_ROOTS)]
            out += [os.path.join(dirpath, f) for f in files[:20]]
            if len(out) > limit:
                return out
    return out


HOST_FILES = host_files()
USR_FILES = [os.path.join(d, f) for d, _, fs in os.walk("/usr/lib/python3.11/json") for f in fs]


def test_boundary_seen_from_inside(tmp_path: Path) -> None:
    img = tmp_path / "guest.raw"
    img.write_bytes(b"GUEST-IMAGE" * 100)
    sibling = tmp_path / "other-guest.raw"
    sibling.write_bytes(b"OTHER-GUEST" * 100)
    me = Path(guestward.__file__).resolve()
    r = selftest({"read": ["/etc/shadow", str(sibling), str(img), "/root/.bash_history", str(me.parents[2] / ".git"),
                           str(me.parents[2] / "tests/inspect/test_sandbox.py"), "/proc/1/root/etc/shadow"],
                  "write": ["/usr/x", "/x", "/dev/x", "/proc/self/x", str(me), "/dev/shm/x", str(img)]},
                 [str(img)])
    assert r["status"] == {"Uid": "65534", "Gid": "65534", "CapInh": ZERO_CAPS, "CapPrm": ZERO_CAPS,
                           "CapEff": ZERO_CAPS, "CapBnd": ZERO_CAPS, "CapAmb": ZERO_CAPS, "NoNewPrivs": "1",
                           "Seccomp": "2"}
    assert r["pid"] == 2 and r["pids"] == [1, 2]  # its own PID namespace: bubblewrap's init and itself
    assert r["interfaces"] == ["lo"]
    top_dirs = {p.split("/")[1] for p in VISIBLE_ROOTS}
    assert set(r["root"]) == {"bin", "dev", "lib", "lib64", "proc", "sbin"} | top_dirs
    assert set(r["read"].values()) == {"ENOENT"}, r["read"]  # the image itself too: only as a descriptor
    assert set(r["write"].values()) == {"EPERM"}, r["write"]
    assert r["fds"] == [{"read": "ok", "write": "EBADF", "reopen_rw": "EPERM"}]
    assert {k: v for k, v in r["syscalls"].items() if k != "signal_pid1"} == {
        "socket_inet": "EPERM", "socket_unix": "EPERM", "unshare_user": "EPERM", "ptrace_traceme": "EPERM",
        "mount": "EPERM", "setuid_0": "EPERM"}
    assert img.read_bytes() == b"GUEST-IMAGE" * 100


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reads=st.lists(st.sampled_from(HOST_FILES), min_size=1, max_size=60, unique=True),
       writes=st.lists(st.sampled_from(USR_FILES), min_size=1, max_size=10, unique=True))
def test_no_host_file_is_visible_and_nothing_is_writable(reads: list[str], writes: list[str]) -> None:
    r = selftest({"read": reads, "write": writes})
    assert set(r["read"].values()) == {"ENOENT"}, r["read"]
    assert set(r["write"].values()) == {"EPERM"}, r["write"]


def test_every_denied_system_call_fails() -> None:
    import seccomp
    nrs = {}
    for name in sandbox.DENIED:
        try:
            nrs[name] = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
        except (ValueError, RuntimeError):
            continue
        if nrs[name] < 0:  # not a system call of this architecture
            del nrs[name]
    for name in ("clone3", "openat2", "execve", "execveat"):
        nrs[name] = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    assert len(nrs) > 80
    got = selftest({"syscalls": nrs})["syscalls"]
    assert {n: got[n] for n in nrs} == {n: "ENOSYS" if n in ("clone3", "openat2") else "EPERM" for n in nrs}


def test_host_sees_an_unprivileged_confined_process(tmp_path: Path) -> None:
    results: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: results.append(selftest({"hold": 4})))
    t.start()
    try:
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if cmd[:1] != [b"bwrap"] and b"guestward.inspect.worker" in cmd and b"--" not in cmd:
                        seen = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text()
                                    .splitlines() if ":\t" in line)
                except OSError:
                    continue
            time.sleep(0.1)
    finally:
        t.join(60)
    assert seen, "the worker process was not found"
    assert seen["Uid"].split() == ["65534"] * 4 and seen["Gid"].split() == ["65534"] * 4
    assert seen["CapEff"] == ZERO_CAPS and seen["CapBnd"] == ZERO_CAPS
    assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2"
    assert len(seen["NSpid"].split()) >= 2 and seen["NSpid"].split()[-1] == "2"
    assert results and results[0]["pid"] == 2


def test_without_bubblewrap_the_worker_does_not_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(WorkerError, match="bubblewrap"):
        selftest({})


def test_a_fifo_in_place_of_an_image_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "disk.raw"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(WorkerError, match="not a regular file or block device"):
        selftest({}, [str(fifo)])
    assert time.monotonic() - start < 2


def test_code_under_a_directory_nobody_cannot_enter_is_still_mounted(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout under /root or a mode-700 temporary directory (CI's clone may be one): the worker, nobody,
    still gets its code (staged by root in a private mount namespace), and only that directory of it."""
    private = tmp_path / "private"
    lib = private / "lib"
    lib.mkdir(parents=True)
    (lib / "marker.py").write_text("MARKER = 1\n")
    (private / "secret").write_text("not for the worker\n")
    private.chmod(0o700)
    real = sandbox._read_only_roots
    monkeypatch.setattr(sandbox, "_read_only_roots", lambda: [*real(), str(lib)])
    r = selftest({"read": [str(lib / "marker.py"), str(private / "secret")], "write": [str(lib / "marker.py")]})
    assert r["read"] == {str(lib / "marker.py"): "ok", str(private / "secret"): "ENOENT"}
    assert r["write"] == {str(lib / "marker.py"): "EPERM"}
    assert not any(Path("/run/gw-sandbox").iterdir())  # the staging mounts were never the host's
