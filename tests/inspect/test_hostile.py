"""Hostile images: each gets a clear error or a partial, marked result; no host file outside the chain
is opened (the worker's open audit lists every path; a FIFO canary would block any reader)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from guestward.hypervisor.disks import chains_from_xml
from guestward.inspect.chain import ChainError, image_chain
from guestward.inspect.runner import Limits, WorkerError, inspect_chains, run_worker
from tests.inspect.conftest import ed25519_line, mkfs, run

pytestmark = pytest.mark.inspect


def small_root(d: Path) -> Path:
    root = d / "root"
    for sub in ("etc/ssh", "root/.ssh", "var/lib/dpkg", "usr/bin", "home/a/.ssh"):
        (root / sub).mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n')
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\na:x:1000:1000::/home/a:/bin/sh\n")
    (root / "etc/shadow").write_text("root:*:1::::::\na:!:1::::::\n")
    (root / "var/lib/dpkg/status").write_text(
        "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\n")
    return root


def host_canary(d: Path, fifo: bool) -> Path:
    c = d / ("canary.fifo" if fifo else "canary.raw")
    if fifo:
        os.mkfifo(c)
    else:
        c.write_bytes(b"TOP-SECRET-HOST-DATA\n" * 1000)
    return c


@pytest.mark.parametrize("backing", ["relative-fifo", "absolute-file"])
def test_raw_disk_with_qcow2_header_naming_a_host_file(tmp_path: Path, backing: str) -> None:
    canary = host_canary(tmp_path, fifo=backing.endswith("fifo"))
    evil = tmp_path / "guest-disk.img"
    name = canary.name if backing.startswith("relative") else str(canary)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", name, "-F", "raw", "-u", str(evil), "64M")
    # A domain declaring the disk raw: it stays raw.
    xml = (f"<domain><devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>"
           f"<source file='{evil}'/><target dev='vda'/></disk></devices></domain>")
    chains, _ = chains_from_xml(xml)
    assert [(la.path, la.format) for la in chains[0].layers] == [(str(evil), "raw")] and not chains[0].open_end
    with pytest.raises(WorkerError) as exc:
        inspect_chains(chains, Limits(wall_seconds=60))
    assert "no readable filesystem" in str(exc.value)
    assert str(canary) not in exc.value.opened and str(evil) in exc.value.opened
    # Given as an image file in its default format (raw): the same.
    assert image_chain(str(evil)).paths() == [str(evil)]


def test_qcow2_backing_outside_allowed_dirs_or_unformatted_refused(tmp_path: Path) -> None:
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    canary = host_canary(secret_dir, fifo=False)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    evil = imgs / "evil.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(canary), "-F", "raw", "-u", str(evil), "64M")
    with pytest.raises(ChainError, match="outside the allowed directories"):
        image_chain(str(evil), "qcow2")
    escape = imgs / "escape.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "../elsewhere/canary.raw", "-F", "raw", "-u",
        str(escape), "64M")
    with pytest.raises(ChainError, match="outside the allowed directories"):
        image_chain(str(escape), "qcow2")
    assert image_chain(str(evil), "qcow2", [str(secret_dir)]).paths() == [str(evil), str(canary)]
    noformat = imgs / "noformat.qcow2"
    (imgs / "base.raw").write_bytes(b"\0" * 4096)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-u", str(noformat), "64M")
    # strip the backing-format header extension by rewriting it as an unknown type
    data = bytearray(noformat.read_bytes()[:65536])
    i = data.find(bytes.fromhex("E2792ACA"))
    assert i > 0
    data[i:i + 4] = bytes.fromhex("0BADF00D")
    with open(noformat, "r+b") as f:
        f.write(data)
    with pytest.raises(ChainError, match="no recorded format"):
        image_chain(str(noformat), "qcow2")
    loop = imgs / "loop.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "loop.qcow2", "-F", "qcow2", "-u", str(loop), "64M")
    with pytest.raises(ChainError, match="loops"):
        image_chain(str(loop), "qcow2")


def test_symlink_loops_and_absolute_symlinks_out_of_the_root(tmp_path: Path) -> None:
    root = small_root(tmp_path)
    host_keys = tmp_path / "host_authorized_keys"
    host_keys.write_text(ed25519_line(1, "host-key-must-not-appear") + "\n")
    (root / "root/.ssh/authorized_keys").symlink_to(host_keys)  # absolute path: means the guest's own
    (root / "home/a/.ssh/authorized_keys").symlink_to("../../../../../../../../" + str(host_keys).lstrip("/"))
    (root / "etc/ssh/sshd_config").symlink_to("sshd_config.d")
    (root / "etc/ssh/sshd_config.d").symlink_to("sshd_config")  # a loop
    (root / "etc/hostname").symlink_to("/etc/hostname")  # a self loop
    img = mkfs(root, tmp_path / "disk.raw", "64M")
    inv = inspect_chains([image_chain(str(img))])
    assert inv["partial"] is True
    sections = {e["section"] for e in inv["errors"]}
    assert {"sshd", "hostname"} <= sections
    assert inv["authorized_keys"] == []
    assert str(host_keys) not in inv["opened"]
    assert [p["name"] for p in inv["packages"]] == ["bash"]  # the rest still read
    assert [u["name"] for u in inv["users"]] == ["root", "a"]


def test_corrupt_superblock(tmp_path: Path) -> None:
    img = mkfs(small_root(tmp_path), tmp_path / "disk.raw", "64M")
    with open(img, "r+b") as f:
        f.seek(1024)
        f.write(os.urandom(1024))
    with pytest.raises(WorkerError, match="no readable filesystem"):
        inspect_chains([image_chain(str(img))])


def test_huge_sparse_file_and_huge_sparse_disk(tmp_path: Path) -> None:
    root = small_root(tmp_path)
    status = root / "var/lib/dpkg/status"
    status.unlink()
    with open(status, "wb") as f:
        f.truncate(8 << 30)  # 8 GiB of hole where dpkg's database should be
    img = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "2T", str(img)], check=True)  # a 2 TiB sparse disk
    mkfs(root, img, "256M")
    inv = inspect_chains([image_chain(str(img))], Limits(wall_seconds=60, memory_mb=1024))
    assert inv["partial"] is True
    assert any("over the" in e["error"] and "status" in e["error"] for e in inv["errors"])
    assert inv["packages"] == [] and [u["name"] for u in inv["users"]] == ["root", "a"]


def test_worker_has_no_network_and_limits_hold(tmp_path: Path) -> None:
    selftest = run_worker({"selftest": True}, Limits(cpu_seconds=7, memory_mb=999))["result"]
    assert selftest["interfaces"] == ["lo"]
    assert selftest["rlimits"] == {"RLIMIT_AS": 999 << 20, "RLIMIT_CPU": 7, "RLIMIT_FSIZE": 0, "RLIMIT_NOFILE": 256}
    img = mkfs(small_root(tmp_path), tmp_path / "disk.raw", "64M")
    with pytest.raises(WorkerError, match="wall-clock limit"):
        inspect_chains([image_chain(str(img))], Limits(wall_seconds=0.2))
    with pytest.raises(WorkerError, match=r"failed|memory"):
        inspect_chains([image_chain(str(img))], Limits(memory_mb=24))


def test_worker_killed_at_the_wall_clock_limit_leaves_a_partial_marked_result(tmp_path: Path) -> None:
    img = mkfs(small_root(tmp_path), tmp_path / "disk.raw", "64M")
    job = {"chains": [image_chain(str(img)).to_json()], "stall_after": "users"}
    reply = run_worker(job, Limits(wall_seconds=8))
    inv = reply["result"]
    assert inv["partial"] is True and inv["incomplete"] is True
    assert [p["name"] for p in inv["packages"]] == ["bash"] and [u["name"] for u in inv["users"]] == ["root", "a"]
    assert "setuid" not in inv and "wall-clock limit" in inv["errors"][-1]["error"]
