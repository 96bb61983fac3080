"""The sandboxed inspection worker: `python -I -m guestward.inspect.worker` reads one job (JSON) on stdin
and writes each finished section (one JSON line each), then the result (the last line), on stdout. Started only
by guestward.inspect.runner, inside guestward.inspect.sandbox (unprivileged, own namespaces, seccomp), under
CPU, memory, file-size and wall-clock limits.

Jobs: `{"chains": [...], "fds": [...]}` inspects a guest; `{"header": path, "fds": [fd]}` reads the backing
fields of one qcow2 header (at most its first cluster); `{"selftest": ...}` (tests) reports the sandbox as
seen from inside.

Invariants:
- every byte of an image is read here, from the descriptors the job names (the parent opened each layer
  read-only; the images are not in this process's mount namespace at all); the sandbox is the boundary,
  the audit hook below only records (and refuses) what Python opens by name, and the list is part of the
  result;
- every layer is opened in the format the job gives; a qcow2 layer's backing file is the next layer of the
  chain, passed in explicitly (dissect would otherwise open a file named by the image itself);
- guest paths are resolved inside the guest's filesystems (an absolute symlink points into the guest),
  reads are capped in size, and a section that fails is reported as an error, marking the result partial.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from typing import Any

from guestward.inspect import parsers

MAX_FILE = 64 << 20  # any single guest file read (dpkg status is ~0.5 MB on a minbase Debian)
MAX_CONFIG = 1 << 20
MAX_ITEMS = 20000  # per list (setuid files, keys, cron entries): a hostile image cannot flood the result
MAX_WALK_DEPTH = 64

OPENED: list[str] = []
RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def install_open_guard(layers: list[str]) -> None:
    """Record every path opened by name (the chain's layers, passed as descriptors, are listed as opened
    up front), and refuse any outside Python's library: a record and a tripwire, not the boundary."""
    OPENED.extend(layers)
    lib_roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path) if p}
    lib_roots = {r for r in lib_roots if r not in ("/", "")}
    devices = {"/dev/null", "/dev/urandom"}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not isinstance(args[0], str | bytes | os.PathLike):
            return
        p = os.fsdecode(args[0])
        real = os.path.realpath(p)
        OPENED.append(real)
        if real in devices:
            return
        if any(real.startswith(r + os.sep) for r in lib_roots) or real.startswith("/usr/share/zoneinfo/"):
            return  # Python's own library and data files (all the sandbox mounts, read-only)
        raise PermissionError(f"inspection worker: open({real}) refused: the worker reads the chain's layers "
                              "from the descriptors it was given, and nothing else")

    sys.addaudithook(hook)


class GuestFS:
    """Reads from the guest's mounted filesystems, with size caps and per-section error capture."""

    def __init__(self, target: Any) -> None:
        self.t = target
        self.errors: list[dict[str, str]] = []

    def path(self, p: str) -> Any:
        return self.t.fs.path(p)

    def read(self, p: str, limit: int = MAX_CONFIG, section: str = "") -> str | None:
        try:
            path = self.path(p)
            if not path.exists():
                return None
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                self.error(section or p, f"{p}: not a regular file")
                return None
            if st.st_size > limit:
                self.error(section or p, f"{p}: {st.st_size} bytes, over the {limit}-byte limit; not read")
                return None
            with path.open("rb") as f:
                data: bytes = f.read(limit + 1)
            return data[:limit].decode("utf-8", errors="replace")
        except Exception as exc:  # a hostile filesystem can raise anything: the section is partial
            self.error(section or p, f"{p}: {type(exc).__name__}: {exc}")
            return None

    def listdir(self, p: str) -> list[str]:
        try:
            path = self.path(p)
            if not path.is_dir():
                return []
            return sorted(c.name for c in path.iterdir())[:MAX_ITEMS]
        except Exception as exc:
            self.error(p, f"{p}: {type(exc).__name__}: {exc}")
            return []

    def lstat(self, p: str) -> Any:
        try:
            return self.path(p).lstat()
        except Exception:
            return None

    def error(self, section: str, message: str) -> None:
        if len(self.errors) < 200:
            self.errors.append({"section": section, "error": message})


