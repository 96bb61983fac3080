"""Collect the audit's facts: domain XML from libvirt (inactive and live, with VIR_DOMAIN_XML_SECURE
so console passwords can be judged) and from files, and a host's configuration from a root path.

A host root (`/`, or a copy of a host's `/etc` and `/var/lib/libvirt`) is read as a chroot would
see it: every symlink is resolved by us, component by component, inside the root (an absolute
target is taken relative to the root, `..` stops at the root), with a hop limit against loops.
Nothing outside the root is read; a link that would leave it is reported, not followed. Files are
size-checked (fstat on the opened descriptor) before reading: a multi-GB file is an error, not read.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import libvirt

from guestward.audit.catalogue import Check
from guestward.audit.engine import InputError
from guestward.audit.facts import MAX_CONF_BYTES, MAX_XML_BYTES, FileMeta, HostFacts
from guestward.audit.model import FileRule
from guestward.hypervisor import inventory as _inventory  # noqa: F401  (installs the quiet error handler)
from guestward.hypervisor.errors import HypervisorError

MAX_HOPS = 40

CONFIG_FILES = (
    "/etc/libvirt/qemu.conf", "/etc/libvirt/libvirtd.conf", "/etc/libvirt/virtqemud.conf",
    "/etc/libvirt/virtproxyd.conf", "/etc/libvirt/qemu-lockd.conf", "/etc/libvirt/virtlogd.conf",
    "/etc/passwd", "/etc/group", "/proc/cmdline", "/sys/fs/selinux/enforce",
    "/sys/module/apparmor/parameters/enabled", "/sys/kernel/mm/ksm/run",
)
CONFIG_GLOBS = (
    "/sys/devices/system/cpu/vulnerabilities/*", "/etc/apparmor.d/libvirt/libvirt-*",
    "/etc/systemd/system/libvirtd.socket.d/*.conf", "/etc/systemd/system/virtqemud.socket.d/*.conf",
    "/etc/systemd/system/virtproxyd.socket.d/*.conf", "/sys/fs/selinux/booleans/virt_*",
)
LOG_GLOBS = ("/var/log/libvirt/qemu/*.log",)  # only their last LOG_TAIL bytes are read
LOG_TAIL = 256 * 1024
META_GLOBS = (
    "/etc/systemd/system/sockets.target.wants/*", "/etc/systemd/system/multi-user.target.wants/*",
    "/sys/kernel/iommu_groups/*",
)


class RootEscape(OSError):
    pass


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """`path` (absolute, as on the host) -> the real path under `root`, resolving symlinks inside the
    root. Raises RootEscape for a loop (too many hops); never returns a path outside `root`."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", "")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            done.append(part)
            done.extend(p for p in parts if p not in (".", ".."))
            return root.joinpath(*done)
        if stat.S_ISLNK(st.st_mode) and (parts or follow_last):
            hops += 1
            if hops > MAX_HOPS:
                raise RootEscape(f"{path}: symlink loop (more than {MAX_HOPS} links)")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in PurePosixPath(target).parts if p not in ("/", "")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


@contextmanager
def _open_regular(real: Path, shown: str) -> Iterator[tuple[int, os.stat_result]]:
    """A descriptor and its stat for a regular file, opened without following a final link (we
    resolved it) and without blocking on a FIFO; anything else is refused."""
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{shown}: not a regular file")
        yield fd, st
    finally:
        os.close(fd)


def _read_capped(real: Path, limit: int, shown: str) -> str:
    """Check the size on the descriptor, then read at most `limit` bytes."""
    with _open_regular(real, shown) as (fd, st):
        if st.st_size > limit:
            raise OSError(f"{shown}: {st.st_size} bytes, larger than {limit} bytes: not read")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(f"{shown}: larger than {limit} bytes: not read")
        return data.decode("utf-8", errors="replace")


