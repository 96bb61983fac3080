"""Real Debian images for the inspection tests.

The Debian root comes from `debootstrap --variant=minbase --include=openssh-server,cron bookworm`, cached
under /var/cache/guestward/test-rootfs/<key> (key: suite, variant, packages and the month, so the cache
refreshes monthly); a fresh machine builds it once (about 30 s from deb.debian.org). Findings are planted
into a copy, and images are made from the copy with `mkfs.ext4 -d` (no loop devices, no mounts).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("GUESTWARD_TEST_ROOTFS_CACHE", "/var/cache/guestward/test-rootfs"))
INCLUDE = "openssh-server,cron"
MIRROR = "http://deb.debian.org/debian"
PLANTED_KEY_COMMENT = "planted@attacker"
HIDDEN_SHELL = "/usr/local/lib/.cache/.sh"
CRON_FILE = "/etc/cron.d/backdoor"
KERNEL = "6.1.0-99-cloud-amd64"


def run(*argv: str, timeout: float = 120) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=timeout).stdout


def ed25519_line(seed: int, comment: str) -> str:
    def s(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b
    blob = s(b"ssh-ed25519") + s(bytes((seed + i) % 256 for i in range(32)))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def cached_rootfs() -> Path:
    assert os.geteuid() == 0, "inspection tests need root (debootstrap, mkfs; CI runs them as root)"
    key = f"bookworm-minbase-{INCLUDE.replace(',', '-')}-{time.strftime('%Y%m', time.gmtime())}"
    root = CACHE / key
    if (root / "var/lib/dpkg/status").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    run("debootstrap", "--variant=minbase", f"--include={INCLUDE}", "bookworm", str(tmp), MIRROR, timeout=900)
    try:
        tmp.rename(root)
    except OSError:  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    for old in CACHE.glob("bookworm-minbase-*"):
        if old != root:
            shutil.rmtree(old, ignore_errors=True)
    return root


@dataclass
class Planted:
    root: Path
    key_line: str


def plant(root: Path) -> Planted:
    """Extra uid 0 user, an empty-password login user, root's authorized key, a hidden setuid shell,
    a world-writable cron entry, PermitRootLogin yes."""
    (root / "etc/hostname").write_text("inspect-guest-01\n")
    (root / "boot" / f"vmlinuz-{KERNEL}").write_bytes(b"\0" * 512)  # minbase has no kernel: an installed one
    (root / "usr/lib/modules" / KERNEL).mkdir(parents=True, exist_ok=True)
    with open(root / "etc/passwd", "a") as f:
        f.write("toor:x:0:0:toor:/root:/bin/bash\nguest:x:1001:1001::/home/guest:/bin/bash\n")
    with open(root / "etc/shadow", "a") as f:
        f.write("toor:$6$abc$def:19000:0:99999:7:::\nguest::19000:0:99999:7:::\n")
    (root / "home/guest").mkdir(parents=True, exist_ok=True)
    key = ed25519_line(7, PLANTED_KEY_COMMENT)
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    (root / "root/.ssh/authorized_keys").write_text(key + "\n")
    hidden = root / HIDDEN_SHELL.lstrip("/")
    hidden.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "usr/bin/bash", hidden)
    os.chmod(hidden, 0o4755)
    cron = root / CRON_FILE.lstrip("/")
    cron.write_text("SHELL=/bin/sh\n*/5 * * * * root /usr/local/lib/.cache/.sh -p -c 'id > /tmp/x'\n")
    os.chmod(cron, 0o666)
    cfg = root / "etc/ssh/sshd_config"
    cfg.write_text("PermitRootLogin yes\n" + cfg.read_text())
    return Planted(root, key)


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    src = cached_rootfs()
    root = tmp_path_factory.mktemp("root") / "rootfs"
    run("cp", "-a", str(src), str(root))
    return plant(root)


def mkfs(root: Path, image: Path, size: str = "1G", offset: int | None = None) -> Path:
    argv = ["mkfs.ext4", "-q", "-F", "-L", "gwroot", "-d", str(root)]
    if offset is not None:
        argv += ["-E", f"offset={offset}"]
    run(*argv, str(image), size)
    return image


@dataclass
class Images:
    raw: Path
    qcow2: Path
    overlay: Path  # qcow2 over `qcow2`, absolute backing path
    gpt: Path
    mbr: Path


@pytest.fixture(scope="session")
def images(planted: Planted, tmp_path_factory: pytest.TempPathFactory) -> Images:
    d = tmp_path_factory.mktemp("images")
    raw = mkfs(planted.root, d / "disk.raw")
    qcow2 = d / "disk.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    overlay = d / "overlay.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(qcow2.resolve()), "-F", "qcow2", str(overlay))
    gpt = d / "gpt.raw"
    run("truncate", "-s", "1100M", str(gpt))
    subprocess.run(["sfdisk", "-q", str(gpt)], check=True, text=True, capture_output=True,
                   input='label: gpt\nstart=2048, size=2097152, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, '
                         'name="root"\n')
    run("dd", f"if={raw}", f"of={gpt}", "bs=4M", "seek=1M", "oflag=seek_bytes", "conv=notrunc,sparse",
        "status=none")
    mbr = d / "mbr.raw"
    run("truncate", "-s", "1100M", str(mbr))
    subprocess.run(["sfdisk", "-q", str(mbr)], check=True, text=True, capture_output=True,
                   input="label: dos\nstart=2048, size=2097152, type=83\n")
    mkfs(planted.root, mbr, offset=1048576)
    return Images(raw, qcow2, overlay, gpt, mbr)


def ground_truth_packages(root: Path) -> set[tuple[str, str, str, str]]:
    out = run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f",
              "${db:Status-Status}\t${Package}\t${Version}\t${source:Package}\t${source:Version}\n")
    rows = set()
    for line in out.splitlines():
        status, name, version, src, src_version = line.split("\t")
        if status == "installed":
            rows.add((name, version, src, src_version))
    return rows


def ground_truth_setuid(root: Path) -> set[str]:
    out = run("find", str(root), "-xdev", "-type", "f", "-perm", "/6000")
    return {"/" + str(Path(p).relative_to(root)) for p in out.splitlines()}