def open_chain(chain: dict[str, Any]) -> Any:
    """The guest-visible stream of one chain, bottom layer first, every format as given."""
    from dissect.hypervisor.disk.qcow2 import QCow2

    class ExplicitQCow2(QCow2):  # type: ignore[misc]
        def _open_backing_file(self, backing_file: Any, allow_no_backing_file: bool = False) -> Any:
            # dissect would open a file the image names, and re-detect the backing file's format by magic.
            if backing_file is None:
                raise ValueError(f"qcow2 layer names backing file {self.auto_backing_file!r}, "
                                 "but the chain has no next layer")
            backing_file.seek(0)
            return backing_file

    lower: Any = None
    for layer in reversed(chain["layers"]):
        fh = os.fdopen(layer["fd"], "rb")  # the parent's read-only descriptor; lives as long as the worker
        if layer["format"] == "raw":
            if lower is not None:
                raise ValueError(f"raw layer {layer['path']} cannot have a backing file")
            lower = fh
        else:
            q = ExplicitQCow2(fh, backing_file=lower)
            if lower is not None and not q.auto_backing_file:
                raise ValueError(f"{layer['path']}: the chain names a backing file but the qcow2 header has none")
            lower = q.open()
    return lower


def os_info(g: GuestFS) -> dict[str, Any]:
    text = g.read("/etc/os-release", section="os") or g.read("/usr/lib/os-release", section="os") or ""
    rel = parsers.parse_os_release(text)
    info = {"id": rel.get("ID", ""), "version_id": rel.get("VERSION_ID", ""),
            "codename": rel.get("VERSION_CODENAME", ""),
            "pretty_name": rel.get("PRETTY_NAME", ""), "id_like": rel.get("ID_LIKE", "")}
    if info["id"] == "debian":
        info["debian_version"] = (g.read("/etc/debian_version", section="os") or "").strip()
    if alp := g.read("/etc/alpine-release", section="os"):
        info["alpine_release"] = alp.strip()
    return info


def packages(g: GuestFS) -> list[dict[str, str]]:
    pkgs: list[dict[str, str]] = []
    if (status := g.read("/var/lib/dpkg/status", MAX_FILE, "packages")) is not None:
        pkgs += parsers.parse_dpkg_status(status)
    if (apk := g.read("/lib/apk/db/installed", MAX_FILE, "packages")) is not None:
        pkgs += parsers.parse_apk_installed(apk)
    for rpmdb in ("/var/lib/rpm/rpmdb.sqlite", "/var/lib/rpm/Packages", "/usr/lib/sysimage/rpm/rpmdb.sqlite"):
        if g.path(rpmdb).exists():
            g.error("packages", f"{rpmdb}: RPM databases are not read yet (dissect 3.25 has no RPM plugin)")
    return pkgs


def kernels(g: GuestFS, pkgs: list[dict[str, str]]) -> list[dict[str, str]]:
    out = {}
    for name in g.listdir("/boot"):
        if name.startswith("vmlinuz-"):
            out[name[8:]] = {"version": name[8:], "found": "boot"}
    for d in ("/usr/lib/modules", "/lib/modules"):
        for name in g.listdir(d):
            out.setdefault(name, {"version": name, "found": "modules"})
    for p in pkgs:
        if p["name"].startswith("linux-image-") and p["name"][12:] and p["name"][12:][0].isdigit():
            out.setdefault(p["name"][12:], {"version": p["name"][12:], "found": "package"})
            out[p["name"][12:]]["package"] = p["name"] + " " + p["version"]
    return sorted(out.values(), key=lambda k: k["version"])


def users(g: GuestFS) -> list[dict[str, Any]]:
    passwd = parsers.parse_passwd(g.read("/etc/passwd", section="users") or "")
    shadow = parsers.parse_shadow(g.read("/etc/shadow", section="users") or "")
    for u in passwd:
        field = u.pop("passwd_field")
        u["password"] = shadow.get(u["name"], parsers.password_state(field) if field != "x" else "locked")
    return passwd


def guest_glob(g: GuestFS, pattern: str) -> list[str]:
    d, _, base = pattern.rpartition("/")
    return [f"{d}/{n}" for n in parsers.glob_filter(g.listdir(d or "/"), base)]


def sshd(g: GuestFS) -> dict[str, Any]:
    return parsers.sshd_effective(lambda p: g.read(p, section="sshd"), lambda p: guest_glob(g, p))