def _read_tail(real: Path, limit: int, shown: str) -> str:
    """The last `limit` bytes of a (log) file, never more, however large it is."""
    with _open_regular(real, shown) as (fd, st):
        os.lseek(fd, max(0, st.st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode("utf-8", errors="replace")


def _expand(root: Path, pattern: str, problems: list[tuple[str, str]]) -> list[str]:
    """Host paths under `root` matching `pattern` (wildcards only in the last components), without
    following links out of the root."""
    parts = PurePosixPath(pattern).parts[1:]
    paths = ["/"]
    for part in parts:
        nxt = []
        for base in paths:
            if not any(ch in part for ch in "*?["):
                nxt.append(str(PurePosixPath(base) / part))
                continue
            try:
                real = resolve_in_root(root, base)
                names = sorted(os.listdir(real)) if real.is_dir() and not real.is_symlink() else []
            except RootEscape as exc:
                problems.append((base, str(exc)))
                names = []
            except OSError:
                names = []
            nxt += [str(PurePosixPath(base) / n) for n in names if fnmatch.fnmatchcase(n, part)]
        paths = nxt
    return paths


def _meta(root: Path, host_path: str, problems: list[tuple[str, str]]) -> FileMeta | None:
    try:
        parent = resolve_in_root(root, str(PurePosixPath(host_path).parent))
        real = parent / PurePosixPath(host_path).name
        st = os.lstat(real)
    except RootEscape as exc:
        problems.append((host_path, str(exc)))
        return None
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        kind, target = "symlink", os.readlink(real)
    else:
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        target = None
    return FileMeta(host_path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, target)


def read_host_root(root: str | Path, checks: Sequence[Check]) -> HostFacts:
    """The host as facts: the config files the checks read and the metadata of the paths they test."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise HypervisorError(f"host root {root}: not a directory")
    problems: list[tuple[str, str]] = []
    files: dict[str, str] = {}
    wanted = set(CONFIG_FILES)
    for c in checks:
        rule = c.spec.rule
        if getattr(rule, "kind", None) == "conf":
            wanted.update([rule.file] if isinstance(rule.file, str) else rule.file)  # type: ignore[union-attr]
    for pat in CONFIG_GLOBS:
        wanted.update(_expand(root, pat, problems))
    for host_path in sorted(wanted):
        try:
            real = resolve_in_root(root, host_path)
            if not real.exists():
                continue
            files[host_path] = _read_capped(real, MAX_CONF_BYTES, host_path)
        except RootEscape as exc:
            problems.append((host_path, str(exc)))
        except OSError as exc:
            problems.append((host_path, (exc.strerror and f"{host_path}: {exc.strerror}") or str(exc)))
    for pat in LOG_GLOBS:
        for host_path in _expand(root, pat, problems):
            try:
                files[host_path] = _read_tail(resolve_in_root(root, host_path), LOG_TAIL, host_path)
            except OSError as exc:
                problems.append((host_path, str(exc)))
    meta: dict[str, FileMeta] = {}
    patterns = list(META_GLOBS) + [p for c in checks if isinstance(c.spec.rule, FileRule) for p in c.spec.rule.paths]
    for pat in patterns:
        for host_path in _expand(root, pat, problems):
            if host_path not in meta and (m := _meta(root, host_path, problems)) is not None:
                meta[host_path] = m
    return HostFacts(root=str(root), files=files, meta=meta, problems=tuple(dict.fromkeys(problems)))


def list_domain_files(targets: Iterable[str | Path]) -> tuple[list[Path], list[InputError]]:
    """Domain XML files and folders (their *.xml, recursively) -> the files, and an error per target
    that is neither (nothing read yet)."""
    files: list[Path] = []
    errors: list[InputError] = []
    for target in targets:
        t = Path(target)
        if t.is_dir():
            found = sorted(p for p in t.rglob("*.xml") if not p.is_dir())
            if not found:
                errors.append(InputError(str(t), "no *.xml files in this folder"))
            files += found
        elif t.exists() or t.is_symlink():
            files.append(t)
        else:
            errors.append(InputError(str(t), "no such file or folder"))
    return files, errors


def read_domain_file(f: Path) -> tuple[str, bytes, str] | InputError:
    """One file -> its (source, data, "file") triple, or an error; over the size cap it is not read."""
    try:
        fd = os.open(f, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{f}: not a regular file")
            if st.st_size > MAX_XML_BYTES:
                raise OSError(f"{f}: {st.st_size} bytes, larger than {MAX_XML_BYTES // (1024 * 1024)} MiB: not read")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(MAX_XML_BYTES + 1)
        finally:
            os.close(fd)
        return str(f), data, "file"
    except OSError as exc:
        return InputError(str(f), (exc.strerror and f"{f}: {exc.strerror}") or str(exc))


def read_domain_files(targets: Iterable[str | Path]) -> tuple[list[tuple[str, bytes, str]], list[InputError]]:
    """Domain XML files and folders (their *.xml, recursively) -> (source, data, "file") triples.
    A file over the size cap is reported without being read. (Holds every file at once: the audit
    command reads them one at a time with `list_domain_files` and `read_domain_file`.)"""
    files, errors = list_domain_files(targets)
    docs: list[tuple[str, bytes, str]] = []
    for f in files:
        got = read_domain_file(f)
        if isinstance(got, InputError):
            errors.append(got)
        else:
            docs.append(got)
    return docs, errors


def read_live(uri: str) -> tuple[list[tuple[str, str, str]], list[InputError]]:
    """Every domain of a libvirt connection: its inactive XML (persistent domains) and its live XML
    (running domains), both with VIR_DOMAIN_XML_SECURE."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{uri}: {exc.get_error_message()}") from None
    docs: list[tuple[str, str, str]] = []
    errors: list[InputError] = []
    try:
        for dom in conn.listAllDomains():
            name = dom.name()
            try:
                if dom.isPersistent():
                    flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE
                    docs.append((f"{uri}#{name}", dom.XMLDesc(flags), "inactive"))
                if dom.isActive():
                    docs.append((f"{uri}#{name}", dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE), "live"))
            except libvirt.libvirtError as exc:
                errors.append(InputError(f"{uri}#{name}", exc.get_error_message()))
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{uri}: {exc.get_error_message()}") from None
    finally:
        conn.close()
    return docs, errors
