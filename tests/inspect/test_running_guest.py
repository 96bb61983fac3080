"""A running TCG guest on our own private libvirtd (network namespace `gwi-inspect`) is inspected while it
runs, through a point-in-time copy (libvirt backup, push mode); its disk chain is identical before and
after. Then, stopped, it is read directly (read-only) from its inactive definition."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import defusedxml.ElementTree as SafeET
import pytest
import yaml

from guestward.hypervisor import domains
from guestward.hypervisor.disks import guest_disks
from guestward.lab.assets import KERNEL_DIR
from guestward.lab.hosts import kill_pidfile, netns_list, sh, start_private_libvirtd
from tests.conftest import guestward
from tests.inspect.conftest import HIDDEN_SHELL, Images, Planted, ground_truth_packages, run

pytestmark = pytest.mark.inspect

NETNS = "gwi-inspect"
STATE = Path("/var/lib/guestward/inspect-test")
NAME = "gwi-guest"


def tiny_initrd(out: Path) -> None:
    tree = out.parent / "initrd-tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", tree / "bin/busybox")
    (tree / "init").write_text("#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null\n"
                               "echo gwi-guest up\nwhile :; do /bin/busybox sleep 3600; done\n")
    (tree / "init").chmod(0o755)
    listing = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=tree, input=listing,
                             capture_output=True, check=True).stdout
    out.write_bytes(gzip.compress(archive))
    shutil.rmtree(tree)


def domain_xml(disk: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{NAME}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{STATE}/vmlinuz</kernel><initrd>{STATE}/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 no_timer_check</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='{STATE}/console.log'/><target port='0'/></serial>
    <memballoon model='none'/></devices>
</domain>"""


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[str]:
    d = STATE / "libvirt"
    if NETNS not in netns_list():
        sh("ip", "netns", "add", NETNS)
    try:
        uri = start_private_libvirtd(NETNS, d, NETNS, "guestward-inspect-test")
        domains.wait_for_daemon(uri)
        yield uri
    finally:
        for qemu_pid in (d / "run" / "qemu").glob("*.pid"):
            kill_pidfile(qemu_pid, timeout=2.0)
        kill_pidfile(d / "run" / "libvirtd.pid")
        kill_pidfile(d / "run" / "virtlogd.pid")
        sh("ip", "netns", "del", NETNS, check=False)


def chain_info(disk: Path) -> list[dict[str, object]]:
    info = json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", str(disk)))
    return [{k: layer.get(k) for k in ("filename", "format", "backing-filename", "full-backing-filename",
                                       "backing-filename-format", "virtual-size")} for layer in info]


def disk_xml(uri: str) -> list[str]:
    root = SafeET.fromstring(domains.live_xml(uri, NAME))
    return [ET.tostring(d, encoding="unicode") for d in root.findall("./devices/disk")]


def test_running_guest_inspected_from_a_point_in_time_copy(libvirtd: str, images: Images, planted: Planted,
                                                           tmp_path: Path) -> None:
    uri = libvirtd
    shutil.rmtree(STATE / "images", ignore_errors=True)
    (STATE / "images").mkdir(parents=True)
    base = STATE / "images" / "base.qcow2"
    shutil.copy(images.qcow2, base)
    top = STATE / "images" / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    shutil.copy(KERNEL_DIR / "vmlinuz", STATE / "vmlinuz")
    tiny_initrd(STATE / "initrd.gz")
    cfg = tmp_path / "config.yaml"
    state_dir = STATE / "state"
    cfg.write_text(yaml.safe_dump({"state_dir": str(state_dir), "hosts": [{"name": "gwi", "uri": uri}]}))
    domains.destroy(uri, NAME, undefine=True)
    domains.define(uri, domain_xml(top))
    domains.start(uri, NAME)
    try:
        active, chains, _ = guest_disks(uri, NAME)
        assert active and [la.path for la in chains[0].layers] == [str(top), str(base)]
        before = (chain_info(top), disk_xml(uri), top.stat().st_size)
        t0 = time.monotonic()
        r = guestward("inspect", NAME, "--config", str(cfg), "--json", timeout=300)
        elapsed = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert domains.is_active(uri, NAME), "the guest kept running"
        assert (chain_info(top), disk_xml(uri)) == before[:2]
        assert rep["method"] == "point-in-time copy (libvirt backup, push)" and rep["subject"] == f"gwi/{NAME}"
        inv = rep["inventory"]
        got = {(p["name"], p["version"], p["source"], p["source_version"]) for p in inv["packages"]}
        assert got == ground_truth_packages(planted.root)
        assert HIDDEN_SHELL in {s["path"] for s in inv["setuid"]}
        assert list((state_dir / "inspect-tmp").iterdir()) == [], "the copy is deleted"
        assert not any(str(top) == p or str(base) == p for p in inv["opened"]), "only the copy was read"
        print(f"running-guest inspection {elapsed:.1f} s")
    finally:
        domains.destroy(uri, NAME)
    # Stopped: the inactive XML has no <backingStore>; the chain is completed under the rule and read directly.
    active, chains, _ = guest_disks(uri, NAME)
    assert not active and chains[0].open_end
    r = guestward("inspect", NAME, "--config", str(cfg), "--json", "--diff", timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["method"] == "read-only (guest stopped)"
    assert set(rep["inventory"]["opened"]) >= {str(top), str(base)}
    assert rep["diff"]["added"] == {} and rep["diff"]["removed"] == {}
    domains.destroy(uri, NAME, undefine=True)
    shutil.rmtree(STATE / "images", ignore_errors=True)