def authorized_keys(g: GuestFS, us: list[dict[str, Any]], ssh: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    patterns = ssh["effective"].get("authorizedkeysfile", parsers.SSHD_DEFAULTS["authorizedkeysfile"]).split()
    for u in us:
        seen = set()
        for pat in patterns:
            f = pat.replace("%h", u["home"]).replace("%u", u["name"]).replace("%%", "%")
            if not f.startswith("/"):
                f = u["home"].rstrip("/") + "/" + f
            if f in seen or not u["home"].startswith("/"):
                continue
            seen.add(f)
            text = g.read(f, section="authorized_keys")
            for k in parsers.parse_authorized_keys(text or ""):
                out.append({"user": u["name"], "file": f, **k})
    return out[:MAX_ITEMS]


def _writable(st: Any) -> bool:
    return st is not None and (bool(st.st_mode & 0o022) or st.st_uid != 0)


def cron(g: GuestFS) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(path: str, system: bool, user: str = "") -> None:
        text = g.read(path, section="cron")
        st = g.lstat(path)
        meta = {"file": path, "mode": oct(st.st_mode & 0o7777) if st else "", "owner_uid": st.st_uid if st else -1,
                "writable": _writable(st)}
        for e in parsers.parse_crontab(text or "", system=system):
            out.append({**meta, **e, "user": e["user"] or user})

    add("/etc/crontab", True)
    for name in g.listdir("/etc/cron.d"):
        if not RUN_PARTS_NAME.match(name):
            continue  # cron and run-parts skip names with dots (dpkg leftovers, .placeholder)
        add(f"/etc/cron.d/{name}", True)
    for name in g.listdir("/var/spool/cron/crontabs"):
        add(f"/var/spool/cron/crontabs/{name}", False, name)
    for period in ("hourly", "daily", "weekly", "monthly"):
        d = f"/etc/cron.{period}"
        for name in g.listdir(d):
            if not RUN_PARTS_NAME.match(name):
                continue
            st = g.lstat(f"{d}/{name}")
            out.append({"file": f"{d}/{name}", "schedule": f"@{period}", "user": "root", "command": f"{d}/{name}",
                        "mode": oct(st.st_mode & 0o7777) if st else "", "owner_uid": st.st_uid if st else -1,
                        "writable": _writable(st)})
    return out[:MAX_ITEMS]


def cron_dirs(g: GuestFS) -> list[dict[str, Any]]:
    out = []
    for d in ("/etc/cron.d", "/var/spool/cron/crontabs", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly",
              "/etc/cron.monthly"):
        st = g.lstat(d)
        if st is not None and stat.S_ISDIR(st.st_mode):
            # crontabs is root:crontab 1730 by design; other dirs must not be group/world-writable
            bad = bool(st.st_mode & 0o002) or (d != "/var/spool/cron/crontabs" and bool(st.st_mode & 0o020))
            out.append({"dir": d, "mode": oct(st.st_mode & 0o7777), "owner_uid": st.st_uid,
                        "writable": bad or st.st_uid != 0})
    return out


def services(g: GuestFS) -> list[dict[str, str]]:
    out = []
    base = "/etc/systemd/system"
    for name in g.listdir(base):
        if name.endswith((".wants", ".requires")):
            for unit in g.listdir(f"{base}/{name}"):
                out.append({"unit": unit, "wanted_by": name.rsplit(".", 1)[0], "init": "systemd"})
    for name in g.listdir("/etc/runlevels/default"):  # OpenRC (Alpine)
        out.append({"unit": name, "wanted_by": "default", "init": "openrc"})
    return out[:MAX_ITEMS]


def setuid_walk(t: Any, g: GuestFS, generic: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """setuid/setgid regular files by a direct walk of each ext filesystem's directory tree (inodes read
    straight from dissect.extfs, no per-file plugin or VFS calls); other filesystem types are walked
    through dissect's generic interface."""
    found: list[dict[str, Any]] = []
    inodes = 0
    start = time.perf_counter()
    for mount, fs in sorted(t.fs.mounts.items()):
        extfs = None if generic else getattr(fs, "extfs", None)
        prefix = "" if mount == "/" else mount.rstrip("/")
        if extfs is None:
            inodes += generic_walk(fs, prefix, found, g)
            continue
        seen: set[int] = set()
        stack: list[tuple[Any, str, int]] = [(extfs.root, prefix, 0)]
        while stack:
            d, path, depth = stack.pop()
            if d.inum in seen:
                continue
            seen.add(d.inum)
            try:
                children = list(d.iterdir())
            except Exception as exc:
                g.error("setuid", f"{path or '/'}: {type(exc).__name__}: {exc}")
                continue
            for c in children:
                name = c.filename
                if name in (".", "..") or "/" in name:
                    continue
                inodes += 1
                full = f"{path}/{name}"
                try:
                    raw = c.inode
                except Exception as exc:
                    g.error("setuid", f"{full}: {type(exc).__name__}: {exc}")
                    continue
                mode = raw.i_mode
                if stat.S_ISDIR(mode):
                    if depth < MAX_WALK_DEPTH:
                        stack.append((c, full, depth + 1))
                    else:
                        g.error("setuid", f"{full}: deeper than {MAX_WALK_DEPTH} levels, not walked")
                elif stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID) and len(found) < MAX_ITEMS:
                    uid = raw.i_uid | (getattr(raw, "i_uid_high", 0) << 16)
                    gid = raw.i_gid | (getattr(raw, "i_gid_high", 0) << 16)
                    found.append({"path": full, "mode": oct(mode & 0o7777), "uid": uid, "gid": gid,
                                  "setuid": bool(mode & stat.S_ISUID), "setgid": bool(mode & stat.S_ISGID),
                                  "size": raw.i_size_lo | (raw.i_size_high << 32)})
    seconds = time.perf_counter() - start
    return sorted(found, key=lambda f: f["path"]), {"inodes": inodes, "seconds": round(seconds, 4)}


def generic_walk(fs: Any, prefix: str, found: list[dict[str, Any]], g: GuestFS) -> int:
    """The same walk through dissect's generic filesystem interface (XFS, btrfs...): slower, same result."""
    count = 0
    stack: list[tuple[str, int]] = [("/", 0)]
    while stack:
        path, depth = stack.pop()
        try:
            entries = list(fs.get(path).scandir())
        except Exception as exc:
            g.error("setuid", f"{prefix}{path}: {type(exc).__name__}: {exc}")
            continue
        for e in entries:
            if e.name in (".", "..") or "/" in e.name:
                continue
            count += 1
            full = path.rstrip("/") + "/" + e.name
            try:
                st = e.stat(follow_symlinks=False)
            except Exception as exc:
                g.error("setuid", f"{prefix}{full}: {type(exc).__name__}: {exc}")
                continue
            if stat.S_ISDIR(st.st_mode) and depth < MAX_WALK_DEPTH:
                stack.append((full, depth + 1))
            elif stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID) and len(found) < MAX_ITEMS:
                found.append({"path": prefix + full, "mode": oct(st.st_mode & 0o7777), "uid": st.st_uid,
                              "gid": st.st_gid, "setuid": bool(st.st_mode & stat.S_ISUID),
                              "setgid": bool(st.st_mode & stat.S_ISGID), "size": st.st_size})
    return count


