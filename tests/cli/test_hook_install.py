"""`guestward hook install --host NAME` seeds the snapshot the hook compiles from: on a private
libvirtd (network namespace `gwh-install`, state under /var/lib/guestward/hook-install-test) with the
hook in place, a start before the install is refused (no snapshot), the first start after it is
bound, and its stop unbinds. Needs root, libvirt and QEMU (CI runs as root)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from guestward.enforce import Enforcer, NftRunner
from guestward.hypervisor.domain_xml import metadata_xml
from guestward.hypervisor.domains import (
    HypervisorError,
    define,
    destroy,
    domain_names,
    is_active,
    start,
    wait_for_daemon,
)
from guestward.lab.hosts import kill_pidfile, start_private_libvirtd
from guestward.reconcile import hook
from guestward.store.sqlite import Store
from tests.audit.test_live import KERNEL, guest_xml
from tests.conftest import guestward

pytestmark = pytest.mark.libvirt

NETNS = "gwh-install"
STATE = Path("/var/lib/guestward/hook-install-test")
MAC, TAP, ADDRESS = "52:54:00:61:00:01", "gwh-g1", "10.61.0.1"


@dataclass
class Host:
    uri: str
    config: Path
    state: Path


def cleanup() -> None:
    for name in ("libvirtd", "virtlogd"):
        kill_pidfile(STATE / "run" / f"{name}.pid")
    for pid in (STATE / "run" / "qemu").glob("*.pid") if (STATE / "run" / "qemu").exists() else ():
        kill_pidfile(pid, timeout=2.0)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    shutil.rmtree(STATE, ignore_errors=True)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    assert os.geteuid() == 0, "this test needs root (CI runs it as root)"
    assert KERNEL.exists(), f"{KERNEL}: run scripts/bootstrap.sh"
    cleanup()
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    for argv in (["link", "set", "lo", "up"], ["link", "add", "br0", "type", "bridge"], ["link", "set", "br0", "up"]):
        subprocess.run(["ip", "-n", NETNS, *argv], check=True)
    STATE.mkdir(parents=True)
    state, config = STATE / "gw", STATE / "guestward.yaml"
    uri = f"qemu+unix:///system?socket={STATE / 'libvirtd'}/sock/libvirt-sock"
    config.write_text(yaml.safe_dump({"state_dir": str(state), "hosts": [{"name": "h1", "uri": uri,
                                                                          "netns": NETNS}]}))
    try:
        # the hook is in place from the daemon's start (as after an install and a restart)
        got = start_private_libvirtd(NETNS, STATE / "libvirtd", "gwh-install", "guestward-hook-install-test",
                                     hook.script(sys.executable, config, "h1"))
        assert got == uri
        wait_for_daemon(uri)
        nic = (f"<interface type='bridge'><source bridge='br0'/><mac address='{MAC}'/><model type='virtio'/>"
               f"<target dev='{TAP}'/></interface>")
        xml = re.sub(r"<gw:guest .*?</gw:guest>", metadata_xml({"zone": "web"}, [(MAC, ADDRESS)]),
                     guest_xml("hk-g1", nic))
        define(uri, xml)
        yield Host(uri, config, state)
    finally:
        try:
            for name in domain_names(uri):
                destroy(uri, name, undefine=True)
        except Exception:  # the daemon may not have come up; cleanup() still removes everything
            pass
        for name in ("libvirtd", "virtlogd"):
            kill_pidfile(STATE / "libvirtd" / "run" / f"{name}.pid")
        cleanup()


def bound() -> set[str]:
    objects, missing = Enforcer(NftRunner(NETNS)).read()
    return set() if missing else objects.bound_ports()


def test_install_seeds_the_snapshot_so_the_first_start_is_bound(host: Host, tmp_path: Path) -> None:
    # before the install: no snapshot, so the hook refuses the start (it cannot enforce)
    with pytest.raises(HypervisorError, match="no inventory snapshot"):
        start(host.uri, "hk-g1")
    assert not is_active(host.uri, "hk-g1")
    r = guestward("hook", "install", "--host", "h1", "--libvirt-dir", str(tmp_path), "--config", str(host.config))
    assert r.returncode == 0, r.stderr
    assert "seeded the snapshot" in r.stdout and (tmp_path / "hooks" / "qemu").exists()
    store = Store(host.state / "guestward.db")
    assert store.seeded and {g.name: g.active for g in store.guests()} == {"hk-g1": False}
    assert bound() == set()  # the tables are in place (the install enforced them), nothing bound yet
    start(host.uri, "hk-g1")  # the first start after the install: bound before its CPUs run
    try:
        assert bound() == {TAP}
        assert {g.name: g.active for g in store.guests()} == {"hk-g1": True}
        assert "prepare/begin" in [e["op"] for e in store.events("hook")]
    finally:
        destroy(host.uri, "hk-g1")
    assert bound() == set()
    # installing again keeps the hook and seeds again: nothing to change now
    r = guestward("hook", "install", "--host", "h1", "--libvirt-dir", str(tmp_path), "--config", str(host.config))
    assert r.returncode == 0 and "0 nft commands" in r.stdout, r.stdout + r.stderr
