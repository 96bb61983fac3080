"""The inspection worker's confinement: the command line that starts it, and its seccomp filter.

The worker (guestward.inspect.worker) reads hostile bytes; this is the boundary around it, made by the
kernel, not by Python:

- an unprivileged user: as root, `setpriv` first becomes SANDBOX_UID (nobody) with no groups, no
  capabilities (bounding set empty) and no_new_privs; bubblewrap then puts it in a new user namespace
  mapping only that id, so it has no capability anywhere (CapEff 0) and is nobody to the host;
- its own mount namespace holding only what the interpreter needs, read-only: /usr, the virtualenv, the
  guestward package (as root, first bind-mounted under STAGE in a private mount namespace: `stage()`);
  a fresh /proc of its own PID namespace and a minimal /dev; nothing else of the host (no /etc, /home,
  /root, /tmp, no image directory). The disk images are not in it at all: the parent
  opens each layer read-only and passes the descriptor (the worker never opens an image by name);
- new PID, network (only a down loopback), IPC, UTS and cgroup namespaces; it dies with its parent;
- a seccomp filter (below), loaded by bubblewrap before the interpreter starts, so it covers everything
  the worker runs; other architectures' system calls (i386, x32) kill the process.

The filter allows by default and refuses, with EPERM, what an inspection never does: creating sockets,
ptrace and cross-process memory access, namespace and mount changes, kernel modules, kexec, BPF,
perf, keyrings, userfaultfd, io_uring, TIOCSTI, and opening a file for writing, creating or
truncating one. `clone3` answers ENOSYS (its flags cannot be inspected; libc then uses `clone`, whose
namespace flags are refused). Once started, the worker adds a filter refusing execve/execveat
(`forbid_exec`): it never runs another program.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shutil
import sys
from pathlib import Path

SANDBOX_UID = 65534  # nobody; no files are owned by it and it holds no privilege
STAGE = "/run/gw-sandbox"  # where the read-only roots are reachable, in the worker's mount namespace only
CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x20000, 0x1000, 0x4000, 0x40000, 0x2, 0x4
_libc = ctypes.CDLL(None, use_errno=True)

DENIED = (
    "socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm", "swapon", "swapoff", "syslog", "reboot",
    "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "quotactl", "personality",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "chmod", "fchmod",
    "fchmodat", "chown", "fchown", "lchown", "fchownat", "truncate", "ftruncate", "fallocate", "unlink",
    "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "link",
    "linkat", "symlink", "symlinkat", "creat", "memfd_create",
)
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
TIOCSTI = 0x5412
WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


class SandboxError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def seccomp_program() -> bytes:
    """The filter as a BPF program, in the form bubblewrap's `--seccomp FD` reads."""
    try:
        import seccomp
    except ImportError:
        raise SandboxError("python3-seccomp (libseccomp's binding) is needed to confine the inspection "
                           "worker") from None
    eperm = seccomp.ERRNO(errno.EPERM)
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        f.add_rule(eperm, name)
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for bit in (1 << i for i in range(32) if CLONE_NAMESPACES & (1 << i)):
        f.add_rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
    f.add_rule(eperm, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    for flag in WRITE_FLAGS:
        f.add_rule(eperm, "open", seccomp.Arg(1, seccomp.MASKED_EQ, flag, flag))
        f.add_rule(eperm, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")  # its flags are in a struct; libc falls back
    fd = os.memfd_create("gw-seccomp", os.MFD_CLOEXEC)
    try:
        f.export_bpf(os.fdopen(os.dup(fd), "wb"))
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        return data
    finally:
        os.close(fd)


def forbid_exec() -> None:
    """Called by the worker itself once its interpreter runs, before it reads the job: a second filter
    (filters stack) refusing execve/execveat, which bubblewrap's filter must still allow to start it."""
    import seccomp
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in ("execve", "execveat"):
        f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    f.load()


def program_fd() -> int:
    """A fresh descriptor reading the filter from its start (bubblewrap consumes it)."""
    fd = os.memfd_create("gw-seccomp", os.MFD_CLOEXEC)
    os.write(fd, seccomp_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_only_roots() -> list[str]:
    """What the interpreter needs, beyond /usr: the virtualenv and the guestward package itself."""
    import guestward
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots.add(os.path.realpath(Path(guestward.__file__).parent))
    roots.add(os.path.dirname(os.path.realpath(sys.executable)))
    out: list[str] = []
    for r in sorted(roots):
        if r in ("/", "") or r == "/usr" or r.startswith("/usr/") or any(r.startswith(o + "/") for o in out):
            continue
        out.append(r)
    return out


def _staged(roots: list[str]) -> list[tuple[str, str]]:
    return [(f"{STAGE}/{i}", r) for i, r in enumerate(roots)]


def stage() -> None:
    """As root, in the worker's child process before it execs `command()`: a private mount namespace in
    which each read-only root is bind-mounted under STAGE, on a fresh tmpfs over /run. The virtualenv and
    the code may live under a directory nobody cannot enter (/root, a mode-700 temporary directory); this
    way bubblewrap, already running as nobody, still finds them. Nothing changes in the host's mounts."""
    if os.geteuid() != 0:
        return

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inspection sandbox: {what}: {os.strerror(err)}")

    check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    os.makedirs(STAGE, 0o755, exist_ok=True)
    check(_libc.mount(b"tmpfs", STAGE.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k"),
          f"tmpfs on {STAGE}")
    for dst, src in _staged(_read_only_roots()):
        os.mkdir(dst, 0o755)
        check(_libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None), f"bind {src}")


def command(argv: list[str], seccomp_fd: int) -> list[str]:
    """`argv` (the worker's interpreter command) wrapped in the sandbox described above."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError("bubblewrap (`bwrap`) is needed to confine the inspection worker")
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SandboxError("`setpriv` (util-linux) is needed to run the inspection worker unprivileged")
        prefix = [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                  "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    box = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--clearenv",
           "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        p = Path("/" + link)
        if p.is_symlink():
            box += ["--symlink", os.readlink(p), "/" + link]
        elif p.is_dir():
            box += ["--ro-bind", str(p), str(p)]
    roots = _read_only_roots()
    for src, root in _staged(roots) if prefix else [(r, r) for r in roots]:
        box += ["--ro-bind", src, root]
    box += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--chdir", "/",
            "--setenv", "PATH", "/usr/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", "HOME", "/",
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--seccomp", str(seccomp_fd), "--"]
    return [*prefix, *box, *argv]