def usr_aliases(g: GuestFS) -> dict[str, str]:
    """Merged-/usr aliases (/bin -> /usr/bin ...), so dpkg's paths and the walk's paths compare."""
    out = {}
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        try:
            p = g.path("/" + top)
            if p.is_symlink():
                dest = p.readlink().as_posix()
                out["/" + top] = dest if dest.startswith("/") else "/" + dest
        except Exception:
            continue
    return out


def canonical(path: str, aliases: dict[str, str]) -> str:
    for a, real in aliases.items():
        if path == a or path.startswith(a + "/"):
            return real + path[len(a):]
    return path


def dpkg_owned(g: GuestFS, aliases: dict[str, str]) -> set[str] | None:
    names = g.listdir("/var/lib/dpkg/info")
    if not names:
        return None
    owned = set()
    for n in names:
        if n.endswith(".list"):
            for line in (g.read(f"/var/lib/dpkg/info/{n}", MAX_FILE, "setuid") or "").splitlines():
                owned.add(canonical(line.strip(), aliases))
    return owned


class Streamed(dict[str, Any]):
    """The result, each section also written to stdout as it is set (one JSON line), so a worker killed
    at a limit still leaves the sections it finished: the caller returns them marked partial."""

    def __init__(self, stall_after: str | None = None) -> None:
        super().__init__()
        self.stall_after = stall_after

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        sys.stdout.write(json.dumps({"section": key, "value": value}, default=str) + "\n")
        sys.stdout.flush()
        if key == self.stall_after:  # tests: a worker that stops making progress (a hostile image's effect)
            time.sleep(3600)


