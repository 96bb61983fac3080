"""A real live audit: our own libvirtd (in network namespace `gwa-audit`, state under
/var/lib/guestward/audit-test) with guests carrying deliberate faults; `guestward audit --uri` finds
each, in the inactive and in the live XML. Needs root, libvirt and QEMU (CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestward.hypervisor.domains import define, destroy, domain_names, start, wait_for_daemon
from guestward.lab.hosts import kill_pidfile, start_private_libvirtd
from tests.conftest import guestward

pytestmark = pytest.mark.libvirt

NETNS = "gwa-audit"
STATE = Path("/var/lib/guestward/audit-test")
KERNEL = Path("/var/cache/guestward/assets/kernel/vmlinuz")
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
GW_NS = "https://guestward.dev/xmlns/1"


def guest_xml(name: str, devices: str = "", top: str = "", tail: str = "", labels: dict[str, str] | None = None) -> str:
    """A lab-style TCG guest (guestward.lab.domain's shape): direct kernel boot, nothing else to boot,
    `root=/dev/vda rootwait` with no disk, so the kernel waits (idle) for a root that never comes."""
    lab = "".join(f'<gw:label key="{k}">{v}</gw:label>' for k, v in (labels or {}).items())
    return f"""<domain type='qemu' xmlns:qemu='{QEMU_NS}'>
  <name>{name}</name>
  <memory unit='MiB'>160</memory>
  <vcpu>1</vcpu>
  <metadata><gw:guest xmlns:gw="{GW_NS}">{lab}</gw:guest></metadata>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{KERNEL}</kernel><cmdline>console=ttyS0 root=/dev/vda rootwait panic=0</cmdline>
  </os>
  {top}
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='/var/lib/libvirt/console-{name}.log'/><target port='0'/></serial>
    <memballoon model='none'/>
    {devices}
  </devices>
  {tail}
</domain>"""


FAULTY = {
    "aud-vnc": guest_xml("aud-vnc", "<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'>"
                                    "<listen type='address' address='0.0.0.0'/></graphics>"),
    "aud-vnc-pw": guest_xml("aud-vnc-pw", "<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0' "
                                          "passwd='Secr3t!x'><listen type='address' address='0.0.0.0'/></graphics>"),
    "aud-hostdev": guest_xml("aud-hostdev", "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                                            "<address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source>"
                                            "</hostdev>", labels={"trust": "untrusted"}),
    "aud-seclabel": guest_xml("aud-seclabel", top="<seclabel type='none'/>"),
    "aud-cmdline": guest_xml("aud-cmdline", tail="<qemu:commandline><qemu:arg value='-sandbox'/>"
                                                 "<qemu:arg value='off'/></qemu:commandline>"),
}


def cleanup() -> None:
    for name in ("libvirtd", "virtlogd"):
        kill_pidfile(STATE / "run" / f"{name}.pid")
    for pid in (STATE / "run" / "qemu").glob("*.pid") if (STATE / "run" / "qemu").exists() else ():
        kill_pidfile(pid, timeout=2.0)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    shutil.rmtree(STATE, ignore_errors=True)


@pytest.fixture(scope="module")
def uri() -> Iterator[str]:
    assert os.geteuid() == 0, "the live audit test needs root (CI runs it as root)"
    assert KERNEL.exists(), f"{KERNEL}: run scripts/bootstrap.sh"
    cleanup()
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        u = start_private_libvirtd(NETNS, STATE, "gwa-audit", "guestward-audit-test")
        wait_for_daemon(u)
        for xml in FAULTY.values():
            define(u, xml)
        start(u, "aud-vnc")
        yield u
    finally:
        try:
            for name in domain_names(u):
                destroy(u, name, undefine=True)
        except Exception:  # the daemon may not have come up; cleanup() still removes everything
            pass
        cleanup()


def test_live_audit_finds_each_deliberate_fault(uri: str) -> None:
    r = guestward("audit", "--uri", uri, "-f", "json", "--fail-on", "critical", timeout=120)
    assert r.returncode == 1, r.stderr  # critical findings: the pipeline fails
    doc = json.loads(r.stdout)
    assert not doc["input_errors"], doc["input_errors"]
    res = {(x["subject"].split(" (")[0].removeprefix("domain "), x["subject"].split(" (")[1].split(" ")[0],
            x["check"]): x for x in doc["results"]}

    def status(name: str, check: str, view: str = "inactive") -> str:
        return str(res[(name, view, check)]["status"])

    # the VNC console on 0.0.0.0 without a password: in the definition and in the running guest
    for view in ("inactive", "live"):
        assert status("aud-vnc", "LVD-080", view) == "fail"
        assert status("aud-vnc", "LVD-081", view) == "fail"
        assert res[("aud-vnc", view, "LVD-081")]["severity"] == "critical"
    # taken with VIR_DOMAIN_XML_SECURE: the password is seen, so that guest has a password
    assert status("aud-vnc-pw", "LVD-081") == "pass"
    assert status("aud-vnc-pw", "LVD-082") == "fail"
    # the host device, worse for an untrusted guest
    assert status("aud-hostdev", "LVD-040") == "fail"
    assert res[("aud-hostdev", "inactive", "LVD-040")]["severity"] == "critical"
    assert status("aud-seclabel", "LVD-001") == "fail"
    assert status("aud-cmdline", "LVD-006") == "fail"
    assert status("aud-cmdline", "LVD-007") == "fail"
    assert status("aud-vnc", "LVD-010") == "fail"  # TCG
    # and the fault-free guests do not get the others' findings
    assert status("aud-vnc", "LVD-001") == "pass" and status("aud-seclabel", "LVD-040") == "pass"
    assert ("aud-hostdev", "live", "LVD-040") not in res  # defined, not running: no live XML


def test_live_audit_with_this_hosts_config_completes(uri: str) -> None:
    r = guestward("audit", "--uri", uri, "--host-root", "/", "--check", "LVH-*", "--check", "LVD-08*", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "host /" in r.stdout and "Traceback" not in r.stdout + r.stderr