def inspect_target(t: Any, generic_walk: bool = False, stall_after: str | None = None) -> dict[str, Any]:
    g = GuestFS(t)
    result: dict[str, Any] = Streamed(stall_after)
    timings: dict[str, float] = {}

    def section(name: str, fn: Any) -> Any:
        s = time.perf_counter()
        try:
            return fn()
        except Exception as exc:
            g.error(name, f"{type(exc).__name__}: {exc}")
            return None
        finally:
            timings[name] = round(time.perf_counter() - s, 4)

    result["os"] = section("os", lambda: os_info(g)) or {}
    result["hostname"] = section("hostname", lambda: (g.read("/etc/hostname", section="hostname") or "").strip())
    result["packages"] = section("packages", lambda: packages(g)) or []
    result["kernels"] = section("kernels", lambda: kernels(g, result["packages"])) or []
    result["users"] = section("users", lambda: users(g)) or []
    result["sshd"] = section("sshd", lambda: sshd(g)) or {"present": False, "effective": {}, "explicit": {}}
    result["authorized_keys"] = section(
        "authorized_keys", lambda: authorized_keys(g, result["users"], result["sshd"])) or []
    result["cron"] = section("cron", lambda: cron(g)) or []
    result["cron_dirs"] = section("cron", lambda: cron_dirs(g)) or []
    result["services"] = section("services", lambda: services(g)) or []
    walk = section("setuid", lambda: setuid_walk(t, g, generic_walk))
    result["setuid"], result["walk"] = walk if walk else ([], {})
    aliases = section("setuid", lambda: usr_aliases(g)) or {}
    owned = section("setuid", lambda: dpkg_owned(g, aliases))
    for f in result["setuid"]:
        f["packaged"] = None if owned is None else canonical(f["path"], aliases) in owned
    result["timings"] = timings
    result["errors"] = g.errors
    result["partial"] = bool(g.errors)
    return result


def mount_root(t: Any) -> list[dict[str, str]]:
    """Mount the filesystem holding /etc at /, then the ext filesystems /etc/fstab names by UUID or LABEL."""
    roots = []
    for fs in t.filesystems:
        try:
            if fs.exists("/etc") and (fs.exists("/etc/passwd") or fs.exists("/etc/os-release")):
                roots.append(fs)
        except Exception:
            continue
    if not roots:
        raise InspectError("no readable filesystem with an /etc (no partition table, LVM or filesystem dissect "
                           "recognises, or a corrupt one)")
    t.fs.mount("/", roots[0])
    errors = []
    g = GuestFS(t)
    by_id = {}
    for fs in t.filesystems:
        e = getattr(fs, "extfs", None)
        if e is not None and fs is not roots[0]:
            by_id[f"UUID={e.uuid}".lower()] = fs
            if e.volume_name:
                by_id[f"LABEL={e.volume_name}".lower()] = fs
    for line in (g.read("/etc/fstab", section="fstab") or "").splitlines():
        f = line.split()
        if len(f) < 2 or f[0].startswith("#") or f[1] in ("/", "none", "swap") or not f[1].startswith("/"):
            continue
        fs = by_id.get(f[0].lower())
        if fs is not None:
            t.fs.mount(f[1], fs)
        elif f[0].upper().startswith(("UUID=", "LABEL=")) and (len(f) < 3 or f[2].startswith("ext")):
            errors.append({"section": "fstab", "error": f"{f[1]}: {f[0]} not found among the guest's disks"})
    return errors + g.errors


def selftest(probe: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """Tests: the sandbox as seen from inside. Tries each `probe["read"]`/`probe["write"]` path, each passed
    descriptor (read, write, reopen for writing), and a few system calls the seccomp filter refuses;
    each outcome is "ok" or the errno's name."""
    import ctypes
    import errno
    import resource

    def attempt(fn: Any) -> str:
        try:
            fn()
            return "ok"
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, str(exc.errno))

    libc = ctypes.CDLL(None, use_errno=True)

    def syscall(name: str, *args: Any) -> str:
        ctypes.set_errno(0)
        rc = getattr(libc, name)(*args)
        return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

    def raw(nr: int) -> str:  # every argument 0: whatever the call, the filter answers before the kernel
        ctypes.set_errno(0)
        rc = libc.syscall(ctypes.c_long(nr), *([ctypes.c_long(0)] * 6))
        return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")

    def read(p: str) -> None:
        with open(p, "rb") as f:
            f.read(1)

    def write(p: str) -> None:
        with open(p, "ab") as f:
            f.write(b"x")

    time.sleep(float(probe.get("hold", 0)))  # tests: time to look at the worker from the host
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
                status[k] = v.split()[0] if k in ("Uid", "Gid") else v.strip()
    with open("/proc/net/dev") as f:
        interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    with open("/proc/self/uid_map") as f:
        uid_map = f.read().split()
    return {
        "interfaces": interfaces,
        "rlimits": {name: resource.getrlimit(getattr(resource, name))[0]
                    for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE")},
        "status": status, "uid_map": uid_map, "pid": os.getpid(),
        "pids": sorted(int(n) for n in os.listdir("/proc") if n.isdigit()),
        "root": sorted(os.listdir("/")),
        "read": {p: attempt(lambda p=p: read(p)) for p in probe.get("read", [])},
        "write": {p: attempt(lambda p=p: write(p)) for p in probe.get("write", [])},
        "fds": [{"read": attempt(lambda fd=fd: os.pread(fd, 4, 0)),
                 "write": attempt(lambda fd=fd: os.pwrite(fd, b"x", 0)),
                 "reopen_rw": attempt(lambda fd=fd: os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDWR)))}
                for fd in fds],
        "syscalls": {
            "socket_inet": syscall("socket", 2, 1, 0), "socket_unix": syscall("socket", 1, 1, 0),
            "unshare_user": syscall("unshare", 0x10000000), "ptrace_traceme": syscall("ptrace", 0, 0, 0, 0),
            "mount": syscall("mount", b"none", b"/usr", b"tmpfs", 0, None), "setuid_0": syscall("setuid", 0),
            "signal_pid1": attempt(lambda: os.kill(1, 0)),
            **{name: raw(int(nr)) for name, nr in probe.get("syscalls", {}).items()},
        },
    }


def read_header(path: str, fd: int) -> dict[str, Any]:
    """The backing fields of the qcow2 header on `fd`: two bounded reads (24 bytes, then one cluster)."""
    from guestward.inspect import qcow2
    try:
        info = qcow2.parse_header(os.pread(fd, qcow2.header_read_size(os.pread(fd, 24, 0)), 0))
    except qcow2.Qcow2Error as exc:
        raise InspectError(f"{path}: {exc}") from None
    except OSError as exc:
        raise InspectError(f"{path}: cannot read: {exc.strerror}") from None
    return {"name": info.name, "format": info.format}


def run(job: dict[str, Any]) -> dict[str, Any]:
    if job.get("selftest"):
        return selftest(job.get("probe") or {}, job.get("fds", []))
    if "header" in job:
        OPENED.append(str(job["header"]))
        return read_header(str(job["header"]), job["fds"][0])
    fds = iter(job["fds"])
    for c in job["chains"]:
        for la in c["layers"]:
            la["fd"] = next(fds)
    paths = [la["path"] for c in job["chains"] for la in c["layers"]]
    install_open_guard(paths)
    start = time.perf_counter()
    from dissect.target import Target
    from dissect.target.containers.raw import RawContainer

    t = Target()
    for chain in job["chains"]:
        try:
            stream = open_chain(chain)
        except Exception as exc:
            raise InspectError(f"disk {chain['target']}: cannot open: {exc}") from None
        t.disks.add(RawContainer(stream))
    try:
        # Disks -> volumes (MBR, GPT, LVM) -> filesystems. dissect's OS plugins are not run: they read
        # guest files (hostname, fstab) without our size caps and fail the whole target on one bad file.
        t.disks.apply()
        t.volumes.apply()
        t.filesystems.apply()
    except Exception as exc:
        raise InspectError(f"no readable filesystem: {type(exc).__name__}: {exc}") from None
    mount_errors = mount_root(t)
    opened_s = time.perf_counter() - start
    result = inspect_target(t, generic_walk=job.get("walk") == "generic",  # "generic": tests, non-ext path
                            stall_after=job.get("stall_after"))
    if mount_errors:
        result["errors"] += mount_errors
        result["partial"] = True
    result["timings"]["open"] = round(opened_s, 4)
    result["volumes"] = [type(v).__name__ for v in t.volumes]
    result["filesystems"] = [f"{m} {type(fs).__name__}" for m, fs in sorted(t.fs.mounts.items())]
    return result


class InspectError(Exception):
    pass


def main() -> None:
    import logging
    logging.disable(logging.CRITICAL)  # dissect logs the guest's garbage; errors are in the result
    from guestward.inspect.sandbox import forbid_exec
    forbid_exec()
    job = json.loads(sys.stdin.read())
    try:
        out: dict[str, Any] = {"ok": True, "result": run(job)}
    except MemoryError:
        out = {"ok": False, "error": "the worker ran out of memory (its memory limit)"}
    except InspectError as exc:
        out = {"ok": False, "error": str(exc)}
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    out["opened"] = sorted(set(OPENED))
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
